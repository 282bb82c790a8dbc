"""`lantern bench quality`: every variant, the logistic baseline and the answer-rate reference on
one split; paired-bootstrap 95 % intervals for LANTERN against each of them."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from lantern.dataset.io import Dataset
from model.checkpoint import build_model
from model.data import model_config
from model.evaluate import HiddenSet, evaluate, frequency_probs, predict
from model.inference import resolve_device
from model.lantern import VARIANTS
from model.metrics import Layout, decision_units, tune_multi_threshold
from model.quality import paired_difference, paired_macro_auc, quality_report, resamples, row_stats
from model.train import Prepared, TrainConfig, fit, prepare

ABLATION = VARIANTS + ("logistic",)
REFERENCE, ORACLE = "answer_rates", "oracle"
PAPER_F1 = {"survey_only": 0.734, "external_only": 0.545, "lantern": 0.775}
BOOTSTRAP_REPS, AUC_REPS = 1000, 100
#: training rows (all variants, all passes) below which the fits run here one after another: a
#: spawned worker spends seconds importing torch and receiving the split before it trains
POOL_MIN_ROWS = 50_000


def run_ablation(ds: Dataset, tc: TrainConfig, variants=ABLATION, progress: bool = True, log=print,
                 truth=None, workers: int | None = None, root: str | Path | None = None) -> dict:
    """``root``: the dataset's directory, where `lantern bench ceiling` may have left the
    evidence-given posteriors of this very split (then each variant's share of them is reported)."""
    from model.ceiling import load_ceiling

    t0 = time.perf_counter()
    prep = prepare(ds, tc)
    ceiling = load_ceiling(root, ds, prep, tc) if root is not None and truth is not None else None
    result = ablate(prep, ds, tc, variants, progress=progress, log=log, truth=truth, workers=workers, ceiling=ceiling)
    result["seconds"] = time.perf_counter() - t0
    return result


def reference(prep: Prepared, layout: Layout) -> tuple[np.ndarray, float]:
    """The answer-rate reference's validation-tuned threshold and its probabilities, one row."""
    train = prep.data.take(prep.train_idx)
    val = frequency_probs(train, prep.key_question, len(prep.val.y))
    return val[0], tune_multi_threshold(val, prep.val.y, prep.val.loss_mask, layout)


def never_presented(prep: Prepared, truth) -> HiddenSet:
    """Test sessions as completed (nothing hidden), scored on the questions the survey would have
    asked next had the respondent not stopped, against the simulator's would-be answers."""
    rows = prep.test_idx
    return HiddenSet(prep.data.take(rows), truth.unasked_answers[rows], truth.unasked[rows][:, prep.key_question])


@dataclass
class _Scored:
    """One evaluation task: its hidden set, and every model's probabilities and threshold on it."""

    hs: HiddenSet
    probs: dict = field(default_factory=dict)
    thresholds: dict = field(default_factory=dict)

    def add(self, name: str, probs: np.ndarray, threshold: float, prep: Prepared, layout: Layout) -> dict:
        self.probs[name], self.thresholds[name] = probs, threshold
        return quality_report(probs, self.hs.y, self.hs.loss_mask, prep.rare, layout, threshold)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _fit_weights(prep: Prepared, tc: TrainConfig) -> tuple[dict, dict]:
    model, history = fit(prep, tc, progress=False)
    return {k: v.cpu() for k, v in model.state_dict().items()}, history


def fit_variants(prep: Prepared, tc: TrainConfig, variants, workers: int | None = None, progress: bool = True) -> dict:
    """variant → (model, history). On a CPU, ``workers`` variants train at once in their own
    processes with one thread each (small models use two cores better that way than with two
    threads in one fit); on a GPU, with one worker, or when the fits are too small to pay for
    starting the processes (``POOL_MIN_ROWS``), one after another here."""
    workers = workers or min(2, os.cpu_count() or 1)
    rows = len(prep.train_idx) * tc.max_epochs(len(prep.train_idx)) * len(variants)
    if workers <= 1 or len(variants) <= 1 or resolve_device(tc.device).type != "cpu" or rows < POOL_MIN_ROWS:
        return {v: fit(prep, replace(tc, variant=v), progress=progress) for v in variants}
    slow_first = sorted(variants, key=lambda v: ("early_fusion", "external_only", "lantern", "survey_only").index(v)
                        if v in VARIANTS else 9)
    out = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread) as pool:
        jobs = {v: pool.submit(_fit_weights, prep, replace(tc, variant=v)) for v in slow_first}
        for v in variants:
            weights, history = jobs[v].result()
            model = build_model(model_config(prep.dataset.questionnaire, prep.features, v, tc.preset))
            model.load_state_dict(weights)
            out[v] = (model.eval(), history)
    return out


