"""`lantern bench quality`: every variant and the logistic baseline on one split, one table."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lantern.dataset.io import Dataset
from model.evaluate import evaluate
from model.lantern import VARIANTS
from model.train import Prepared, TrainConfig, fit, prepare

ABLATION = VARIANTS + ("logistic",)
PAPER_F1 = {"survey_only": 0.734, "external_only": 0.545, "lantern": 0.775}


def run_ablation(ds: Dataset, tc: TrainConfig, variants=ABLATION, progress: bool = True, log=print) -> dict:
    t0 = time.perf_counter()
    result = ablate(prepare(ds, tc), ds, tc, variants, progress=progress, log=log)
    result["seconds"] = time.perf_counter() - t0
    return result


def ablate(prep: Prepared, ds: Dataset, tc: TrainConfig, variants=ABLATION, trained: dict | None = None,
           progress: bool = True, log=print) -> dict:
    """Every variant on one prepared split. ``trained``: variant → (model, training history) already
    fitted on this split elsewhere (e.g. by Ray Train); only the others are fitted here."""
    t0 = time.perf_counter()
    names = [s.name for s in prep.features.sources]
    trained = trained or {}
    results = {}
    for variant in variants:
        if variant in trained:
            model, history = trained[variant]
        else:
            model, history = fit(prep, replace(tc, variant=variant), progress=progress)
        report = evaluate(model, prep.test, ds.questionnaire, prep.rare, names)
        report["training"] = history
        results[variant] = report
        log(f"{variant:>14}: F1 {report['micro']['f1']:.4f}  rare {report['rare']['f1']:.4f}  "
            f"({history['seconds']:.0f} s, {len(history['history'])} epochs"
            f"{', ' + history['trainer'] if 'trainer' in history else ''})")
    return {
        "dataset": {"sessions": ds.sessions.num_rows, "questions": len(ds.questionnaire.questions),
                    "response_keys": ds.questionnaire.n_keys, "sources": names,
                    "rare_keys": int(prep.rare.sum()), "test_sessions": int(len(prep.test.y))},
        "config": {k: v for k, v in tc.__dict__.items() if k != "variant"},
        "variants": results,
        "seconds": time.perf_counter() - t0,
    }


def ablation_table(result: dict) -> Table:
    variants = result["variants"]
    base = variants.get("survey_only", {}).get("micro", {}).get("f1")
    base_rare = variants.get("survey_only", {}).get("rare", {}).get("f1")
    table = Table(title=f"Ablation on {result['dataset']['test_sessions']} held-out sessions "
                        "(hidden questions, threshold 0.5)")
    for col in ("variant", "F1", "P", "R", "rare F1", "freq F1", "AUC", "ECE", "F1 spread 0.3–0.7",
                "ΔF1 vs survey", "Δrare vs survey", "paper F1"):
        table.add_column(col, justify="left" if col == "variant" else "right", no_wrap=True)
    for name, r in variants.items():
        f1s = [t["f1"] for t in r["thresholds"]]
        table.add_row(
            name, f"{r['micro']['f1']:.4f}", f"{r['micro']['precision']:.4f}", f"{r['micro']['recall']:.4f}",
            f"{r['rare']['f1']:.4f}", f"{r['frequent']['f1']:.4f}", f"{r['auc']:.4f}", f"{r['ece']:.4f}",
            f"{max(f1s) - min(f1s):.4f}",
            f"{(r['micro']['f1'] / base - 1) * 100:+.1f}%" if base else "",
            f"{(r['rare']['f1'] / base_rare - 1) * 100:+.1f}%" if base_rare else "",
            f"{PAPER_F1[name]:.3f}" if name in PAPER_F1 else "",
        )
    return table


def write_result(result: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=float))


def print_table(result: dict, console: Console | None = None) -> None:
    (console or Console()).print(ablation_table(result))
