"""The placebo of a dataset: the same survey and the same external rows, but every user's external
values belong to another user, so the context carries no information about the answers.

Per source, the feature columns are permuted across its rows (one permutation per source); each
row keeps its ``user_id`` and ``event_timestamp``, so who has which source, and when, is exactly
as before (point-in-time joins find the same rows; only what they hold is someone else's). The
gate's promise says LANTERN then scores as the survey alone does (`lantern bench quality --placebo`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa

from lantern.dataset import schema
from lantern.dataset.io import Dataset


def placebo(ds: Dataset, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    external = {}
    for name, table in ds.external.items():
        perm = pa.array(rng.permutation(table.num_rows))
        keys = set(schema.EXTERNAL_KEYS.names)
        external[name] = pa.table({c: table.column(c) if c in keys else table.column(c).take(perm)
                                   for c in table.column_names})
    return replace(ds, external=external)
