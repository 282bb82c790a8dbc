"""A latent-trait population answering an adaptive survey, plus noisy external sources.

The story the generator tells (docs/data.md has the long version):

* every user has 6 *core* traits (attitudes); most survey questions measure one or two of them;
* every user has, for each of 5 *niche domains* (pets, investing, travel, gaming, parenting), a
  propensity, a sub-type (dog / cat / ...) and an intensity. Only users whose gate answer shows
  involvement see that domain's follow-up questions — the rare, conditional attributes;
* sessions stop early (a per-user fatigue hazard) and presented questions are sometimes skipped;
* external sources are generated from the same latents with noise, irrelevant columns and missing
  users: demographics, engagement aggregates, and a recent purchase sequence whose categories
  reflect domain involvement and sub-type — the external signal about what rare questions measure.

Deterministic per seed; everything is vectorised so 35K users take seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from lantern.dataset import schema
from lantern.dataset.io import Dataset
from lantern.dataset.questionnaire import Condition, Option, Question, Questionnaire

N_CORE = 6
DOMAINS = ("pets", "investing", "travel", "gaming", "parenting")
SUBTYPES = 4
GENERIC_CATEGORIES = 20
SPAN_S = 180 * 86400  # first sessions over the first half, repeat sessions 7–60 days after


@dataclass(frozen=True)
class SimConfig:
    users: int = 35_000
    seed: int = 0
    core_questions: int = 30
    noise: float = 1.0  # scales noise in external features
    missing: float = 1.0  # scales missing users / values in external sources
    fatigue: float = 1.0  # scales the early-stop hazard
    skip_rate: float = 0.03  # a presented question left unanswered
    repeat_rate: float = 0.1  # users with a second session
    start: str = "2026-01-01"  # ISO date of the first completions; external rows are 1–30 days older
    # whole sources that carry nothing about anyone's answers (`noise1`, ...: numeric, categorical
    # and sequence columns drawn apart from the latents), beside the three informative ones
    irrelevant_sources: int = 0

    def __post_init__(self):
        from datetime import date

        try:
            date.fromisoformat(self.start)
        except ValueError:
            raise ValueError(f"start must be an ISO date like 2026-01-01, got {self.start!r}") from None


@dataclass
class _Latents:
    core: np.ndarray  # (U, 6)
    propensity: np.ndarray  # (U, 5)
    member: np.ndarray  # (U, 5) bool
    subtype: np.ndarray  # (U, 5) int
    intensity: np.ndarray  # (U, 5)
    # the world's parameters (the same for every user), for the evidence-given oracle
    tie: np.ndarray | None = None  # (5, 6, 4) core traits → sub-type logits per domain
    generic_w: np.ndarray | None = None  # (6, 20) core traits → generic purchase category logits


def _latents(rng: np.random.Generator, users: int) -> _Latents:
    core = rng.standard_normal((users, N_CORE))
    propensity = 0.5 * core[:, : len(DOMAINS)] + np.sqrt(0.75) * rng.standard_normal((users, len(DOMAINS)))
    member = propensity > 1.0
    tie = rng.standard_normal((len(DOMAINS), N_CORE, SUBTYPES)) * 0.5
    logits = np.einsum("uc,dcs->uds", core, tie)
    subtype = np.argmax(logits + rng.gumbel(size=logits.shape), axis=-1)
    intensity = rng.standard_normal((users, len(DOMAINS))) + 0.3 * propensity
    return _Latents(core, propensity, member, subtype, intensity, tie)


# ---- the questionnaire -----------------------------------------------------------------------
@dataclass(frozen=True)
class _Item:
    """How one question's answers are generated; ``question`` is its contract form."""

    question: Question
    rule: str  # likert | categorical | multi | gate | subtype | spend | activities | nested
    loading: np.ndarray | None = None  # core-trait weights (likert) or matrices (categorical/multi)
    domain: int = -1


def _options(n: int) -> tuple[Option, ...]:
    return tuple(Option(id=f"o{i + 1}", text=f"option {i + 1}") for i in range(n))


