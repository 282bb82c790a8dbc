"""The partition Kafka's default partitioner gives each key, for a whole batch of keys at once.

Kafka's clients (Java, librdkafka's ``murmur2_random``, kafka-python) place a keyed record on
``(murmur2(key) & 0x7fffffff) % partitions``. kafka-python computes murmur2 in pure Python per
record; here it runs over a batch in numpy (uint32 arithmetic wraps like Java's int), so a
producer can be told each record's partition and skip its partitioner. Same partitions,
bit for bit (tests/streaming/test_key_partitions.py checks it against kafka-python's).
"""

from __future__ import annotations

import numpy as np

_SEED, _M, _R = np.uint32(0x9747B28C), np.uint32(0x5BD1E995), np.uint32(24)


def murmur2(keys: list[bytes]) -> np.ndarray:
    """Kafka's murmur2 of every key: (N,) uint32."""
    out = np.empty(len(keys), np.uint32)
    lengths = np.fromiter((len(k) for k in keys), np.int64, len(keys))
    for n in np.unique(lengths):  # keys of one length hash together as an (rows, n) byte matrix
        rows = np.flatnonzero(lengths == n)
        out[rows] = _murmur2_fixed(np.frombuffer(b"".join(keys[i] for i in rows), np.uint8).reshape(len(rows), n))
    return out


def _murmur2_fixed(data: np.ndarray) -> np.ndarray:
    """murmur2 of equal-length keys: (N, n) uint8 → (N,) uint32."""
    N, n = data.shape
    with np.errstate(over="ignore"):
        h = np.full(N, _SEED ^ np.uint32(n), np.uint32)
        words = data[:, : n // 4 * 4].reshape(N, -1, 4).astype(np.uint32)
        for j in range(words.shape[1]):
            k = words[:, j, 0] | (words[:, j, 1] << 8) | (words[:, j, 2] << 16) | (words[:, j, 3] << 24)
            k = k * _M
            k ^= k >> _R
            k = k * _M
            h = (h * _M) ^ k
        tail = data[:, n // 4 * 4:].astype(np.uint32)
        if tail.shape[1]:
            for i in reversed(range(tail.shape[1])):  # Java's switch falls through: byte 2, 1, then 0
                h ^= tail[:, i] << np.uint32(8 * i)
            h = h * _M
        h ^= h >> np.uint32(13)
        h = h * _M
        h ^= h >> np.uint32(15)
    return h


def key_partitions(keys: list[bytes], partitions: int) -> np.ndarray:
    """Each key's partition under Kafka's default partitioner: (N,) int64."""
    assert partitions > 0, "a topic has at least one partition"
    return ((murmur2(keys) & np.uint32(0x7FFFFFFF)) % np.uint32(partitions)).astype(np.int64)
