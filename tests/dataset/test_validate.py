"""Every contract violation is rejected with an error naming file, row and field."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lantern.dataset.io import load_dataset, save_dataset
from lantern.dataset.questionnaire import Questionnaire
from lantern.dataset.validate import validate_external, validate_sessions
from lantern.errors import DataValidationError


def _with_answers(ds, row, answers):
    col = ds.sessions.column("answers").to_pylist()
    col[row] = answers
    return ds.sessions.set_column(3, "answers", pa.array(col, ds.sessions.schema.field("answers").type))


def _first_single(q):
    return next(x for x in q.questions if x.kind == "single" and x.condition is None)


@pytest.mark.parametrize(
    "case, field_part, reason_part",
    [
        ("unknown_question", "question_id", "unknown question id"),
        ("unknown_option", "option_ids", "unknown option ids"),
        ("two_options_single", "option_ids", "single-select"),
        ("routing_false", "question_id", "presented only if"),
        ("answered_twice", "question_id", "answered twice"),
    ],
)
def test_bad_answers_are_rejected_with_row_and_field(small_ds, case, field_part, reason_part):
    q = small_ds.questionnaire
    single = _first_single(q)
    routed = next(x for x in q.questions if x.condition)
    parent = q.by_id[routed.condition.question_id]
    not_routing = next(o.id for o in parent.options if o.id not in routed.condition.option_ids)
    answers = {
        "unknown_question": [{"question_id": "nope", "option_ids": []}],
        "unknown_option": [{"question_id": single.id, "option_ids": ["o99"]}],
        "two_options_single": [{"question_id": single.id, "option_ids": ["o1", "o2"]}],
        "routing_false": [{"question_id": parent.id, "option_ids": [not_routing]},
                          {"question_id": routed.id, "option_ids": [routed.options[0].id]}],
        "answered_twice": [{"question_id": single.id, "option_ids": ["o1"]},
                           {"question_id": single.id, "option_ids": ["o2"]}],
    }[case]
    table = _with_answers(small_ds, 17, answers)
    with pytest.raises(DataValidationError) as err:
        validate_sessions(table, q, "sessions.parquet")
    e = err.value
    assert e.file == "sessions.parquet" and e.row == 17 and field_part in e.field
    assert reason_part in str(e) and "row 17" in str(e)


def test_duplicate_session_ids_are_rejected(small_ds):
    ids = small_ds.sessions.column("session_id").to_pylist()
    ids[40] = ids[3]
    table = small_ds.sessions.set_column(0, "session_id", pa.array(ids))
    with pytest.raises(DataValidationError, match="duplicate session id") as err:
        validate_sessions(table, small_ds.questionnaire)
    assert err.value.row == 40 and err.value.field == "session_id"


def test_schema_mismatch_names_the_field(small_ds):
    bad_type = small_ds.sessions.set_column(2, "completed_at", pa.array(["yesterday"] * small_ds.sessions.num_rows))
    with pytest.raises(DataValidationError, match="does not match") as err:
        validate_sessions(bad_type, small_ds.questionnaire)
    assert err.value.field == "completed_at"
    with pytest.raises(DataValidationError, match="missing column") as err:
        validate_sessions(small_ds.sessions.drop_columns(["user_id"]), small_ds.questionnaire)
    assert err.value.field == "user_id"


def test_external_sources_are_checked(small_ds):
    demo = small_ds.external["demographics"]
    with pytest.raises(DataValidationError, match="missing column") as err:
        validate_external(demo.drop_columns(["event_timestamp"]), "external/demographics.parquet")
    assert err.value.field == "event_timestamp"
    weird = demo.append_column("blob", pa.array([{"a": 1}] * demo.num_rows))
    with pytest.raises(DataValidationError, match="unsupported type") as err:
        validate_external(weird, "external/demographics.parquet")
    assert err.value.field == "blob"


def test_questionnaire_errors_name_the_field(tmp_path, small_ds):
    raw = small_ds.questionnaire.model_dump(mode="json")
    raw["questions"][3]["kind"] = "ranking"
    (tmp_path / "questionnaire.json").write_text(json.dumps(raw))
    with pytest.raises(DataValidationError) as err:
        Questionnaire.load(tmp_path / "questionnaire.json")
    assert "questions.3.kind" in err.value.field
    raw = small_ds.questionnaire.model_dump(mode="json")
    raw["questions"][0]["condition"] = {"question_id": raw["questions"][5]["id"], "option_ids": ["o1"]}
    (tmp_path / "questionnaire.json").write_text(json.dumps(raw))
    with pytest.raises(DataValidationError, match="not an earlier question"):
        Questionnaire.load(tmp_path / "questionnaire.json")


def test_load_dataset_reports_the_bad_file(tmp_path, small_ds):
    save_dataset(small_ds, tmp_path)
    pq.write_table(_with_answers(small_ds, 5, [{"question_id": "zzz", "option_ids": []}]), tmp_path / "sessions.parquet")
    with pytest.raises(DataValidationError) as err:
        load_dataset(tmp_path)
    assert err.value.file.endswith("sessions.parquet") and err.value.row == 5
    with pytest.raises(DataValidationError, match="not found"):
        load_dataset(tmp_path / "absent")


def test_response_keys_are_stable_and_complete(small_ds):
    q = small_ds.questionnaire
    assert len(q.response_keys) == sum(len(x.options) for x in q.questions)
    assert q.response_keys[0] == f"{q.questions[0].id}={q.questions[0].options[0].id}"
    assert Questionnaire.model_validate(q.model_dump(mode="json")).response_keys == q.response_keys
