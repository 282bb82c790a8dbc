"""The Grafana dashboard charts metrics that exist: every lantern metric it queries is one the code
exports (with the suffix its kind gives it), every Ray metric one Ray Serve defines, and every
metric lantern exports is on the dashboard."""

import json
import re
from pathlib import Path

import ray

from streaming.metrics import SPECS

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "lantern.json"
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def _queried() -> set[str]:
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    names = set()
    for expr in exprs:
        names |= set(re.findall(r'__name__=~"\(ray_\)\?(\w+)"', expr))
        names |= {n for n in re.findall(r"\b(ray_serve_\w+)\b", expr)}
    return names


def _lantern_metric(name: str) -> tuple[str, str] | None:
    for base, spec in SPECS.items():
        for suffix in SUFFIXES[spec.kind]:
            if name == base + suffix:
                return base, spec.kind
    return None


def test_every_lantern_metric_the_dashboard_queries_is_exported_with_its_kind():
    lantern = {n for n in _queried() if n.startswith("lantern_")}
    assert lantern, "the dashboard queries no lantern metric"
    unknown = sorted(n for n in lantern if _lantern_metric(n) is None)
    assert not unknown, f"queried but not exported (or the wrong kind): {unknown}"
    charted = {_lantern_metric(n)[0] for n in lantern}
    assert charted == set(SPECS), f"exported but not on the dashboard: {sorted(set(SPECS) - charted)}"


def test_every_ray_metric_the_dashboard_queries_is_defined_by_ray_serve():
    source = "\n".join(p.read_text() for p in (Path(ray.__file__).parent / "serve" / "_private").glob("*.py"))
    for name in (n for n in _queried() if n.startswith("ray_serve_")):
        base = re.sub(r"_total$", "", name)[len("ray_"):]
        assert f'"{base}"' in source, f"{name}: Ray Serve defines no metric {base!r}"
