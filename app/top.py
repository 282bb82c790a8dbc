"""`lantern top`: a live terminal view of the stream, refreshed from its Prometheus endpoints.

It scrapes every ``--url`` (a `lantern score` / `archive` / `sink-scores` endpoint, Ray's metrics
endpoint for Serve replicas) each ``--interval`` seconds and shows what an operator watches:
event rates, consumer lag per partition, completion → score p50/p99, dead letters by class,
degraded scores, Serve replicas, gate and source coverage, and the served model version.
Rates and quantiles are over the last interval (cumulative on the first screen).
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass, field

from rich.console import Group
from rich.table import Table

Samples = dict[str, list[tuple[dict, float]]]  # metric sample name → [(labels, value)]


def scrape(urls: list[str], timeout_s: float = 3.0) -> tuple[Samples, list[str]]:
    """Every sample of every endpoint (Ray's ``ray_`` prefix dropped from lantern's names) and
    the endpoints that could not be read."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: Samples = {}
    down = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                text = response.read().decode()
        except OSError as exc:
            down.append(f"{url}: {exc}")
            continue
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                name = s.name[4:] if s.name.startswith("ray_lantern_") else s.name
                samples.setdefault(name, []).append((dict(s.labels), s.value))
    return samples, down


def total(samples: Samples, name: str, **match) -> float:
    return sum(v for labels, v in samples.get(name, ()) if all(labels.get(k) == w for k, w in match.items()))


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, v in samples.get(name, ()):
        out[labels.get(label, "")] = out.get(labels.get(label, ""), 0.0) + v
    return out


def quantile(samples: Samples, before: Samples | None, name: str, q: float) -> float | None:
    """The ``q`` quantile of histogram ``name`` over the interval (linear within a bucket)."""
    def buckets(s: Samples | None) -> dict[float, float]:
        out: dict[float, float] = {}
        for labels, v in (s or {}).get(f"{name}_bucket", ()):
            le = float(labels["le"])
            out[le] = out.get(le, 0.0) + v
        return out

    now, then = buckets(samples), buckets(before)
    counts = sorted((le, c - then.get(le, 0.0)) for le, c in now.items())
    if not counts or counts[-1][1] <= 0:
        return None
    rank, lower, below = q * counts[-1][1], 0.0, 0.0
    for le, c in counts:
        if c >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * ((rank - below) / max(c - below, 1e-12))
        lower, below = le, c
    return lower


@dataclass
class View:
    """What one screen shows, computed from two scrapes ``seconds`` apart."""

    samples: Samples
    before: Samples | None = None
    seconds: float = 0.0
    down: list[str] = field(default_factory=list)

    def rate(self, name: str, **match) -> float | None:
        if self.before is None or self.seconds <= 0:
            return None
        return (total(self.samples, name, **match) - total(self.before, name, **match)) / self.seconds

    def figures(self) -> dict:
        s = self.samples
        lag = {f"{labels.get('topic')}[{labels.get('partition')}]": v
               for labels, v in s.get("lantern_consumer_lag_events", ())}
        versions = sorted(labels.get("model_version", "") for labels, v in s.get("lantern_model_info", ()) if v)
        looked_up = total(s, "lantern_sessions_looked_up_total")
        gate_n = total(s, "lantern_session_gate_count")
        return {
            "consumed": total(s, "lantern_events_consumed_total"),
            "scored": total(s, "lantern_events_scored_total"),
            "dead_lettered": total(s, "lantern_events_dead_lettered_total"),
            "degraded": total(s, "lantern_events_degraded_total"),
            "dlq_by_class": by_label(s, "lantern_events_dead_lettered_total", "error_class"),
            "scored_per_s": self.rate("lantern_events_scored_total"),
            "consumed_per_s": self.rate("lantern_events_consumed_total"),
            "lag": lag, "lag_total": sum(lag.values()),
            "p50_s": quantile(s, self.before, "lantern_completion_to_score_seconds", 0.5),
            "p99_s": quantile(s, self.before, "lantern_completion_to_score_seconds", 0.99),
            "replicas": _replicas(s),
            "model_version": ", ".join(versions) or "—",
            "gate_mean": total(s, "lantern_session_gate_sum") / gate_n if gate_n else None,
            "coverage": {src: n / looked_up for src, n in
                         by_label(s, "lantern_sessions_external_total", "source").items()} if looked_up else {},
        }


def _replicas(s: Samples) -> dict[str, float]:
    """Running replicas per Serve deployment (Ray's own metric), when Ray's endpoint is scraped."""
    out: dict[str, float] = {}
    for labels, v in s.get("ray_serve_deployment_replica_healthy", ()):
        out[labels.get("deployment", "?")] = out.get(labels.get("deployment", "?"), 0.0) + v
    return out


def _num(x: float | None, fmt: str = "{:,.0f}") -> str:
    return "—" if x is None else fmt.format(x)


def render(view: View) -> Group:
    f = view.figures()
    head = Table.grid(padding=(0, 3))
    for _ in range(4):
        head.add_column()
    head.add_row("scored", _num(f["scored"]), "scored/s", _num(f["scored_per_s"], "{:,.1f}"))
    head.add_row("consumed", _num(f["consumed"]), "consumed/s", _num(f["consumed_per_s"], "{:,.1f}"))
    head.add_row("dead-lettered", _num(f["dead_lettered"]), "degraded", _num(f["degraded"]))
    head.add_row("lag", _num(f["lag_total"]), "model", f["model_version"])
    head.add_row("completion→score p50", _num(f["p50_s"], "{:.3f} s"), "p99", _num(f["p99_s"], "{:.3f} s"))
    head.add_row("gate mean", _num(f["gate_mean"], "{:.3f}"), "replicas",
                 ", ".join(f"{d} {n:g}" for d, n in sorted(f["replicas"].items())) or "—")
    parts = [head]
    for title, rows in (("dead letters by class", f["dlq_by_class"]), ("lag by partition", f["lag"]),
                        ("external coverage", {k: f"{v:.1%}" for k, v in f["coverage"].items()})):
        if rows:
            table = Table(title=title, title_justify="left", show_header=False, box=None)
            for key in sorted(rows):
                value = rows[key]
                table.add_row(key, value if isinstance(value, str) else _num(value))
            parts.append(table)
    parts += [f"[red]unreachable: {d}[/red]" for d in view.down]
    return Group(*parts)


def run_top(urls: list[str], interval_s: float, once: bool, console) -> None:
    from rich.live import Live

    samples, down = scrape(urls)
    view = View(samples, down=down)
    if once:
        console.print(render(view))
        return
    with Live(render(view), console=console, refresh_per_second=4, screen=False) as live:
        while True:
            t0 = time.monotonic()
            time.sleep(interval_s)
            samples, down = scrape(urls)
            view = View(samples, view.samples, time.monotonic() - t0, down)
            live.update(render(view))
