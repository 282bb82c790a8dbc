"""Kafka connection and topic configuration: plain data, no Kafka import."""

from __future__ import annotations

from dataclasses import dataclass

INPUT_TOPIC, SCORES_TOPIC = "survey.sessions.completed", "lantern.scores"
DLQ_TOPIC = INPUT_TOPIC + ".dlq"
PRODUCERS = ("librdkafka", "kafka-python")
_LIBRDKAFKA_NAMES = {"security_protocol": "security.protocol", "sasl_mechanism": "sasl.mechanism",
                     "sasl_plain_username": "sasl.username", "sasl_plain_password": "sasl.password",
                     "ssl_cafile": "ssl.ca.location", "ssl_certfile": "ssl.certificate.location",
                     "ssl_keyfile": "ssl.key.location"}


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap: str = "127.0.0.1:9092"
    input_topic: str = INPUT_TOPIC
    scores_topic: str = SCORES_TOPIC
    dlq_topic: str = DLQ_TOPIC
    partitions: int = 4
    group_id: str = "lantern-scorer"
    max_poll_records: int = 256
    # group membership: a dead consumer's partitions move on after session_timeout_ms (6 s is the
    # broker's usual minimum); kafka-python's defaults make a join take ~23 s on the embedded broker,
    # these ~3 s (measured)
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    flush_timeout_s: float = 30.0  # a batch's outputs not acknowledged by then: not committed, retried
    # a record batch the consumer cannot read at all (bad CRC, a codec it cannot decompress): "skip"
    # logs, counts and commits past its offsets one by one; "stop" raises (the partition waits for a fix)
    unreadable_batches: str = "skip"
    # the client that sends scores and dead letters: "librdkafka" (confluent-kafka, its per-record
    # send in C: 2.9x kafka-python's rate here, docs/performance.md) or "kafka-python"
    producer: str = "librdkafka"
    # security options (kafka-python's names; librdkafka_options() maps them), never logged
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self):
        from lantern.errors import ConfigError

        if self.unreadable_batches not in ("skip", "stop"):
            raise ConfigError(f"kafka.unreadable_batches must be 'skip' or 'stop', got {self.unreadable_batches!r}")
        if self.producer not in PRODUCERS:
            raise ConfigError(f"kafka.producer must be one of {', '.join(PRODUCERS)}, got {self.producer!r}")

    def group_options(self) -> dict:
        """A consumer group member's timeouts (kafka-python's names)."""
        return {"session_timeout_ms": self.session_timeout_ms, "heartbeat_interval_ms": self.heartbeat_interval_ms}

    def client_options(self) -> dict:
        keys = ("security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
                "ssl_cafile", "ssl_certfile", "ssl_keyfile")
        return {"bootstrap_servers": self.bootstrap,
                **{k: getattr(self, k) for k in keys if getattr(self, k) is not None}}

    def librdkafka_options(self) -> dict:
        """The same connection and security options under librdkafka's names."""
        return {"bootstrap.servers": self.bootstrap,
                **{name: getattr(self, key) for key, name in _LIBRDKAFKA_NAMES.items() if getattr(self, key) is not None}}

    def __repr__(self) -> str:  # secrets stay out of logs and reports
        return f"KafkaConfig(bootstrap={self.bootstrap!r}, group_id={self.group_id!r}, " \
               f"security_protocol={self.security_protocol!r})"
