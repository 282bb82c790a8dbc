"""The Redis online store's reads, in Feast's own hash layout: every view's fields for a batch in
one pipelined round of ``HMGET``s, every user's precomputed vector in one round of ``HGET``s."""

from __future__ import annotations

from feast.protos.feast.types.Value_pb2 import Value
from google.protobuf.timestamp_pb2 import Timestamp

from features.keys import field_of
from features.packing import SourceLayout
from features.redis_pipe import HashFieldReader
from features.repo import ENCODING_FIELD, ENCODING_VIEW, VECTOR_FIELD, VECTOR_VIEW
from lantern.errors import FeatureStoreUnavailable, LanternError


class RedisReader:
    def __init__(self, config, layouts: list[SourceLayout]):
        self.config, self.layouts = config, layouts
        self._conn = None  # redis.Redis, on first use
        self._pipe = None  # features.redis_pipe.HashFieldReader, on first use
        self._hash_fields: dict[tuple[str, str], bytes] = {}  # (view, feature) → Feast's field in the hash

    def read_vectors(self, keys: list[bytes]) -> list[bytes | None]:
        """Every user's vector: serialized Values (None: no vector), unwrapped by vector.parse."""
        return self.read_values(keys, VECTOR_VIEW, VECTOR_FIELD)

    def read_encodings(self, keys: list[bytes]) -> list[bytes | None]:
        """Every user's stored external encoding: serialized Values (None: none stored)."""
        return self.read_values(keys, ENCODING_VIEW, ENCODING_FIELD)

    def read_values(self, keys: list[bytes], view: str, feature: str) -> list[bytes | None]:
        """Pipelined HGETs of one feature of every user in one round trip (features/redis_pipe.py)."""
        if self._pipe is None:
            host, port, options = self._redis_address()
            self._pipe = HashFieldReader.from_options(host, port, options)
        field = self._hash_fields.get((view, feature))
        if field is None:
            from feast.infra.online_stores.helpers import _mmh3

            field = self._hash_fields[view, feature] = _mmh3(f"{view}:{feature}")
        project = self.config.project.encode()
        try:
            return self._pipe.hget_many([k + project for k in keys], field)
        except (OSError, LanternError) as exc:
            raise FeatureStoreUnavailable(f"Redis online store unreachable: {exc}") from exc

    def _redis_address(self) -> tuple[str, int, dict]:
        """Feast's connection string ``host:port[,option=value…]``."""
        host_port, *options = self.config.online_store.connection_string.split(",")
        host, _, port = host_port.partition(":")
        return host, int(port or 6379), dict(o.split("=", 1) for o in options)

    def _redis_client(self):
        if self._conn is None:
            import redis

            host, port, kwargs = self._redis_address()
            kwargs.pop("ssl", None)
            self._conn = redis.Redis(host=host, port=port, socket_timeout=2.0, socket_connect_timeout=2.0, **kwargs)
        return self._conn

    def read_views(self, keys: list[bytes]):
        import redis
        from feast.infra.online_stores.helpers import _mmh3

        project = self.config.project.encode()
        plan = []
        for layout in self.layouts:
            plan += [(layout, f, _mmh3(f"{layout.name}:{f}")) for f in layout.features]
            plan.append((layout, None, f"_ts:{layout.name}".encode()))
        fields = [h for _, _, h in plan]
        try:
            with self._redis_client().pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(key + project, fields)
                replies = pipe.execute()
        except redis.RedisError as exc:
            self._conn = None
            raise FeatureStoreUnavailable(f"Redis online store unreachable: {exc}") from exc
        out = {x.name: ({f: [None] * len(keys) for f in x.features}, [None] * len(keys)) for x in self.layouts}
        for i, reply in enumerate(replies):
            for (layout, feature, _), blob in zip(plan, reply):
                if blob is None:
                    continue
                values, stamps = out[layout.name]
                if feature is None:
                    stamps[i] = float(Timestamp.FromString(blob).seconds)
                else:
                    values[feature][i] = list(getattr(Value.FromString(blob), field_of(layout, feature)).val)
        return out
