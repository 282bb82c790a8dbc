import numpy as np
import pyarrow as pa

from model.encoding import FeatureSpec, encode_surveys, point_in_time_rows, shape_source

T0 = pa.scalar(1_700_000_000_000_000, pa.timestamp("us", tz="UTC")).value


def _decoded(q, i, sel):
    """A token back to the contract: null = skipped, [] = "none of these", else option ids."""
    if not sel.any():
        return None
    if sel[0] > q.n_keys:
        assert sel[0] == q.n_keys + i and q.questions[i - 1].kind == "multi"  # that question's own marker
        return []
    return sorted(q.response_keys[k - 1].split("=")[1] for k in sel if k)


def test_survey_encoding_round_trips_answers_skips_and_none_of_these(small_ds):
    q = small_ds.questionnaire
    arrays = encode_surveys(q, small_ds.sessions.column("answers"))
    answers = small_ds.sessions.column("answers").to_pylist()
    kinds = {"skipped": 0, "none": 0}
    for row, session in enumerate(answers[:400]):
        tokens = [(q.questions[i - 1].id, _decoded(q, i, sel)) for i, sel in zip(arrays.q_idx[row], arrays.sel[row]) if i]
        assert tokens == [(a["question_id"], None if a["option_ids"] is None else sorted(a["option_ids"]))
                          for a in session]
        assert arrays.y[row].sum() == sum(len(a["option_ids"] or ()) for a in session)
        kinds["skipped"] += sum(a["option_ids"] is None for a in session)
        kinds["none"] += sum(a["option_ids"] == [] for a in session)
    assert kinds["skipped"] > 0 and kinds["none"] > 0  # the simulator writes both kinds


def _ts(*seconds):
    return pa.array([T0 + s * 1_000_000 for s in seconds], pa.timestamp("us", tz="UTC"))


def test_point_in_time_rows_never_use_later_rows():
    sessions = pa.table({"user_id": ["a", "a", "b", "c"], "completed_at": _ts(100, 300, 100, 100)})
    source = pa.table({"user_id": ["a", "a", "b", "c"], "event_timestamp": _ts(50, 200, 150, 100)})
    assert point_in_time_rows(sessions, source).tolist() == [0, 1, -1, 3]
    assert point_in_time_rows(sessions, source, ttl_s=60).tolist() == [0, -1, -1, 3]


def test_source_shaping_masks_missing_users_values_and_unknown_categories():
    table = pa.table({
        "user_id": ["a", "b", "c"], "event_timestamp": _ts(0, 0, 0),
        "age": [30.0, None, 50.0], "region": ["x", "y", None],
        "cats": pa.array([[1, 2, 3], [], [4]], pa.list_(pa.int32())),
        "amt": pa.array([[1.0, 2.0, 3.0], [], [9.0]], pa.list_(pa.float32())),
    })
    spec = FeatureSpec.fit({"s": table}).sources[0]
    assert spec.numeric == ("age",) and spec.categorical == ("region",) and spec.seq_category == "cats"
    other = table.set_column(3, "region", pa.array(["x", "zzz", "y"]))
    arrays = shape_source(spec, other.select(list(spec.columns)), np.array([True, True, False]))
    assert arrays.present.tolist() == [True, True, False]
    assert arrays.num_missing[:, 0].tolist() == [False, True, True]
    assert arrays.cat[1, 0] == 0 and arrays.cat[0, 0] > 0 and arrays.cat[2, 0] == 0  # unknown / absent
    assert arrays.seq_mask.sum(1).tolist() == [3, 0, 0]
    assert not arrays.seq_val[~arrays.seq_mask].any()
