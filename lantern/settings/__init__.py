"""One typed, frozen settings object per process.

Precedence (highest first): command-line flags, ``LANTERN_*`` environment variables
(nested with ``__``, e.g. ``LANTERN_TRAIN__EPOCHS=5``), the config file (``--config``,
TOML or YAML), then these defaults. The environment is read only by :func:`load_settings`,
which only entry points call.
"""

from __future__ import annotations

import tomllib
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from lantern.dataset.simulate import SimConfig
from lantern.errors import ConfigError
from lantern.settings.features import FeatureStoreConfig
from lantern.settings.kafka import KafkaConfig
from lantern.settings.model import TrainConfig
from lantern.settings.scoring import ScoringConfig
from lantern.settings.serve import RetrainConfig, ServeConfig


class Paths(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    data: Path = Path("data/sim")
    models: Path = Path("models")
    reports: Path = Path("reports")


class DemoConfig(BaseModel):
    """`lantern demo`: the sizes of the end-to-end run."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    users: int = Field(35_000, ge=100)
    epochs: int = Field(6, ge=1)  # Ray Train and every ablation variant alike
    sessions: int = Field(20_000, ge=1)  # the latest completions replayed through Kafka
    rate: float = Field(800.0, gt=0)  # completion events per second offered to the stream
    bad_events: int = Field(100, ge=0)  # broken events mixed in: each must reach the DLQ
    consumers: int = Field(1, ge=1)  # StreamConsumer replicas (≤ kafka.partitions)
    feature_ttl_days: float = Field(365.0, gt=0)  # the simulated external rows are up to ~6 months old


class MetricsConfig(BaseModel):
    """Prometheus endpoint of `lantern score` / `archive` / `sink-scores` (docs/operations.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    host: str = "127.0.0.1"  # loopback unless told otherwise (in a pod: 0.0.0.0)
    port: int | None = Field(None, ge=0, le=65535)  # None: no endpoint; 0: a free port (printed)


class LanternSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LANTERN_", env_nested_delimiter="__", frozen=True,
                                      extra="forbid")

    paths: Paths = Paths()
    simulate: SimConfig = SimConfig()
    train: TrainConfig = TrainConfig()
    features: FeatureStoreConfig = FeatureStoreConfig()
    kafka: KafkaConfig = KafkaConfig()
    scoring: ScoringConfig = ScoringConfig()
    serve: ServeConfig = ServeConfig()
    retrain: RetrainConfig = RetrainConfig()
    demo: DemoConfig = DemoConfig()
    metrics: MetricsConfig = MetricsConfig()
    threads: int = 0  # torch intra-op threads; 0 = one per core

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return init_settings, env_settings, _FileSource(settings_cls)


class _FileSource(PydanticBaseSettingsSource):
    """Values from the config file named by :func:`load_settings` (lowest precedence)."""

    data: dict[str, Any] = {}

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ is used instead
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FileSource.data)


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        text = path.read_text()
        raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} is not valid {path.suffix.lstrip('.').upper()}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return raw


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def load_settings(config: Path | None = None, overrides: dict[str, Any] | None = None) -> LanternSettings:
    """Build the settings; ``overrides`` are nested dicts from command-line flags (None = unset)."""
    _FileSource.data = _read_config(config) if config else {}
    flags = _drop_unset(overrides or {})
    try:
        env_and_file = LanternSettings()
        return LanternSettings(**_merge(env_and_file.model_dump(), flags)) if flags else env_and_file
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"setting {where}: {first['msg']} (got {first.get('input')!r})") from exc
    finally:
        _FileSource.data = {}


def _drop_unset(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _drop_unset(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


def local_run(s: LanternSettings, root: Path) -> LanternSettings:
    """A local end-to-end run's settings (the demo, the stream benchmark): its own Feast repo,
    registry and Ray Train storage under ``root``, users and epochs from ``s.demo``."""
    # The simulated timeline ends today, so replayed completions are recent; each user's external
    # rows are one snapshot from before their first survey (up to ~6 months back), so the demo
    # keeps them for demo.feature_ttl_days rather than the 90-day default.
    start = (datetime.now(timezone.utc).date() - timedelta(days=150)).isoformat()
    return s.model_copy(update={
        "simulate": replace(s.simulate, users=s.demo.users, start=start),
        "features": replace(s.features, repo=root / "feast", ttl_days=s.demo.feature_ttl_days),
        "train": replace(s.train, epochs=s.demo.epochs),
        "serve": replace(s.serve, registry=root / "registry"),
        "retrain": replace(s.retrain, storage=root / "ray_train", run_name="demo"),
    })