def _core_items(rng: np.random.Generator, n: int, first: int) -> list[_Item]:
    items = []
    for i in range(n):
        qid, rule = f"q{first + i:02d}", ("likert", "categorical", "multi")[i % 3]
        if rule == "likert":
            w = np.zeros(N_CORE)
            w[rng.choice(N_CORE, 2, replace=False)] = rng.uniform(0.6, 1.4, 2) * rng.choice([-1, 1], 2)
            q = Question(id=qid, text=f"How much do you agree ({qid})?", kind="single", options=_options(5))
        elif rule == "categorical":
            k = int(rng.integers(4, 7))
            w = rng.standard_normal((N_CORE, k)) * 0.9
            q = Question(id=qid, text=f"Which best describes you ({qid})?", kind="single", options=_options(k))
        else:
            k = int(rng.integers(5, 9))
            w = rng.standard_normal((N_CORE, k)) * 0.9
            q = Question(id=qid, text=f"Which of these apply ({qid})?", kind="multi", options=_options(k))
        items.append(_Item(q, rule, w))
    return items


def _domain_items(rng: np.random.Generator, d: int, name: str) -> list[_Item]:
    gate = Question(id=f"{name}_gate", text=f"How involved are you in {name}?", kind="single", options=_options(4))
    involved = Condition(question_id=gate.id, option_ids=("o4",))
    sub = Question(id=f"{name}_type", text=f"Which kind of {name}?", kind="single",
                   options=_options(SUBTYPES), condition=involved)
    acts = Question(id=f"{name}_activities", text=f"What do you do for {name}?", kind="multi",
                    options=_options(6), condition=involved)
    spend = Question(id=f"{name}_spend", text=f"How much do you spend on {name}?", kind="single",
                     options=_options(5), condition=involved)
    items = [_Item(gate, "gate", domain=d), _Item(sub, "subtype", domain=d),
             _Item(acts, "activities", rng.standard_normal((SUBTYPES, 6)) * 1.5, domain=d),
             _Item(spend, "spend", domain=d)]
    if d == 0:  # a second routing level: rarer still
        nested = Question(id=f"{name}_detail", text=f"Tell us more about your {name}", kind="single",
                          options=_options(4), condition=Condition(question_id=sub.id, option_ids=("o1", "o2")))
        items.append(_Item(nested, "nested", rng.standard_normal((SUBTYPES, 4)) * 1.5, domain=d))
    return items


