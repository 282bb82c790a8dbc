"""The scorer's online lookup: a batch of user ids → the model's external inputs (or each
source's columns) + presence masks.

Why it is fast (docs/features.md has the figures): one precomputed vector per user holds every
packed source, read in Feast's own storage layout with one query on SQLite (the keys as a
``VALUES`` table joined to the view's) or one round trip of pipelined ``HGET``s on Redis
(features/redis_pipe.py); entity keys are built directly in Feast's v3 layout; the batch is parsed
with numpy gathers (features/vector.py) and shaped straight into model arrays
(features/model_inputs.py). Without the vector view, the per-source views are read instead
(one ``UNION ALL`` query, or one pipelined round of ``HMGET``s) with the same answers.

Unknown users, missing sources and rows older than the view's TTL come back with
``present = False``; an unreachable store raises :class:`FeatureStoreUnavailable`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from feast import FeatureStore

from features import vector
from features.keys import KEY_PREFIXES, entity_key_bytes, key_prefix
from features.model_inputs import InputShaper
from features.online_redis import RedisReader
from features.online_sqlite import SqliteReader
from features.packing import unpack
from features.repo import ENCODING_VIEW, VECTOR_VIEW
from features.store import registered_layouts
from lantern.errors import ConfigError
from model.encoding import FeatureSpec, SourceArrays, shape_sources
from model.materialized import UserEncoding, read_many

log = logging.getLogger(__name__)


@dataclass
class SourceRows:
    table: pa.Table  # the source's own columns, one row per requested user
    present: np.ndarray  # (N,) bool


class OnlineLookup:
    def __init__(self, store: FeatureStore, clock=time.time, use_vector: bool | None = None,
                 use_encodings: bool = True):
        from feast.infra.online_stores.sqlite import _table_id

        self.store, self.clock = store, clock
        self.config = store.config
        self.layouts = registered_layouts(store)
        views = {x.name: store.get_feature_view(x.name) for x in self.layouts}  # registry read once
        self.ttl_s = {n: v.ttl.total_seconds() or float("inf") for n, v in views.items()}
        self.tables = {n: _table_id(self.config.project, v) for n, v in views.items()}
        self.version = self.config.entity_key_serialization_version
        self.redis = type(self.config.online_store).__name__.startswith("Redis")
        names = {v.name for v in store.list_feature_views()}
        self.use_vector = VECTOR_VIEW in names if use_vector is None else use_vector
        vector_table = _table_id(self.config.project, store.get_feature_view(VECTOR_VIEW)) if self.use_vector else ""
        self.use_encodings = use_encodings and ENCODING_VIEW in names
        encoding_table = (_table_id(self.config.project, store.get_feature_view(ENCODING_VIEW))
                          if self.use_encodings else "")
        # the store's own reads: per-view rows, precomputed vectors and encodings, on Redis or SQLite
        self.reader = (RedisReader(self.config, self.layouts) if self.redis else
                       SqliteReader(self.config, self.layouts, self.tables, vector_table, encoding_table))
        self.refused_encodings = 0  # stored encodings of another model version, refused so far
        self._warned: set[str] = set()
        self._shapers: dict[int, tuple[FeatureSpec, InputShaper]] = {}

    @classmethod
    def of(cls, cfg) -> OnlineLookup:
        """The lookup a scorer uses for a :class:`FeatureStoreConfig`."""
        from features.store import open_store

        return cls(open_store(cfg), use_encodings=cfg.encodings)

    # ---- shared ------------------------------------------------------------------------------
    def entity_keys(self, user_ids: list[str]) -> list[bytes]:
        if self.version != 3:
            return [entity_key_bytes(u, self.version) for u in user_ids]
        keys, prefixes = [], KEY_PREFIXES
        for user in user_ids:  # the hot loop of a lookup: one dict hit and one concatenation per user
            raw = user.encode()
            prefix = prefixes.get(len(raw)) or key_prefix(len(raw))
            keys.append(prefix + raw)
        return keys

    def lookup(self, user_ids: list[str]) -> dict[str, SourceRows]:
        """Every source's columns for ``user_ids``, in order (repeats allowed), and presence."""
        unique, take = _unique(user_ids)
        if self.use_vector:
            rows = {name: SourceRows(table, present)
                    for name, (table, present) in vector.to_tables(self._parse(unique)).items()}
        else:
            rows = self._lookup_views(unique)
        if take is None:
            return rows
        return {n: SourceRows(r.table.take(pa.array(take)), r.present[take]) for n, r in rows.items()}

    def model_inputs(self, user_ids: list[str], spec: FeatureSpec) -> dict[str, SourceArrays]:
        """What the scorer calls: the model's external inputs for ``user_ids`` (repeats allowed),
        one :class:`SourceArrays` per source of ``spec``, presence included. From the vectors
        they are shaped without building columns (features/model_inputs.py)."""
        unique, take = _unique(user_ids)
        if self.use_vector:
            arrays = self._shaper(spec).shape(self._parse(unique))
        else:
            arrays = shape_sources(spec, {n: (r.table, r.present) for n, r in self._lookup_views(unique).items()},
                                   len(unique))
        return arrays if take is None else {n: a.take(take) for n, a in arrays.items()}

    def rows_to_encode(self, user_ids: list[str], spec: FeatureSpec) -> tuple[dict[str, SourceArrays], np.ndarray]:
        """What `lantern features encode` encodes: every user's stored rows whatever their age, and
        each row's event time, (N, S) in ``spec``'s source order, NaN = no row (the TTL is applied
        when the encoding is read). Needs the precomputed vectors."""
        if not self.use_vector:
            raise ConfigError("the online store has no precomputed vectors: run `lantern features materialize`")
        p = self._parse(user_ids, now=np.inf, ttl_s={})
        at = {x.name: i for i, x in enumerate(self.layouts)}
        times = np.full((len(user_ids), len(spec.sources)), np.nan)
        for j, s in enumerate(spec.sources):
            if s.name in at:
                times[:, j] = p.stamps[:, at[s.name]]
        return self._shaper(spec).shape(p), times

    def stored_encodings(self, user_ids: list[str], spec: FeatureSpec,
                         model_version: str) -> list[UserEncoding | None] | None:
        """Each user's external encoding stored for ``model_version`` (`lantern features encode`),
        sources past their view's TTL dropped; None for a user with none, or with another version's
        (refused, counted in ``refused_encodings``). None for all when the repo has no encoding view."""
        if not self.use_encodings:
            return None
        ttl = np.array([self.ttl_s.get(s.name, np.inf) for s in spec.sources])
        blobs = self.reader.read_encodings(self.entity_keys(user_ids))
        out, refused = read_many(blobs, model_version, self.clock(), ttl, wrapped=True)
        if refused:
            if model_version not in self._warned:  # once per served version
                self._warned.add(model_version)
                log.warning("stored external encodings of model %r refused (serving %r): those users are "
                            "encoded per event until `lantern features encode` runs", refused[0], model_version)
            self.refused_encodings += len(refused)
        return out

    def _shaper(self, spec: FeatureSpec) -> InputShaper:
        cached = self._shapers.get(id(spec))
        if cached is None or cached[0] is not spec:
            cached = self._shapers[id(spec)] = (spec, InputShaper(spec, self.layouts))
        return cached[1]

    def _parse(self, user_ids: list[str], now: float | None = None, ttl_s: dict | None = None) -> vector.ParsedBatch:
        keys = self.entity_keys(user_ids)
        now = self.clock() if now is None else now
        vectors = self.reader.read_vectors(keys)
        try:
            return vector.parse(self.layouts, vectors, now, self.ttl_s if ttl_s is None else ttl_s, wrapped=True)
        except ValueError as exc:  # not lantern's vectors, or another format: the store needs materializing
            raise ConfigError(f"the online store's precomputed vectors cannot be read: {exc}") from exc

    def _lookup_views(self, user_ids: list[str]) -> dict[str, SourceRows]:
        now = self.clock()
        out = {}
        for name, (table, stamps) in self.lookup_views_raw(self.entity_keys(user_ids)).items():
            fresh = np.array([ts is not None and now - ts <= self.ttl_s[name] for ts in stamps], bool)
            out[name] = SourceRows(table, fresh)
        return out

    def lookup_views_raw(self, keys: list[bytes]):
        """Per source, read from its own view: (columns, event times) — TTL not applied."""
        raw = self.reader.read_views(keys)
        out = {}
        for layout in self.layouts:
            values, stamps = raw[layout.name]
            out[layout.name] = (unpack(layout, values), stamps)
        return out

    def cover_vectors(self) -> None:
        """Make vector reads cheap where the store needs help (SQLite: a covering index)."""
        if self.use_vector and not self.redis:
            self.reader.cover_vectors()


def _unique(user_ids: list[str]) -> tuple[list[str], np.ndarray | None]:
    """Each user once (read once), and where each request position takes its row (None: no repeats)."""
    unique = list(dict.fromkeys(user_ids))
    if len(unique) == len(user_ids):
        return user_ids, None
    position = {u: i for i, u in enumerate(unique)}
    return unique, np.fromiter((position[u] for u in user_ids), np.int64, len(user_ids))
