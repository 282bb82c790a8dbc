"""Each stage of the scoring pipeline on its own, on the same messages: the stage's ceiling.

The pipeline per micro-batch (``kafka.max_poll_records`` records) is: consume → parse (bytes →
validated events) → features (one online lookup) → encode (events + features → model arrays) →
model (one forward pass) → produce (score records encoded, then sent and flushed by the
scorer's ``KafkaSink``, dead letters included). Here each stage runs
alone, batch after batch, in this process, on one core (one torch thread), so ``events / seconds``
is what that stage could sustain on one core if it were the only work there. With a scorer that
reads stored external encodings (``stored_version``), "features" reads them (and looks up only
users without one) and "model" fuses them instead of encoding the sources.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from lantern.settings.kafka import PRODUCERS, KafkaConfig
from model.inference import Prediction
from streaming.scoring import BatchCodec, Encoded, Record

STAGES = ("consume", "parse", "features", "encode", "model", "produce")


@dataclass
class StageTimes:
    events: int
    seconds: dict[str, float]
    #: other ways to run a stage, measured beside it and not in the bound: {stage: {way: seconds}}
    alternatives: dict[str, dict[str, float]] = field(default_factory=dict)

    def alternatives_eps(self) -> dict[str, dict[str, float]]:
        return {stage: {way: self.events / s for way, s in ways.items()} for stage, ways in self.alternatives.items()}

    def ceilings_eps(self) -> dict[str, float]:
        return {stage: self.events / s for stage, s in self.seconds.items()}

    def shares(self, pipeline_eps: float) -> dict[str, float]:
        """Each stage's seconds per event as a fraction of the pipeline's (1 / throughput). Stages
        in different processes overlap, so these may sum past 1; what is left below 1 is the
        pipeline's own cost (handle calls, serialisation, waiting)."""
        return {stage: pipeline_eps * s / self.events for stage, s in self.seconds.items()}

    def bound_eps(self, cores: int) -> float:
        """The most these stages could sustain together on ``cores`` cores: every core busy with
        them alone (no broker, no Ray, no serialisation, no waiting) — cores / Σ seconds per event."""
        return cores * self.events / sum(self.seconds.values())


def consume_all(cfg: KafkaConfig, topic: str, expected: int, timeout_s: float = 120.0) -> tuple[float, list[Record]]:
    """Every record of ``topic`` read from the start by a bare kafka-python consumer with the
    scorer's fetch settings (no group, no processing): (seconds, records)."""
    from kafka import KafkaConsumer

    from streaming.kafka_io import assign_from_start

    consumer = KafkaConsumer(enable_auto_commit=False, max_poll_records=cfg.max_poll_records, **cfg.client_options())
    try:
        assign_from_start(consumer, topic)
        records: list[Record] = []
        deadline = time.monotonic() + timeout_s
        t0 = time.perf_counter()
        while len(records) < expected and time.monotonic() < deadline:
            for tp, msgs in consumer.poll(timeout_ms=200).items():
                records += [Record(tp.topic, tp.partition, m.offset, m.key, m.value, m.timestamp) for m in msgs]
        seconds = time.perf_counter() - t0
    finally:
        consumer.close()
    if len(records) < expected:
        raise TimeoutError(f"read {len(records)} of {expected} records from {topic} in {timeout_s:.0f} s")
    return seconds, records


def _timed(fn: Callable, items: list) -> tuple[float, list]:
    """Seconds for ``fn`` over ``items``. What earlier stages left in memory (every record and
    event of the run) is frozen out of the garbage collector's scans first: the pipeline holds
    one micro-batch at a time, and a full collection over 50K events' objects is not its cost."""
    gc.collect()
    gc.freeze()
    try:
        t0 = time.perf_counter()
        out = [fn(item) for item in items]
        return time.perf_counter() - t0, out
    finally:
        gc.unfreeze()


def measure_stages(cfg: KafkaConfig, topic: str, expected: int, scorer: BatchCodec, model: torch.nn.Module,
                   produce_topic: str) -> StageTimes:
    """Each stage alone over the same ``expected`` records of ``topic``, in micro-batches, on one
    core: the costs per event add up (:meth:`StageTimes.bound_eps`)."""
    from model.data import encode_sessions
    from model.inference import forward
    from streaming.events import events_to_sessions

    seconds: dict[str, float] = {}
    seconds["consume"], records = consume_all(cfg, topic, expected)
    batches = [records[i:i + cfg.max_poll_records] for i in range(0, len(records), cfg.max_poll_records)]
    seconds["parse"], parsed = _timed(scorer.parse, batches)
    events = [[e for _, e in good] for good, _ in parsed]
    seconds["features"], looked_up = _timed(lambda ev: scorer.lookup([e.user_id for e in ev]), events)
    seconds["encode"], encoded = _timed(
        lambda pair: encode_sessions(scorer.q, events_to_sessions(pair[0]), scorer.spec, pair[1][0]),
        list(zip(events, looked_up)))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        device = next(model.parameters()).device
        seconds["model"], predicted = _timed(
            lambda pair: forward(model, pair[0].survey.q_idx, pair[0].survey.sel, pair[0].sources, device,
                                 stored=pair[1][2]), list(zip(encoded, looked_up)))
    finally:
        torch.set_num_threads(previous)
    outputs = [(Encoded(events[i], encoded[i], parsed[i][1], False), Prediction(*predicted[i], "bench"))
               for i in range(len(batches))]
    by_client = {client: _time_produce(replace(cfg, scores_topic=produce_topic, producer=client), scorer, outputs)
                 for client in (cfg.producer, *(p for p in PRODUCERS if p != cfg.producer))}
    seconds["produce"] = by_client[cfg.producer]
    return StageTimes(len(records), seconds, {"produce": by_client})


def _time_produce(cfg: KafkaConfig, scorer: BatchCodec, outputs: list) -> float:
    """Seconds for every batch's score records to be encoded (``finish``), then sent and flushed
    by the scorer's own sink through ``cfg.producer``'s client. The sink first sends one batch
    untimed: a running scorer's producer is connected and holds its producer id (kafka-python's
    connects in its constructor, librdkafka's on the first send)."""
    from streaming.kafka_io import KafkaSink

    sink = KafkaSink(cfg)
    try:
        def produce(pair) -> None:
            sink.write(scorer.finish(*pair))
            sink.flush()

        produce(outputs[0])
        return _timed(produce, outputs)[0]
    finally:
        sink.close()
