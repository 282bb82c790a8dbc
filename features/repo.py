"""Feast objects for lantern, built from the packed layouts of a dataset's external sources.

Pure: builds objects, reads nothing. The feature repo's ``definitions.py`` (what ``feast apply``
reads) declares them at module level — one view per source, the versioned FeatureService, the
write-back views — and is written by :func:`render_definitions` when ``lantern features apply``
meets a dataset's sources; ``features/feature_repo/definitions.py`` is the simulator's.
"""

from __future__ import annotations

import json
import pprint
import re
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Bytes, Float32, Float64, Int64, String, UnixTimestamp

from features.packing import CAT, NUM, SourceLayout

FEATURE_SERVICE = "lantern_v1"
LAYOUT_TAG = "lantern_packed_layout"  # each view carries its packing layout as JSON
SCORES_VIEW, SCORES_PUSH = "lantern_scores", "lantern_scores_push"
VECTOR_VIEW, VECTOR_PUSH, VECTOR_FIELD = "lantern_v1_vector", "lantern_v1_vector_push", "vector"
ENCODING_VIEW, ENCODING_PUSH, ENCODING_FIELD = "lantern_v1_encoding", "lantern_v1_encoding_push", "encoding"
OFFLINE_DIR = ".feast/offline"  # default offline data folder, relative to the feature repo
SEQ_DTYPES = {"float": Array(Float32), "int": Array(Int64), "string": Array(String)}

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
              description="A survey respondent (data contract user_id).")


def source_view(layout: SourceLayout, ttl_days: float, offline: str = OFFLINE_DIR) -> FeatureView:
    fields = []
    if layout.numeric:
        fields.append(Field(name=NUM, dtype=Array(Float64), description=f"packed: {', '.join(layout.numeric)}"))
    if layout.categorical:
        fields.append(Field(name=CAT, dtype=Array(String), description=f"packed: {', '.join(layout.categorical)}"))
    fields += [Field(name=col, dtype=SEQ_DTYPES[kind]) for col, kind in layout.sequences]
    return FeatureView(
        name=layout.name, entities=[user], ttl=timedelta(days=ttl_days), schema=fields, online=True,
        source=FileSource(name=f"{layout.name}_source", path=f"{offline}/{layout.name}.parquet",
                          timestamp_field="event_timestamp"),
        tags={LAYOUT_TAG: json.dumps(layout.to_dict())},
    )


def scores_objects(offline: str = OFFLINE_DIR) -> tuple[PushSource, FeatureView]:
    push = PushSource(name=SCORES_PUSH, batch_source=FileSource(
        name="lantern_scores_source", path=f"{offline}/{SCORES_VIEW}.parquet", timestamp_field="event_timestamp"))
    view = FeatureView(
        name=SCORES_VIEW, entities=[user], ttl=timedelta(days=365), online=True, source=push,
        schema=[Field(name="session_id", dtype=String), Field(name="model_version", dtype=String),
                Field(name="probabilities", dtype=Array(Float32)),
                Field(name="predicted_keys", dtype=Array(String)),
                Field(name="completed_at", dtype=UnixTimestamp)],  # which session is the latest
        description="The scorer's latest predicted attributes per user (written back by the stream).",
    )
    return push, view


def vector_objects(offline: str = OFFLINE_DIR) -> tuple[PushSource, FeatureView]:
    """Every source of lantern_v1 precomputed into one value per user (features/vector.py),
    written by `lantern features materialize`: the online lookup's single read."""
    push = PushSource(name=VECTOR_PUSH, batch_source=FileSource(
        name="lantern_v1_vector_source", path=f"{offline}/{VECTOR_VIEW}.parquet", timestamp_field="event_timestamp"))
    view = FeatureView(name=VECTOR_VIEW, entities=[user], ttl=timedelta(0), online=True, source=push,
                       schema=[Field(name=VECTOR_FIELD, dtype=Bytes)],
                       description="lantern_v1 precomputed per user; per-source event times inside.")
    return push, view


