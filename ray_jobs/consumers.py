"""Kafka scorer consumers as a Serve application (``lantern-consumers``), next to the scorer app.

Each ``StreamConsumer`` replica runs one :class:`streaming.kafka_io.KafkaScorer` in a thread: it
polls the input topic in the shared consumer group, sends each micro-batch to the ``LanternScorer``
app through its handle, produces scores and dead letters, and commits after the flush. Running
them as a Serve app lets a KubeRay ``RayService`` own them: the replica count is the consumer
count (≤ the input partitions), Serve restarts a replica whose loop died (``check_health``), and
deleting the app stops each loop cleanly (``__del__``: finish the batch, commit, leave the group).
"""

from __future__ import annotations

import threading
import time

from ray import serve

from lantern.settings.kafka import KafkaConfig
from streaming.kafka_io import KafkaScorer
from streaming.metrics import Metrics

CONSUMERS_APP = "lantern-consumers"


@serve.deployment(name="StreamConsumer", ray_actor_options={"num_cpus": 0})  # I/O-bound: the scorer app computes
class StreamConsumer:
    def __init__(self, kafka: dict, scorer_app: str = "lantern"):
        from ray_jobs.serve import ServeScorer

        self.runner = KafkaScorer(ServeScorer(serve.get_app_handle(scorer_app)), KafkaConfig(**kafka),
                                  metrics=Metrics.ray())
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="kafka-scorer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as exc:  # surfaced by check_health: Serve replaces the replica
            self.error = exc
            raise

    def check_health(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"consumer loop failed: {self.error!r}")
        if not self.thread.is_alive():
            raise RuntimeError("consumer loop exited")

    def ready(self) -> bool:
        """Whether this consumer holds partitions yet (the group join takes a few seconds)."""
        return self.runner.assigned.is_set()

    async def __call__(self, request) -> dict:
        return {"alive": self.thread.is_alive(), "error": repr(self.error) if self.error else None}

    def __del__(self):
        self.runner.stop()  # the loop finishes its batch, commits and leaves the group
        self.thread.join(timeout=15)


def build_consumers(kafka: KafkaConfig, consumers: int, scorer_app: str = "lantern"):
    """The consumers app: ``consumers`` replicas, each one member of the scorer group."""
    from dataclasses import asdict

    return StreamConsumer.options(num_replicas=consumers).bind(asdict(kafka), scorer_app)


def app_builder(args: dict):
    """Serve config entry point (``import_path: ray_jobs.consumers:app_builder``): ``args`` holds
    the KafkaConfig fields (``bootstrap``, topics, ``group_id`` …) and ``scorer_app``; unknown
    keys are an error."""
    from dataclasses import asdict

    from lantern.settings.serve import config_from_args

    args = dict(args)
    scorer_app = args.pop("scorer_app", "lantern")
    return StreamConsumer.bind(asdict(config_from_args(KafkaConfig, args, "Kafka")), scorer_app)


def wait_assigned(handle, timeout_s: float = 60.0) -> None:
    """Until every consumer of the consumers app (``handle``) holds its partitions."""
    deadline = time.monotonic() + timeout_s
    while not handle.ready.remote().result():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the scorer consumers got no partitions within {timeout_s:.0f} s")
        time.sleep(0.2)
