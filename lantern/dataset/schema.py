"""pyarrow schemas of the data contract (see docs/data.md)."""

from __future__ import annotations

import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")

ANSWER = pa.struct([("question_id", pa.string()), ("option_ids", pa.list_(pa.string()))])

SESSIONS = pa.schema(
    [
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("completed_at", TIMESTAMP, nullable=False),
        pa.field("answers", pa.list_(ANSWER), nullable=False),
    ]
)

#: Columns every external source must have; every other column is a feature.
EXTERNAL_KEYS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("event_timestamp", TIMESTAMP, nullable=False),
    ]
)

QUESTIONNAIRE_FILE = "questionnaire.json"
SESSIONS_FILE = "sessions.parquet"
EXTERNAL_DIR = "external"


def feature_kind(dtype: pa.DataType) -> str | None:
    """How an external column is encoded: numeric, categorical, sequence, or None (unsupported)."""
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_boolean(dtype):
        return "numeric"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_dictionary(dtype):
        return "categorical"
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        inner = dtype.value_type
        if pa.types.is_integer(inner) or pa.types.is_floating(inner) or pa.types.is_string(inner):
            return "sequence"
    return None