def encoding_objects(offline: str = OFFLINE_DIR) -> tuple[PushSource, FeatureView]:
    """Every user's external encoding by the served model (model/materialized.py: the version is
    inside each value, and another version's is refused), written by `lantern features encode`."""
    push = PushSource(name=ENCODING_PUSH, batch_source=FileSource(
        name="lantern_v1_encoding_source", path=f"{offline}/{ENCODING_VIEW}.parquet",
        timestamp_field="event_timestamp"))
    view = FeatureView(name=ENCODING_VIEW, entities=[user], ttl=timedelta(0), online=True, source=push,
                       schema=[Field(name=ENCODING_FIELD, dtype=Bytes)],
                       description="lantern_v1's sources encoded by one model version; per-source event times inside.")
    return push, view


def feature_service(views: list[FeatureView]) -> FeatureService:
    return FeatureService(name=FEATURE_SERVICE, features=views,
                          description="What LANTERN v1 reads: every external source, packed.")


def build_objects(layouts: list[SourceLayout], ttl_days: float, offline: str = OFFLINE_DIR) -> dict[str, object]:
    """Every Feast object of the repo by name: entity, one view per source, the FeatureService,
    the score write-back push source and view, the precomputed-vector and model-encoding push
    sources and views —
    the same objects :func:`render_definitions` declares."""
    views = [source_view(layout, ttl_days, offline) for layout in layouts]
    push, scores = scores_objects(offline)
    vector_push, vector = vector_objects(offline)
    encoding_push, encoding = encoding_objects(offline)
    return {"user": user, **{v.name: v for v in views}, FEATURE_SERVICE: feature_service(views), SCORES_PUSH: push,
            SCORES_VIEW: scores, VECTOR_PUSH: vector_push, VECTOR_VIEW: vector, ENCODING_PUSH: encoding_push,
            ENCODING_VIEW: encoding}


def _literal(value: dict) -> str:
    return pprint.pformat(value, width=100, sort_dicts=False).replace("\n", "\n    ")


def _view_name(source: str) -> str:
    """A Python name for a source's view variable: ``demographics`` → ``demographics_view``."""
    return re.sub(r"\W", "_", source) + "_view"


def render_definitions(layouts: list[SourceLayout], ttl_days: float, offline: str = OFFLINE_DIR) -> str:
    """The feature repo's ``definitions.py`` for these sources: every object at module level."""
    names = [_view_name(layout.name) for layout in layouts]
    views = "\n".join(f"{name} = source_view(SourceLayout.from_dict(\n    {_literal(layout.to_dict())}), "
                      "TTL_DAYS, OFFLINE)" for name, layout in zip(names, layouts))
    return f'''"""The Feast objects of lantern's feature repo: what `feast apply` reads. No I/O.

Written by `lantern features apply --data DIR` from the dataset's external sources (one view per
source); the builders are in features/repo.py.
"""

from features.packing import SourceLayout
from features.repo import (  # noqa: F401
    encoding_objects,
    feature_service,
    scores_objects,
    source_view,
    user,
    vector_objects,
)

TTL_DAYS = {ttl_days!r}
OFFLINE = {offline!r}  # the packed offline parquet (relative paths: from this folder)

# one FeatureView per external source
{views}

# what LANTERN v1 reads: a versioned FeatureService (a model with other inputs gets a new one)
{FEATURE_SERVICE} = feature_service([{", ".join(names)}])

# the scorer's predictions written back, every source precomputed into one value per user, and
# every user's sources encoded by the served model version
{SCORES_PUSH}, {SCORES_VIEW} = scores_objects(OFFLINE)
{VECTOR_PUSH}, {VECTOR_VIEW} = vector_objects(OFFLINE)
{ENCODING_PUSH}, {ENCODING_VIEW} = encoding_objects(OFFLINE)
'''
