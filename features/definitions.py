"""The definitions `feast apply` reads. No I/O: the layouts are a literal in layout.py, written
by `lantern features apply --data DIR` (Feast puts the repo directory on sys.path)."""

from layout import LAYOUTS, TTL_DAYS

from features.packing import SourceLayout
from features.repo import build_objects

globals().update(build_objects([SourceLayout.from_dict(d) for d in LAYOUTS], TTL_DAYS))