def _items(rng: np.random.Generator, cfg: SimConfig) -> list[_Item]:
    core = _core_items(rng, cfg.core_questions, 1)
    domains = [_domain_items(rng, d, name) for d, name in enumerate(DOMAINS)]
    step = max(1, len(core) // (len(domains) + 1))
    items: list[_Item] = []
    for i in range(len(domains) + 1):
        items += core[i * step : (i + 1) * step if i < len(domains) else None]
        if i < len(domains):
            items += domains[i]
    return items


# ---- answering ---------------------------------------------------------------------------------
def _sample_cat(rng: np.random.Generator, logits: np.ndarray) -> np.ndarray:
    return np.argmax(logits + rng.gumbel(size=logits.shape), axis=-1)


def _answer(rng: np.random.Generator, item: _Item, lat: _Latents, u: np.ndarray) -> np.ndarray:
    """Boolean (S, n_options) selection for respondents ``u`` (user index per session)."""
    n, k = len(u), len(item.question.options)
    core, d = lat.core[u], item.domain
    if item.rule == "likert":
        score = core @ item.loading + 0.6 * rng.standard_normal(n)
        choice = np.digitize(score, [-1.2, -0.4, 0.4, 1.2])
    elif item.rule == "categorical":
        choice = _sample_cat(rng, core @ item.loading)
    elif item.rule == "multi":
        return rng.random((n, k)) < 1 / (1 + np.exp(-(core @ item.loading - 0.8)))
    elif item.rule == "gate":
        choice = np.digitize(lat.propensity[u, d] + 0.25 * rng.standard_normal(n), [-0.3, 0.4, 1.0])
        choice = np.where(lat.member[u, d], 3, np.minimum(choice, 2))
    elif item.rule == "subtype":
        truthful = rng.random(n) < 0.85
        choice = np.where(truthful, lat.subtype[u, d], rng.integers(0, k, n))
    elif item.rule == "spend":
        choice = np.digitize(lat.intensity[u, d] + 0.5 * rng.standard_normal(n), [-1.0, -0.3, 0.3, 1.0])
    elif item.rule == "activities":
        logits = item.loading[lat.subtype[u, d]] + 0.8 * lat.intensity[u, d, None] - 1.0
        return rng.random((n, k)) < 1 / (1 + np.exp(-logits))
    else:  # nested
        choice = _sample_cat(rng, item.loading[lat.subtype[u, d]] + lat.intensity[u, d, None])
    out = np.zeros((n, k), dtype=bool)
    out[np.arange(n), choice] = True
    return out


@dataclass
class _Unasked:
    """Per item: the answer every respondent would give (before routing and skips), and whether
    the survey would have presented it but the respondent had stopped before it (fatigue)."""

    answers: list[np.ndarray]  # (S, k) bool per item
    stopped: list[np.ndarray]  # (S,) bool per item: routed in (by would-be answers), never reached


def _survey(rng: np.random.Generator, items: list[_Item], lat: _Latents, u: np.ndarray, cfg: SimConfig,
            unasked: _Unasked | None = None):
    """Per item: (presented (S,), selected (S, k), skipped (S,)). Presented = routed in, not yet
    stopped; a multi-select presented, not skipped and with nothing selected was answered "none".
    ``unasked`` (optional) collects every would-be answer and the items never reached."""
    n = len(u)
    hazard = cfg.fatigue * rng.gamma(2.0, 0.006, n)  # per-question stop probability grows with position
    active = np.ones(n, dtype=bool)
    answers: dict[str, np.ndarray] = {}
    would: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # item → (routed by would-be answers, answer)
    out = []
    for pos, item in enumerate(items):
        q = item.question
        routed, would_route = np.ones(n, dtype=bool), np.ones(n, dtype=bool)
        if q.condition is not None:
            opts = [int(o[1:]) - 1 for o in q.condition.option_ids]
            routed = answers[q.condition.question_id][:, opts].any(axis=1)
            parent_route, parent_answer = would[q.condition.question_id]
            would_route = parent_route & parent_answer[:, opts].any(axis=1)
        presented = active & routed
        full = _answer(rng, item, lat, u)
        would[q.id] = (would_route, full)
        if unasked is not None:
            unasked.answers.append(full)
            unasked.stopped.append(would_route & ~active)
        selected = full & presented[:, None]
        skipped = presented & (rng.random(n) < cfg.skip_rate)
        selected[skipped] = False
        answers[q.id] = selected
        out.append((presented, selected, skipped))
        if pos >= 8:
            active &= rng.random(n) >= hazard * (1 + pos / 15)
    return out


def _answers_column(questions: list[Question], survey) -> pa.Array:
    """Build ``list<struct<question_id, option_ids>>`` from per-question boolean matrices."""
    n = len(survey[0][0])
    pair_user, pair_q, pair_skip, sel_pair_user, sel_pair_q, sel_opt = [], [], [], [], [], []
    for qi, (presented, selected, skipped) in enumerate(survey):
        users = np.flatnonzero(presented)
        pair_user.append(users)
        pair_q.append(np.full(len(users), qi))
        pair_skip.append(skipped[users])
        su, so = np.nonzero(selected)
        sel_pair_user.append(su)
        sel_pair_q.append(np.full(len(su), qi))
        sel_opt.append(so)
    pu, pq_, skip = np.concatenate(pair_user), np.concatenate(pair_q), np.concatenate(pair_skip)
    order = np.lexsort((pq_, pu))
    pu, pq_, skip = pu[order], pq_[order], skip[order]
    su, sq, so = map(np.concatenate, (sel_pair_user, sel_pair_q, sel_opt))
    sorder = np.lexsort((so, sq, su))
    su, sq, so = su[sorder], sq[sorder], so[sorder]
    n_q = len(questions)
    pair_code, sel_code = pu * n_q + pq_, su * n_q + sq
    opt_offsets = np.searchsorted(sel_code, pair_code, side="left").tolist() + [len(sel_code)]
    max_opts = max(len(q.options) for q in questions)
    opt_names = pa.array([f"o{i + 1}" for i in range(max_opts)])
    option_ids = pa.ListArray.from_arrays(pa.array(opt_offsets, pa.int32()), opt_names.take(pa.array(so)),
                                          mask=pa.array(skip))  # null: presented, skipped
    qids = pa.array([q.id for q in questions]).take(pa.array(pq_))
    struct = pa.StructArray.from_arrays([qids, option_ids], fields=list(schema.ANSWER))
    user_offsets = np.searchsorted(pu, np.arange(n + 1), side="left")
    return pa.ListArray.from_arrays(pa.array(user_offsets, pa.int32()), struct)


# ---- external sources --------------------------------------------------------------------------
def _present(rng: np.random.Generator, n: int, rate: float, cfg: SimConfig) -> np.ndarray:
    return rng.random(n) >= min(0.9, rate * cfg.missing)


def _with_nans(rng: np.random.Generator, x: np.ndarray, cfg: SimConfig) -> np.ndarray:
    x = x.astype(np.float64)
    x[rng.random(len(x)) < 0.05 * cfg.missing] = np.nan
    return x


def _demographics(rng, lat: _Latents, cfg: SimConfig) -> dict[str, np.ndarray]:
    n, z, s = len(lat.core), lat.core, cfg.noise
    region_logits = np.outer(z[:, 2], np.linspace(-1, 1, 8)) * 0.7
    return {
        "age": _with_nans(rng, np.clip(40 + 12 * (0.6 * z[:, 0] + 0.8 * s * rng.standard_normal(n)), 18, 85), cfg),
        "income_k": _with_nans(rng, np.exp(3.8 + 0.3 * z[:, 1] + 0.2 * lat.intensity[:, 1]
                                          + 0.3 * s * rng.standard_normal(n)), cfg),
        "household_size": 1 + rng.poisson(0.8 + 1.5 * lat.member[:, 4]),
        "region": np.array([f"r{i}" for i in range(8)])[_sample_cat(rng, region_logits)],
        "gender": rng.choice(np.array(["f", "m", "x"]), n, p=[0.49, 0.49, 0.02]),
        "device_os": rng.choice(np.array(["android", "ios", "web"]), n),
        "shoe_size": _with_nans(rng, rng.normal(41, 3, n), cfg),  # irrelevant
    }


def _engagement(rng, lat: _Latents, cfg: SimConfig) -> dict[str, np.ndarray]:
    n, z, s = len(lat.core), lat.core, cfg.noise
    return {
        "sessions_30d": rng.poisson(np.exp(1.5 + 0.4 * z[:, 3] + 0.3 * lat.member[:, 3])).astype(np.float64),
        "minutes_per_session": np.exp(2 + 0.3 * z[:, 4] + 0.5 * lat.member[:, 3] + 0.4 * s * rng.standard_normal(n)),
        "email_open_rate": 1 / (1 + np.exp(-(0.8 * z[:, 5] + s * rng.standard_normal(n)))),
        "push_opt_in": (rng.random(n) < 0.5).astype(np.float64),
        "support_tickets": rng.poisson(0.5, n).astype(np.float64),  # irrelevant
        "days_since_signup": rng.uniform(1, 2000, n),  # irrelevant
        "app_version": rng.choice(np.array(["5.1", "5.2", "6.0"]), n),  # irrelevant
    }


def _transactions(rng, lat: _Latents, cfg: SimConfig) -> dict[str, list]:
    n, z = len(lat.core), lat.core
    counts = np.minimum(24, 4 + rng.poisson(8, n))
    generic_w = lat.generic_w = rng.standard_normal((N_CORE, GENERIC_CATEGORIES)) * 0.6
    total = counts.sum()
    owner = np.repeat(np.arange(n), counts)
    generic = _sample_cat(rng, z[owner] @ generic_w)
    # domain purchases: involved users buy their sub-type's categories
    rate = np.where(lat.member, 0.12 + 0.05 * np.clip(lat.intensity, -1, 2), 0.01)  # (U, 5)
    pick = rng.random((total, len(DOMAINS))) < rate[owner]
    domain = np.where(pick.any(1), np.argmax(pick, 1), -1)
    noisy = rng.random(total) < 0.2 * cfg.noise
    sub = np.where(noisy, rng.integers(0, SUBTYPES, total), lat.subtype[owner, np.maximum(domain, 0)])
    category = np.where(domain >= 0, GENERIC_CATEGORIES + domain * SUBTYPES + sub, generic)
    log_amount = 3 + 0.3 * z[owner, 1] + np.where(domain >= 0, 0.3 * lat.intensity[owner, np.maximum(domain, 0)], 0)
    amount = np.round(np.exp(log_amount + 0.5 * cfg.noise * rng.standard_normal(total)), 2)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return {
        "category_ids": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(category, pa.int32())),
        "amounts": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(amount, pa.float32())),
    }


