"""The per-user vector's binary layout: encode → batch decode, every kind of column (pure, no store)."""

import pytest
from feast.protos.feast.types.Value_pb2 import Value

from features import vector
from features.model_inputs import InputShaper
from features.packing import SourceLayout
from model.encoding import FeatureSpec, SourceSpec, shape_sources
from tests.features.conftest import assert_same_inputs

PROFILE = SourceLayout("profile", ("age", "score"), ("region", "plan"), ())
CLICKS = SourceLayout("clicks", (), ("browser",), (("page", "string"), ("item", "int"), ("dwell", "float")))
LAYOUTS = [PROFILE, CLICKS]
NOW = 1_000_000.0

USERS = {  # user → (rows per source, event time per source)
    "a": ({"profile": {"age": 31.0, "score": None, "region": "north", "plan": ""},
           "clicks": {"browser": "ff", "page": ["home", "cart", "pay"], "item": [4, 5, 6], "dwell": [1.5, 2.0, 0.25]}},
          {"profile": NOW - 10, "clicks": NOW - 5}),
    "b": ({"clicks": {"browser": "", "page": [], "item": [], "dwell": []}}, {"profile": None, "clicks": NOW - 1}),
    "c": ({"profile": {"age": 50.0, "score": 2.0, "region": "south", "plan": "pro"},
           "clicks": {"browser": "é-ü", "page": ["ünï"], "item": [9], "dwell": [7.0]}},
          {"profile": NOW - 10, "clicks": NOW - 500}),  # clicks older than its TTL below
}


def _vectors(order, wrapped):
    out = []
    for u in order:
        if u is None:
            out.append(None)
            continue
        blob = vector.encode(LAYOUTS, *USERS[u])
        out.append(Value(bytes_val=blob).SerializeToString() if wrapped else blob)
    return out


@pytest.mark.parametrize("wrapped", [False, True])
def test_decode_round_trips_every_column_kind_with_presence(wrapped):
    order = ["c", None, "a", "b", "a"]
    got = vector.to_tables(vector.parse(LAYOUTS, _vectors(order, wrapped), NOW,
                                                  {"profile": 3600, "clicks": 100}, wrapped=wrapped))
    profile, present = got["profile"]
    assert present.tolist() == [True, False, True, False, True]
    assert profile.to_pylist() == [
        {"age": 50.0, "score": 2.0, "region": "south", "plan": "pro"},
        {"age": None, "score": None, "region": None, "plan": None},
        {"age": 31.0, "score": None, "region": "north", "plan": None},  # "" is a missing category
        {"age": None, "score": None, "region": None, "plan": None},
        {"age": 31.0, "score": None, "region": "north", "plan": None}]
    clicks, present = got["clicks"]
    assert present.tolist() == [False, False, True, True, True]  # c's row expired, the unknown user absent
    empty = {"browser": None, "page": [], "item": [], "dwell": []}
    a = {"browser": "ff", "page": ["home", "cart", "pay"], "item": [4, 5, 6], "dwell": [1.5, 2.0, 0.25]}
    assert clicks.to_pylist() == [empty, empty, a, empty, a]
    assert str(clicks.schema.field("item").type) == "list<item: int64>"
    assert str(clicks.schema.field("dwell").type) == "list<item: float>"


def test_decode_of_only_unknown_users_is_all_absent():
    got = vector.to_tables(vector.parse(LAYOUTS, [None, None], NOW))
    assert not got["clicks"][1].any() and got["clicks"][0].num_rows == 2


def test_encode_rejects_the_reserved_separator():
    with pytest.raises(ValueError, match="separator"):
        vector.encode([PROFILE], {"profile": {"region": "a\x1fb"}}, {"profile": NOW})


def _spec(seq_category: str, seq_vocab: tuple[str, ...]) -> FeatureSpec:
    """Columns in another order than the layout's, vocabularies that miss some values (and list a
    word no user has), sequences longer than ``max_len``."""
    return FeatureSpec((
        SourceSpec("profile", numeric=("score", "age"), mean=(0.5, 1.0), std=(2.0, 1.5),
                   categorical=("plan", "region"), vocab=(("pro", "basic"), ("south", "north", "west"))),
        SourceSpec("clicks", categorical=("browser",), vocab=(("é-ü", "ff"),), seq_category=seq_category,
                   seq_vocab=seq_vocab, seq_values=("dwell",), seq_mean=(0.1,), seq_std=(1.2,), max_len=2),
        SourceSpec("absent_from_repo", numeric=("x",), mean=(0.0,), std=(1.0,))))


@pytest.mark.parametrize("seq_category, seq_vocab", [("page", ("cart", "ünï", "home", "nowhere")),
                                                     ("item", ("6", "9", "4", "77"))])
def test_model_inputs_from_vectors_equal_the_columns_shaped_by_the_spec(seq_category, seq_vocab):
    """features/model_inputs.py matches categories and string sequences by value hash, never by
    string; it must give exactly what model.encoding.shape_source gives from the columns."""
    spec = _spec(seq_category, seq_vocab)
    order = ["c", None, "a", "b", "a"]
    parsed = vector.parse(LAYOUTS, _vectors(order, True), NOW, {"profile": 3600, "clicks": 100}, wrapped=True)
    ours = InputShaper(spec, LAYOUTS).shape(parsed)
    theirs = shape_sources(spec, vector.to_tables(parsed), len(order))
    assert_same_inputs(ours, theirs)
    assert ours["profile"].cat.tolist() == [[1, 1], [0, 0], [0, 2], [0, 0], [0, 2]]  # "" and unknown → 0
    assert ours["clicks"].seq_mask.sum() == 4  # a's last 2 of 3, twice; c expired


def test_value_hash_keeps_zero_for_missing():
    assert vector.value_hash("") == 0 and vector.value_hash("north") not in (0, vector.value_hash("south"))


def test_vectors_of_another_format_are_refused():
    stale = b"\x01" + vector.encode(LAYOUTS, *USERS["a"])[1:]
    with pytest.raises(ValueError, match="lantern features materialize"):
        vector.parse(LAYOUTS, [stale], NOW)
