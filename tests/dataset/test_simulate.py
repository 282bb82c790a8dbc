import numpy as np
import pyarrow.compute as pc

from lantern.dataset.io import load_dataset
from lantern.dataset.simulate import SimConfig, simulate
from lantern.dataset.validate import validate_sessions


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = (simulate(SimConfig(users=300, seed=s)) for s in (3, 3, 4))
    assert a.sessions.equals(b.sessions)
    for k in a.external:  # repr comparison: Arrow's equals() treats NaN != NaN
        assert repr(a.external[k].to_pylist()) == repr(b.external[k].to_pylist()), k
    assert not a.sessions.column("answers").equals(c.sessions.column("answers"))


def test_questionnaire_shape_and_rare_routing(small_ds):
    q = small_ds.questionnaire
    assert len(q.questions) >= 40 and q.n_keys >= 200
    assert {x.kind for x in q.questions} == {"single", "multi"}
    answers = small_ds.sessions.column("answers").to_pylist()
    reach = {x.id: 0 for x in q.questions}
    for session in answers:
        for a in session:
            reach[a["question_id"]] += 1
    rates = {k: v / len(answers) for k, v in reach.items()}
    conditional = [x.id for x in q.questions if x.condition]
    assert conditional and all(rates[c] < 0.2 for c in conditional)
    lengths = np.array([len(s) for s in answers])
    assert lengths.min() < lengths.max() <= len(q.questions)  # fatigue: sessions stop early
    skipped = sum(1 for s in answers for a in s if not a["option_ids"])
    assert skipped > 0


def test_simulated_data_passes_the_validator(small_ds, small_dir):
    validate_sessions(small_ds.sessions, small_ds.questionnaire)
    ds = load_dataset(small_dir)
    assert ds.sessions.num_rows == small_ds.sessions.num_rows


def test_every_source_misses_at_least_ten_percent_of_users(small_ds):
    users = set(small_ds.sessions.column("user_id").to_pylist())
    for name, table in small_ds.external.items():
        covered = len(set(table.column("user_id").to_pylist()) & users) / len(users)
        assert covered <= 0.9, name
        assert pc.min(table.column("event_timestamp")).as_py() is not None


def test_irrelevant_sources_add_noise_and_leave_the_informative_data_as_it_was():
    from lantern.dataset.simulate import SimConfig, simulate

    plain, noisy = simulate(SimConfig(users=400, seed=3)), simulate(SimConfig(users=400, seed=3, irrelevant_sources=2))
    assert noisy.sessions.equals(plain.sessions)
    for name, table in plain.external.items():  # byte for byte (NaNs compared as NaNs)
        assert noisy.external[name].to_pandas().equals(table.to_pandas()), name
    assert sorted(set(noisy.external) - set(plain.external)) == ["noise1", "noise2"]
    extra = noisy.external["noise1"]
    assert {"metric_0", "flag_0", "event_ids"} <= set(extra.column_names) and 0.7 < extra.num_rows / 400 < 0.95


def test_the_placebo_gives_each_users_values_to_another_user():
    from lantern.dataset.placebo import placebo
    from lantern.dataset.simulate import SimConfig, simulate

    ds = simulate(SimConfig(users=400, seed=3))
    shuffled = placebo(ds, seed=1)
    assert shuffled.sessions.equals(ds.sessions)
    for name, table in ds.external.items():
        other = shuffled.external[name]
        for key in ("user_id", "event_timestamp"):  # who has the source, and when: unchanged
            assert other.column(key).equals(table.column(key))
        features = [c for c in table.column_names if c not in ("user_id", "event_timestamp")]
        before = [repr(r) for r in table.select(features).to_pylist()]
        after = [repr(r) for r in other.select(features).to_pylist()]
        assert sorted(before) == sorted(after)  # the same rows of values ...
        assert sum(a == b for a, b in zip(before, after)) < 0.05 * len(before)  # ... held by other users