def _irrelevant(rng, n: int) -> dict:
    """A source as wide as the informative ones and as varied, about nobody's answers."""
    counts = rng.integers(0, 16, n)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return {
        **{f"metric_{j}": rng.lognormal(0, 1, n) for j in range(6)},
        **{f"flag_{j}": rng.choice(np.array([f"v{k}" for k in range(5)]), n) for j in range(2)},
        "event_ids": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                              pa.array(rng.integers(0, 30, counts.sum()), pa.int32())),
    }


def _source_table(rng, user_ids, first_seen, columns, rate, cfg) -> pa.Table:
    keep = _present(rng, len(user_ids), rate, cfg)
    stamp = first_seen - (rng.uniform(1, 30, len(user_ids)) * 86400e6).astype("timedelta64[us]")
    idx = pa.array(np.flatnonzero(keep))
    data = {"user_id": pa.array(user_ids).take(idx),
            "event_timestamp": pa.array(stamp, schema.TIMESTAMP).take(idx)}
    for name, values in columns.items():
        data[name] = (values if isinstance(values, pa.Array) else pa.array(values)).take(idx)
    return pa.table(data)


def simulate(cfg: SimConfig) -> Dataset:
    return _run(cfg)[0]


def _run(cfg: SimConfig, unasked: _Unasked | None = None):
    """The dataset, and what only the simulator knows: items, latents, each session's respondent."""
    rng = np.random.default_rng(cfg.seed)
    items = _items(rng, cfg)
    questionnaire = Questionnaire(version=f"sim-{cfg.seed}", questions=tuple(i.question for i in items))
    lat = _latents(rng, cfg.users)
    repeat = np.flatnonzero(rng.random(cfg.users) < cfg.repeat_rate)
    respondent = np.concatenate([np.arange(cfg.users), repeat])  # user index of every session
    survey = _survey(rng, items, lat, respondent, cfg, unasked)
    user_ids = np.array([f"u{i:06d}" for i in range(cfg.users)])
    first = np.datetime64(cfg.start, "us") + (rng.uniform(0, SPAN_S / 2, cfg.users) * 1e6).astype("timedelta64[us]")
    later = first[repeat] + (rng.uniform(7, 60, len(repeat)) * 86400e6).astype("timedelta64[us]")
    sessions = pa.table(
        {
            "session_id": pa.array([f"s{i:07d}" for i in range(len(respondent))]),
            "user_id": pa.array(user_ids[respondent]),
            "completed_at": pa.array(np.concatenate([first, later]), schema.TIMESTAMP),
            "answers": _answers_column(list(questionnaire.questions), survey),
        },
        schema=schema.SESSIONS,
    )
    external = {
        "demographics": _source_table(rng, user_ids, first, _demographics(rng, lat, cfg), 0.12, cfg),
        "engagement": _source_table(rng, user_ids, first, _engagement(rng, lat, cfg), 0.15, cfg),
        "transactions": _source_table(rng, user_ids, first, _transactions(rng, lat, cfg), 0.22, cfg),
    }
    noise_rng = np.random.default_rng([cfg.seed, 1])  # its own stream: the informative data stay as they were
    for i in range(cfg.irrelevant_sources):
        external[f"noise{i + 1}"] = _source_table(noise_rng, user_ids, first, _irrelevant(noise_rng, cfg.users), 0.15,
                                                  cfg)
    return Dataset(questionnaire, sessions, external), items, lat, respondent
