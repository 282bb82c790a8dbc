"""Shared pieces of the `lantern` command modules: consoles, settings loading, option types."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from lantern.settings import LanternSettings, load_settings

console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)  # logs and pipes get the whole table

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML or YAML settings file.")]


def settings_for(ctx: typer.Context, **overrides) -> LanternSettings:
    """Settings for this process: flags > LANTERN_* env > --config file > defaults."""
    settings = load_settings(ctx.obj, overrides)
    if settings.threads:  # 0 keeps torch's default (one thread per core) and skips importing it
        import torch

        torch.set_num_threads(settings.threads)
    return settings


RepoOpt = Annotated[Optional[Path], typer.Option("--repo", help="Feature repo directory (default features/).")]
OnlineOpt = Annotated[Optional[str], typer.Option("--online", help="sqlite | redis")]
BootstrapOpt = Annotated[Optional[str], typer.Option("--bootstrap", help="Kafka HOST:PORT (default: "
                                                     "$KAFKA_BOOTSTRAP, else settings kafka.bootstrap).")]


MetricsPortOpt = Annotated[Optional[int], typer.Option(
    "--metrics-port", min=0, max=65535, help="Serve Prometheus metrics on this port (0: a free one; default: "
                                             "settings metrics.port, else none).")]


def start_metrics(s: LanternSettings):
    """This process's metrics on their own registry and loopback endpoint, or None (no port set)."""
    if s.metrics.port is None:
        return None
    from prometheus_client import CollectorRegistry

    from streaming.metrics import Metrics, serve_metrics

    registry = CollectorRegistry()
    server = serve_metrics(s.metrics.port, s.metrics.host, registry)
    console.print(f"metrics: http://{s.metrics.host}:{server.server_port}/metrics")
    return Metrics.prometheus(registry)


def write_json(path: Path, result: dict, default=None) -> Path:
    """A command's result as indented JSON at ``path`` (its folder created)."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=default))
    return path


def kafka_overrides(bootstrap: str | None) -> dict:
    """--bootstrap, else $KAFKA_BOOTSTRAP (read here, at the entry point)."""
    return {"bootstrap": bootstrap or os.environ.get("KAFKA_BOOTSTRAP")}


def resolve_ray_address(flag: str | None) -> str | None:
    """--ray-address, else $RAY_ADDRESS (read here, at the entry point); None: a local Ray."""
    return flag or os.environ.get("RAY_ADDRESS") or None


def champion_dir(s: LanternSettings) -> Path:
    """The registry champion's model directory (a clear error when there is none)."""
    from lantern.errors import ModelError
    from model.registry import Registry

    reg = Registry(s.serve.registry)
    if reg.champion() is None:
        raise ModelError(f"no --model given and the registry {reg.root} has no champion "
                         f"(lantern register --model DIR, then lantern promote VERSION)")
    return reg.path(reg.champion())