def ablate(prep: Prepared, ds: Dataset, tc: TrainConfig, variants=ABLATION, trained: dict | None = None,
           progress: bool = True, log=print, truth=None, workers: int | None = None, ceiling: dict | None = None) -> dict:
    """Every variant on one prepared split. ``trained``: variant → (model, training history) already
    fitted on this split elsewhere (e.g. by Ray Train); the others are fitted here (``workers`` at a
    time). ``truth`` (simulated data): the Bayes oracle as a row, and the never-presented questions
    as a second task."""
    t0 = time.perf_counter()
    names, layout, trained = [s.name for s in prep.features.sources], Layout.of(ds.questionnaire), trained or {}
    trained = {**fit_variants(prep, tc, [v for v in variants if v not in trained], workers, progress), **trained}
    tasks = {"hidden": _Scored(prep.test)}
    if truth is not None:
        tasks["never_presented"] = _Scored(never_presented(prep, truth))
    ref_row, ref_threshold = reference(prep, layout)
    results = {REFERENCE: {"variant": REFERENCE}}
    for task_name, task in tasks.items():
        report = task.add(REFERENCE, np.broadcast_to(ref_row, task.hs.y.shape), ref_threshold, prep, layout)
        _store(results[REFERENCE], task_name, report)
    for variant in variants:
        model, history = trained[variant]
        threshold = history.get("multi_threshold", 0.5)
        report = evaluate(model, prep.test, ds.questionnaire, prep.rare, names, multi_threshold=threshold,
                          probs_out=tasks["hidden"].probs)
        tasks["hidden"].thresholds[variant] = threshold
        report["training"] = history
        if "never_presented" in tasks:
            report["never_presented"] = tasks["never_presented"].add(
                variant, predict(model, tasks["never_presented"].hs), threshold, prep, layout)
        results[variant] = report
        log(f"{variant:>14}: log loss {report['log_loss']:.4f}  F1 {report['f1']:.4f}  rare {report['rare_f1']:.4f}  "
            f"AUC {report['auc_macro']:.4f}  ({history['seconds']:.0f} s, {len(history['history'])} epochs"
            f"{', ' + history['trainer'] if 'trainer' in history else ''})")
    if truth is not None:
        results[ORACLE] = {"variant": ORACLE}
        val_oracle = truth.oracle[prep.val_idx]
        threshold = tune_multi_threshold(val_oracle, prep.val.y, prep.val.loss_mask, layout)
        for task_name, task in tasks.items():
            _store(results[ORACLE], task_name, task.add(ORACLE, truth.oracle[prep.test_idx], threshold, prep, layout))
    for name, probs in (ceiling or {}).items():  # the evidence-given posteriors (model.ceiling), hidden task only
        threshold = tasks["hidden"].thresholds.get("lantern", ref_threshold)  # none tuned for it: LANTERN's
        results[name] = {"variant": name, **tasks["hidden"].add(name, probs, threshold, prep, layout)}
    hs = prep.test
    out = {
        "dataset": {"sessions": ds.sessions.num_rows, "questions": len(ds.questionnaire.questions),
                    "response_keys": ds.questionnaire.n_keys, "sources": names,
                    "rare_keys": int(prep.rare.sum()), "test_sessions": int(len(hs.y)),
                    "hidden_decisions": int(decision_units(hs.y, hs.loss_mask, layout).sum())},
        "config": {k: v for k, v in tc.__dict__.items() if k != "variant"},
        "variants": results,
        "comparisons": {name: compare(task, prep, layout) for name, task in tasks.items()},
        # every model against the survey alone (X − survey_only): where context helps, and where it hurts
        "versus_survey": {name: versus_survey(task, prep, layout) for name, task in tasks.items()},
        "seconds": time.perf_counter() - t0,
    }
    if truth is not None:
        out["oracle_gap_closed"] = gap_closed(results)
    if ceiling:
        from model.ceiling import achievable_share

        out["achievable_share"] = achievable_share(results)
    return out


def _store(row: dict, task: str, report: dict) -> None:
    if task == "hidden":
        row.update(report)
    else:
        row[task] = report


def gap_closed(results: dict, base: str = "survey_only") -> dict:
    """Per variant: the share of the ``base`` → oracle gap it closes (log loss, F1, rare F1)."""
    oracle, ref = results.get(ORACLE), results.get(base)
    if oracle is None or ref is None:
        return {}
    out = {}
    for name, r in results.items():
        if name in (ORACLE, base, REFERENCE):
            continue
        out[name] = {m: (r[m] - ref[m]) / (oracle[m] - ref[m]) if oracle[m] != ref[m] else float("nan")
                     for m in ("log_loss", "f1", "rare_f1")}
    return out


