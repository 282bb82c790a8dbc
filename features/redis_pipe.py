"""One field of many Redis hashes in one round trip: pipelined ``HGET``s, replies parsed by hiredis.

The online lookup reads one field (the precomputed vector) of one hash per user. Redis has no
multi-key hash read, and the alternatives cost more than the read itself on a 2-core machine:
a Lua loop of ``redis.call('HGET')`` spends ~3 µs of server time per key, and redis-py's pipeline
spends ~5 µs of Python per command. Here the batch's commands are packed into one write (one
bytes format per key: 0.14 µs, against 0.44 µs for ``hiredis.pack_command``), and every reply
comes back through one ``hiredis.Reader`` (C): ~0.7 µs of server time and well under 1 µs of
client time per key. Options are those of Feast's connection string
(``host:port[,password=…][,username=…][,db=N][,ssl=true]``).
"""

from __future__ import annotations

import socket
import ssl

import hiredis

from lantern.errors import LanternError


class RedisReplyError(LanternError):
    """Redis answered a command with an error (wrong type, auth, …)."""


class HashFieldReader:
    def __init__(self, host: str, port: int, password: str | None = None, username: str | None = None,
                 db: int = 0, tls: bool = False, timeout_s: float = 2.0):
        self.address, self.tls, self.timeout_s = (host, port), tls, timeout_s
        self.setup = []
        if password is not None:
            self.setup.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            self.setup.append(("SELECT", str(db)))
        self._sock: socket.socket | None = None

    @classmethod
    def from_options(cls, host: str, port: int, options: dict, timeout_s: float = 2.0) -> HashFieldReader:
        tls = str(options.get("ssl", "false")).lower() in ("true", "1", "yes")
        return cls(host, port, options.get("password"), options.get("username"), int(options.get("db", 0)), tls,
                   timeout_s)

    def hget_many(self, keys: list[bytes], field: bytes) -> list[bytes | None]:
        """``HGET key field`` of every key, in order (None: no such key or field). Socket errors
        (``OSError``: refused, reset, timed out) close the connection and propagate."""
        tail = b"$%d\r\n%s\r\n" % (len(field), field)  # RESP, as hiredis.pack_command writes it, ~3x faster
        try:
            return self._round_trip(b"".join([b"*3\r\n$4\r\nHGET\r\n$%d\r\n%s\r\n%s" % (len(k), k, tail) for k in keys]),
                                    len(keys))
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.create_connection(self.address, timeout=self.timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.address[0])
            self._sock = sock
            if self.setup:
                self._round_trip(b"".join(hiredis.pack_command(c) for c in self.setup), len(self.setup))
        return self._sock

    def _round_trip(self, commands: bytes, count: int) -> list:
        """Send ``count`` packed commands in one write; their replies, in order."""
        sock = self._connect()
        sock.sendall(commands)
        reader, replies = hiredis.Reader(), []
        while len(replies) < count:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise ConnectionResetError("Redis closed the connection mid-reply")
            reader.feed(chunk)
            while (reply := reader.gets()) is not False:
                replies.append(reply)
        errors = [r for r in replies if isinstance(r, hiredis.ReplyError)]
        if errors:
            self.close()  # the connection's state is unknown after a failed setup
            raise RedisReplyError(f"Redis refused {len(errors)} of {count} commands: {errors[0]}")
        return replies
