"""Feast's storage details lantern reads directly: serialised entity keys (v3 layout built
without protobuf), the ``Value`` field of each packed feature, SQLite timestamps and the vector
query."""

from __future__ import annotations

import struct
from datetime import datetime, timezone
from functools import lru_cache

from feast import ValueType
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from features.packing import CAT, NUM, SourceLayout

LIST_FIELD = {"float": "float_list_val", "int": "int64_list_val", "string": "string_list_val"}


def field_of(layout: SourceLayout, feature: str) -> str:
    if feature == NUM:
        return "double_list_val"
    if feature == CAT:
        return "string_list_val"
    return LIST_FIELD[dict(layout.sequences)[feature]]


@lru_cache(maxsize=64)
def vector_query(table: str, n: int) -> str:
    keys = ",".join(f"({i},?)" for i in range(n))
    return (f'WITH k(i, key) AS (VALUES {keys}) SELECT coalesce(t.value, x\'\') FROM k '
            f'LEFT JOIN "{table}" t ON t.entity_key = k.key ORDER BY k.i')


_USER_KEY_PREFIX = (struct.pack("<I", 1) + struct.pack("<I", ValueType.STRING.value) + struct.pack("<I", len(b"user_id"))
                    + b"user_id" + struct.pack("<I", ValueType.STRING.value))


def entity_key_bytes(user_id: str, version: int = 3) -> bytes:
    """Feast's serialised entity key for ``user_id`` (v3 layout built directly: ~10x faster)."""
    if version != 3:
        return serialize_entity_key(EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=user_id)]),
                                    entity_key_serialization_version=version)
    raw = user_id.encode()
    return key_prefix(len(raw)) + raw


KEY_PREFIXES: dict[int, bytes] = {}


def key_prefix(length: int) -> bytes:
    """Feast's v3 entity key up to the user id's bytes, for ids of ``length`` bytes."""
    prefix = KEY_PREFIXES.get(length)
    if prefix is None:
        prefix = KEY_PREFIXES[length] = _USER_KEY_PREFIX + struct.pack("<I", length)
    return prefix


def epoch(ts) -> float:
    """Feast's SQLite ``event_ts``: epoch seconds (this version) or an ISO timestamp (older ones)."""
    if isinstance(ts, (int, float)):
        return float(ts)
    dt = ts if isinstance(ts, datetime) else datetime.fromisoformat(ts if isinstance(ts, str) else ts.decode())
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()
