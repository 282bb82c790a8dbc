"""Where a micro-batch's outputs go: every output is a :class:`Sink` — ``write(batch)`` queues a
batch's outputs, ``flush()`` returns once they are durable or raises
:class:`OutputsNotAcknowledged`. The consume loop commits a batch's offsets only after its
sink's ``flush()`` returned. Implementations: ``streaming.kafka_io.KafkaSink`` (scores and dead
letters to Kafka), ``streaming.score_sink.FeastScoreSink`` (scores into Feast's online view) and
``streaming.testing.MemorySink`` (in memory, for tests)."""

from __future__ import annotations

from typing import Protocol, TypeVar

from lantern.errors import LanternError

Batch = TypeVar("Batch", contravariant=True)


class OutputsNotAcknowledged(LanternError):
    """A sink did not make a batch's outputs durable: its offsets must not be committed."""


class Sink(Protocol[Batch]):
    def write(self, batch: Batch) -> None:
        """Queue ``batch``'s outputs (may send them already; durable only after :meth:`flush`)."""
        ...

    def flush(self) -> None:
        """Every written output durable, or :class:`OutputsNotAcknowledged`."""
        ...
