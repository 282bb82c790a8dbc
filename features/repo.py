"""Feast objects for lantern, built from the packed layouts of a dataset's external sources.

Pure: builds objects, reads nothing. ``features/definitions.py`` calls it with the layouts in
``features/layout.py`` (written by ``lantern features apply``), which is what ``feast apply`` reads.
"""

from __future__ import annotations

import json
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Bytes, Float32, Float64, Int64, String, UnixTimestamp

from features.packing import CAT, NUM, SourceLayout

FEATURE_SERVICE = "lantern_v1"
LAYOUT_TAG = "lantern_packed_layout"  # each view carries its packing layout as JSON
SCORES_VIEW, SCORES_PUSH = "lantern_scores", "lantern_scores_push"
VECTOR_VIEW, VECTOR_PUSH, VECTOR_FIELD = "lantern_v1_vector", "lantern_v1_vector_push", "vector"
OFFLINE_DIR = ".feast/offline"  # relative to the feature repo
SEQ_DTYPES = {"float": Array(Float32), "int": Array(Int64), "string": Array(String)}

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
              description="A survey respondent (data contract user_id).")


def source_view(layout: SourceLayout, ttl_days: float) -> FeatureView:
    fields = []
    if layout.numeric:
        fields.append(Field(name=NUM, dtype=Array(Float64), description=f"packed: {', '.join(layout.numeric)}"))
    if layout.categorical:
        fields.append(Field(name=CAT, dtype=Array(String), description=f"packed: {', '.join(layout.categorical)}"))
    fields += [Field(name=col, dtype=SEQ_DTYPES[kind]) for col, kind in layout.sequences]
    return FeatureView(
        name=layout.name, entities=[user], ttl=timedelta(days=ttl_days), schema=fields, online=True,
        source=FileSource(name=f"{layout.name}_source", path=f"{OFFLINE_DIR}/{layout.name}.parquet",
                          timestamp_field="event_timestamp"),
        tags={LAYOUT_TAG: json.dumps(layout.to_dict())},
    )


def scores_objects() -> tuple[PushSource, FeatureView]:
    push = PushSource(name=SCORES_PUSH, batch_source=FileSource(
        name="lantern_scores_source", path=f"{OFFLINE_DIR}/{SCORES_VIEW}.parquet", timestamp_field="event_timestamp"))
    view = FeatureView(
        name=SCORES_VIEW, entities=[user], ttl=timedelta(days=365), online=True, source=push,
        schema=[Field(name="session_id", dtype=String), Field(name="model_version", dtype=String),
                Field(name="probabilities", dtype=Array(Float32)),
                Field(name="predicted_keys", dtype=Array(String)),
                Field(name="completed_at", dtype=UnixTimestamp)],  # which session is the latest
        description="The scorer's latest predicted attributes per user (written back by the stream).",
    )
    return push, view


def vector_objects() -> tuple[PushSource, FeatureView]:
    """Every source of lantern_v1 precomputed into one value per user (features/vector.py),
    written by `lantern features materialize`: the online lookup's single read."""
    push = PushSource(name=VECTOR_PUSH, batch_source=FileSource(
        name="lantern_v1_vector_source", path=f"{OFFLINE_DIR}/{VECTOR_VIEW}.parquet", timestamp_field="event_timestamp"))
    view = FeatureView(name=VECTOR_VIEW, entities=[user], ttl=timedelta(0), online=True, source=push,
                       schema=[Field(name=VECTOR_FIELD, dtype=Bytes)],
                       description="lantern_v1 precomputed per user; per-source event times inside.")
    return push, view


def build_objects(layouts: list[SourceLayout], ttl_days: float) -> dict[str, object]:
    """Every Feast object of the repo by name: entity, one view per source, the FeatureService,
    the score write-back push source and view, the precomputed-vector push source and view."""
    views = [source_view(layout, ttl_days) for layout in layouts]
    push, scores = scores_objects()
    vector_push, vector = vector_objects()
    service = FeatureService(name=FEATURE_SERVICE, features=views,
                             description="What LANTERN v1 reads: every external source, packed.")
    return {"user": user, **{v.name: v for v in views}, FEATURE_SERVICE: service, SCORES_PUSH: push,
            SCORES_VIEW: scores, VECTOR_PUSH: vector_push, VECTOR_VIEW: vector}