def compare(task: _Scored, prep: Prepared, layout: Layout, focus: str = "lantern") -> dict:
    """``focus`` − every other model on one task, paired over the same resampled sessions."""
    if focus not in task.probs:
        return {}
    hs = task.hs
    stats = {name: row_stats(p, hs.y, hs.loss_mask, layout, task.thresholds[name], prep.rare)
             for name, p in task.probs.items()}
    weights = resamples(len(hs.y), BOOTSTRAP_REPS, seed=0)
    out = {}
    for other in task.probs:
        if other == focus:
            continue
        diff = paired_difference(stats[focus], stats[other], weights)
        diff["auc_macro"] = paired_macro_auc(task.probs[focus], task.probs[other], hs.y, hs.loss_mask,
                                             weights[:AUC_REPS])
        out[f"{focus} - {other}"] = diff
    return out


def versus_survey(task: _Scored, prep: Prepared, layout: Layout) -> dict:
    """Every other model − survey_only on one task (paired), as ``compare`` gives LANTERN − X."""
    if "survey_only" not in task.probs:
        return {}
    hs = task.hs
    weights = resamples(len(hs.y), BOOTSTRAP_REPS, seed=0)
    base = row_stats(task.probs["survey_only"], hs.y, hs.loss_mask, layout, task.thresholds["survey_only"], prep.rare)
    return {name: paired_difference(row_stats(p, hs.y, hs.loss_mask, layout, task.thresholds[name], prep.rare),
                                    base, weights)
            for name, p in task.probs.items() if name != "survey_only"}


def _cell(d: dict) -> str:
    return f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]{'' if d['excludes_0'] else ' ~'}"


def _rate(x: float) -> str:
    return "n/a" if x != x else f"{x:.4f}"


def ablation_table(result: dict, task: str = "hidden") -> Table:
    rows = {name: r if task == "hidden" else r.get(task) for name, r in result["variants"].items()}
    rows = {name: r for name, r in rows.items() if r is not None and "log_loss" in r}
    base = rows.get("survey_only", {}).get("f1")
    rare = result["dataset"]["rare_keys"] > 0
    what = ("hidden questions" if task == "hidden" else
            "questions never presented (the respondent stopped before them), the simulator's would-be answers")
    table = Table(title=f"{result['dataset']['test_sessions']} held-out sessions, {what}; F1: argmax per "
                        "single-select question, multi-select threshold tuned on validation")
    ordinal = any(r["ordinal_mae"] == r["ordinal_mae"] for r in rows.values())  # not NaN: ordinal scales
    for col in ("variant", "log loss", "Brier", "AUC macro", "AP macro", "F1", "rare F1", "accuracy", "F1@0.5",
                "ECE", *(("MAE (points)",) if ordinal else ()), "ΔF1 vs survey"):
        table.add_column(col, justify="left" if col == "variant" else "right", no_wrap=True)
    for name, r in rows.items():
        table.add_row(name, f"{r['log_loss']:.4f}", f"{r['brier']:.4f}", _rate(r['auc_macro']),
                      _rate(r['ap_macro']), f"{r['f1']:.4f}", f"{r['rare_f1']:.4f}" if rare else "n/a",
                      f"{r['accuracy']:.4f}", f"{r['at_0.5']['f1']:.4f}", f"{r['ece']:.4f}",
                      *((f"{r['ordinal_mae']:.3f}",) if ordinal else ()),
                      f"{(r['f1'] / base - 1) * 100:+.1f}%" if base else "")
    return table


def comparison_table(result: dict, task: str = "hidden") -> Table:
    table = Table(title=f"Paired bootstrap ({task}): difference [95 % interval], ~ = the interval holds 0; "
                        "log loss: lower is better")
    for col in ("pair", "log loss", "F1", "rare F1", "AUC macro", "accuracy"):
        table.add_column(col, justify="left" if col == "pair" else "right", no_wrap=True)
    for pair, d in result["comparisons"].get(task, {}).items():
        table.add_row(pair, *(_cell(d[m]) for m in ("log_loss", "f1", "rare_f1", "auc_macro", "accuracy")))
    return table


def write_result(result: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=float))


def print_table(result: dict, console: Console | None = None) -> None:
    console = console or Console()
    for task in result.get("comparisons", {"hidden": None}):
        console.print(ablation_table(result, task))
        if result["comparisons"].get(task):
            console.print(comparison_table(result, task))
    for name, share in result.get("oracle_gap_closed", {}).items():
        console.print(f"{name}: share of the survey_only → oracle gap closed: "
                      + ", ".join(f"{m} {v:+.1%}" for m, v in share.items()))
