"""The batch partitioner places every key where Kafka's default partitioner would."""

import random

import numpy as np
from kafka.partitioner.default import DefaultPartitioner, murmur2

from streaming.key_partitions import key_partitions
from streaming.key_partitions import murmur2 as batch_murmur2


def _keys(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    keys = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 41))) for _ in range(n)]
    return keys + [b"", b"a", b"ab", b"abc", b"abcd", "user-ä".encode(), b"\xff" * 9]


def test_murmur2_equals_kafka_pythons_for_every_length_and_byte():
    keys = _keys(3000)
    assert len({len(k) for k in keys}) == 41  # every tail length, many word counts
    expected = np.array([murmur2(k) & 0xFFFFFFFF for k in keys], np.uint32)
    np.testing.assert_array_equal(batch_murmur2(keys), expected)


class _Cluster:
    def __init__(self, n: int):
        self.n = n

    def topics(self):
        return {"t"}

    def partitions_for_topic(self, topic):
        return set(range(self.n))

    def available_partitions_for_topic(self, topic):
        return set(range(self.n))


def test_partitions_equal_the_default_partitioners():
    keys = _keys(1000, seed=1)
    for n in (1, 3, 4, 12):
        expected = [DefaultPartitioner().partition("t", k, k, b"", b"", _Cluster(n)) for k in keys]
        assert key_partitions(keys, n).tolist() == expected
