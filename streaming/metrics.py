"""The stream's Prometheus metrics: one set of names, two backends.

A plain process (`lantern score`, `archive`, `sink-scores`) exports them with ``prometheus_client``
on its own loopback endpoint (:func:`serve_metrics`); inside Ray Serve replicas they go through
``ray.serve.metrics`` to Ray's own Prometheus endpoint, where Ray prefixes them with ``ray_`` and
adds its ``deployment`` / ``replica`` / ``application`` labels. Names follow Prometheus
conventions: base units (seconds, events), ``_total`` on counters (added by both backends),
``_seconds`` histograms. docs/operations.md lists them; deploy/grafana/lantern.json charts them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
AGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
GATE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))


@dataclass(frozen=True)
class Spec:
    kind: str  # counter | histogram | gauge
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


#: every metric lantern exports (counters without the ``_total`` the backends add)
SPECS: dict[str, Spec] = {
    "lantern_events_consumed": Spec("counter", "Records polled from the topic (redeliveries included).", ("topic",)),
    "lantern_events_scored": Spec("counter", "Sessions whose scores were flushed to the outputs."),
    "lantern_events_dead_lettered": Spec("counter", "Events sent to the dead-letter topic, by error class.",
                                         ("error_class",)),
    "lantern_events_degraded": Spec("counter", "Sessions scored survey-only because the feature store was down."),
    "lantern_duplicates_skipped": Spec("counter", "Records skipped as already stored (archive, score sink).",
                                       ("stage",)),
    "lantern_sessions_external": Spec("counter", "Sessions scored with a row of this external source.", ("source",)),
    "lantern_sessions_looked_up": Spec("counter", "Sessions whose external sources were looked up."),
    "lantern_batch_size_events": Spec("histogram", "Records per micro-batch.", buckets=SIZE_BUCKETS),
    "lantern_feature_lookup_seconds": Spec("histogram", "Online feature lookup per micro-batch.",
                                           buckets=LATENCY_BUCKETS),
    "lantern_model_forward_seconds": Spec("histogram", "Model forward pass per micro-batch.", buckets=LATENCY_BUCKETS),
    "lantern_produce_flush_seconds": Spec("histogram", "Writing and flushing a micro-batch's outputs.",
                                          buckets=LATENCY_BUCKETS),
    "lantern_completion_to_score_seconds": Spec("histogram", "From a session's completed_at to its score flushed.",
                                                buckets=AGE_BUCKETS),
    "lantern_session_gate": Spec("histogram", "Mean gate per session with external data (0 = survey only).",
                                 buckets=GATE_BUCKETS),
    "lantern_consumer_lag_events": Spec("gauge", "High-watermark minus position, per assigned partition.",
                                        ("topic", "partition")),
    "lantern_model_info": Spec("gauge", "The model version being served (value 1).", ("model_version",)),
}


_VERB = {"counter": "inc", "histogram": "observe", "gauge": "set"}


class _Prometheus:
    """``prometheus_client`` instruments on one registry."""

    def __init__(self, registry):
        self.registry = registry

    def make(self, name: str, spec: Spec):
        import prometheus_client as pc

        if spec.kind == "histogram":
            metric = pc.Histogram(name, spec.help, spec.labels, registry=self.registry, buckets=spec.buckets)
        else:
            metric = getattr(pc, spec.kind.capitalize())(name, spec.help, spec.labels, registry=self.registry)
        return _PromInstrument(metric, spec.kind)


class _PromInstrument:
    def __init__(self, metric, kind: str):
        self.metric, self.kind = metric, kind

    def record(self, value: float, labels: dict) -> None:
        target = self.metric.labels(**labels) if labels else self.metric
        getattr(target, _VERB[self.kind])(value)

    def clear(self) -> None:
        self.metric.clear()


class _Ray:
    """``ray.serve.metrics`` instruments (inside a Serve replica: Serve's labels added)."""

    def make(self, name: str, spec: Spec):
        from ray.serve import metrics as rm

        if spec.kind == "histogram":
            metric = rm.Histogram(name, spec.help, boundaries=list(spec.buckets), tag_keys=spec.labels)
        else:
            metric = getattr(rm, spec.kind.capitalize())(name, spec.help, tag_keys=spec.labels)
        return _RayInstrument(metric, spec.kind)


class _RayInstrument:
    def __init__(self, metric, kind: str):
        self.metric, self.kind = metric, kind

    def record(self, value: float, labels: dict) -> None:
        getattr(self.metric, _VERB[self.kind])(value, tags=labels or None)

    def clear(self) -> None:  # Ray gauges cannot drop a label set: the value stays until overwritten
        pass


class Metrics:
    """The stream's metrics on one backend; the scorer core and the consume loop call the hooks."""

    def __init__(self, backend):
        self._m = {name: backend.make(name, spec) for name, spec in SPECS.items()}
        self._version: str | None = None  # the model_info label set now

    @classmethod
    def prometheus(cls, registry=None) -> Metrics:
        """On ``registry`` (default: prometheus_client's process-wide one)."""
        if registry is None:
            from prometheus_client import REGISTRY as registry
        return cls(_Prometheus(registry))

    @classmethod
    def ray(cls) -> Metrics:
        return cls(_Ray())

    def _add(self, name: str, value: float = 1.0, **labels) -> None:
        if value:
            self._m[name].record(value, labels)

    # ---- the scorer core (streaming.scoring.BatchScorer) ------------------------------------------
    def looked_up(self, seconds: float, presence: dict[str, Iterable[bool]], sessions: int) -> None:
        self._m["lantern_feature_lookup_seconds"].record(seconds, {})
        self._add("lantern_sessions_looked_up", sessions)
        for source, present in presence.items():
            self._add("lantern_sessions_external", int(sum(bool(p) for p in present)), source=source)

    def forwarded(self, seconds: float) -> None:
        self._m["lantern_model_forward_seconds"].record(seconds, {})

    def finished(self, gates: Iterable[float], degraded: int, model_version: str) -> None:
        for gate in gates:
            if gate == gate:  # NaN: no external data, the gate does not apply
                self._m["lantern_session_gate"].record(float(gate), {})
        self._add("lantern_events_degraded", degraded)
        self.model_version(model_version)

    def model_version(self, version: str) -> None:
        if self._version != version:
            self._m["lantern_model_info"].clear()
            self._m["lantern_model_info"].record(1.0, {"model_version": version})
            self._version = version

    # ---- the consume loop (streaming.loop) ----------------------------------------------------------
    def polled(self, topic_counts: dict[str, int], batch_size: int) -> None:
        for topic, n in topic_counts.items():
            self._add("lantern_events_consumed", n, topic=topic)
        self._m["lantern_batch_size_events"].record(batch_size, {})

    def lag(self, lags: dict[tuple[str, int], int]) -> None:
        for (topic, partition), n in lags.items():
            self._m["lantern_consumer_lag_events"].record(n, {"topic": topic, "partition": str(partition)})

    def delivered(self, scored: int, dead_classes: Iterable[str], seconds: float,
                  completed_at: Iterable[datetime], now: datetime) -> None:
        self._m["lantern_produce_flush_seconds"].record(seconds, {})
        self._add("lantern_events_scored", scored)
        for kind in dead_classes:
            self._add("lantern_events_dead_lettered", 1, error_class=kind)
        for done in completed_at:
            self._m["lantern_completion_to_score_seconds"].record(max(0.0, (now - done).total_seconds()), {})

    def duplicates(self, stage: str, n: int) -> None:
        self._add("lantern_duplicates_skipped", n, stage=stage)


def serve_metrics(port: int, host: str = "127.0.0.1", registry=None):
    """Expose ``registry`` (default: the process-wide one) on http://host:port/metrics; returns the
    server (``shutdown()`` stops it). Port 0 picks a free one (``server.server_port``)."""
    from prometheus_client import REGISTRY, start_http_server

    server, _ = start_http_server(port, addr=host, registry=registry or REGISTRY)
    return server
