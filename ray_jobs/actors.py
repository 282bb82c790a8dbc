"""`lantern score --ray-actors N`: N Kafka scorer consumers as Ray actors, one consumer each.

Every actor joins the same consumer group, so Kafka spreads the input partitions over them;
scaling out is more actors across the cluster (up to the partition count). Each actor builds its
own scorer in its own process — a local model, or a :class:`ray_jobs.serve.ServeScorer` that sends
its micro-batches to the Serve app — from a picklable factory (ray_jobs/scorers.py), so nothing
heavy crosses the wire.
"""

from __future__ import annotations

from collections.abc import Callable

import ray

from lantern.settings.kafka import KafkaConfig
from streaming.kafka_io import KafkaScorer, ScoreStats
from streaming.metrics import Metrics


@ray.remote(max_concurrency=2)  # run() holds one thread; stop() gets the other
class ScorerActor:
    def __init__(self, make_scorer: Callable, cfg: KafkaConfig, max_events: int | None, idle_exit_s: float | None):
        metrics, scorer = Metrics.ray(), make_scorer()  # to Ray's Prometheus endpoint
        if hasattr(scorer, "metrics"):
            scorer.metrics = metrics
        self.runner = KafkaScorer(scorer, cfg, max_events, idle_exit_s, metrics=metrics)

    def run(self) -> ScoreStats:
        return self.runner.run()

    def stop(self) -> None:
        """Finish the current batch, commit, leave the group."""
        self.runner.stop()


def run_actors(n: int, make_scorer: Callable, cfg: KafkaConfig, max_events: int | None = None,
               idle_exit_s: float | None = None, num_cpus: float = 1.0) -> list[ScoreStats]:
    """Start ``n`` scorer actors and wait for all of them; ``max_events`` / ``idle_exit_s`` apply per actor.
    Interrupting (Ctrl-C) asks every actor to stop cleanly, then waits for their stats."""
    actors = [ScorerActor.options(num_cpus=num_cpus).remote(make_scorer, cfg, max_events, idle_exit_s)
              for _ in range(n)]
    runs = [a.run.remote() for a in actors]
    try:
        return ray.get(runs)
    except KeyboardInterrupt:
        ray.get([a.stop.remote() for a in actors])
        return ray.get(runs)


def total(stats: list[ScoreStats]) -> ScoreStats:
    out = ScoreStats()
    for s in stats:
        for f in ("consumed", "scored", "dead_lettered", "degraded_batches", "batches"):
            setattr(out, f, getattr(out, f) + getattr(s, f))
        out.latencies_s += s.latencies_s
    return out
