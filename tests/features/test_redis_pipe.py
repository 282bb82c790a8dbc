"""The pipelined hash-field reader on a real redis-server: order, missing keys and fields,
AUTH + SELECT, error replies, and reconnecting after the server comes back."""

from __future__ import annotations

import shutil

import pytest
import redis

from devtools.servers import free_port, redis_server
from features.redis_pipe import HashFieldReader, RedisReplyError

if shutil.which("redis-server") is None:  # make test installs it; say so loudly when it is missing
    pytest.skip("no redis-server binary on PATH (make test installs Debian's redis-server)", allow_module_level=True)


def _client(address: str, **kwargs) -> redis.Redis:
    host, port = address.split(":")
    return redis.Redis(host=host, port=int(port), **kwargs)


def test_reads_one_field_of_many_hashes_in_order_with_auth_and_db():
    with redis_server(None, "--requirepass", "s3cret") as address:
        client = _client(address, password="s3cret", db=2)
        keys = [b"user\x00\r\n%d" % i for i in range(3000)]  # binary keys (RESP is length-prefixed); many recv()s
        for i, key in enumerate(keys):
            if i % 7:  # every 7th user has no hash at all
                client.hset(key, mapping={b"vec": b"v%d" % i * 40, b"other": b"x"})
        client.hset(b"no-vec", b"other", b"x")
        host, port = address.split(":")
        reader = HashFieldReader.from_options(host, int(port), {"password": "s3cret", "db": "2"})
        got = reader.hget_many(keys + [b"no-vec"], b"vec")
        assert got == [None if i % 7 == 0 else b"v%d" % i * 40 for i in range(3000)] + [None]
        assert _client(address, password="s3cret").dbsize() == 0  # db 0 untouched: the reader selected db 2

        with pytest.raises(RedisReplyError, match="WRONGPASS|invalid"):
            HashFieldReader.from_options(host, int(port), {"password": "wrong"}).hget_many(keys[:1], b"vec")


def test_error_replies_raise_and_the_reader_recovers_after_a_restart():
    port = free_port()
    with redis_server(port) as address:
        client = _client(address)
        client.set(b"plain-string", b"x")
        client.hset(b"h", b"vec", b"1")
        reader = HashFieldReader("127.0.0.1", port, timeout_s=1.0)
        with pytest.raises(RedisReplyError, match="WRONGTYPE"):
            reader.hget_many([b"h", b"plain-string"], b"vec")
        assert reader.hget_many([b"h"], b"vec") == [b"1"]  # a new connection after the error
    with pytest.raises(OSError):
        reader.hget_many([b"h"], b"vec")  # the server is gone
    with redis_server(port) as address:
        _client(address).hset(b"h", b"vec", b"2")
        assert reader.hget_many([b"h"], b"vec") == [b"2"]
