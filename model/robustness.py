"""`lantern bench robustness`: where late fusion earns its keep, and that it never falls below the
survey — every variant's log loss relative to survey_only, with its paired-bootstrap interval, on
simulated data swept one knob at a time from the default:

* external noise ×0.5, ×1, ×2, ×4 (``SimConfig.noise``);
* missing external data ×1, ×2, ×4 (``SimConfig.missing``: whole users and single values);
* whole irrelevant sources beside the informative ones (``SimConfig.irrelevant_sources``);
* the placebo (every user's external values given to another user: lantern.dataset.placebo);
* the training size: the small cells' users, and the default 35K (with its placebo).

The survey of every cell of one size is the same data (only external rows change), so survey_only
is trained once per size and scored on each cell's split (the same users, the same hidden answers).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from lantern.dataset.placebo import placebo
from lantern.dataset.simulate import SimConfig, simulate
from model.ablation import ABLATION, ablate, fit_variants
from model.train import TrainConfig, prepare


@dataclass(frozen=True)
class Cell:
    name: str
    knobs: dict  # SimConfig overrides
    placebo: bool = False
    big: bool = False  # at the large size (every other cell: the small one)


CELLS = (
    Cell("default", {}), Cell("noise x0.5", {"noise": 0.5}), Cell("noise x2", {"noise": 2.0}),
    Cell("noise x4", {"noise": 4.0}), Cell("missing x2", {"missing": 2.0}), Cell("missing x4", {"missing": 4.0}),
    Cell("irrelevant source x2", {"irrelevant_sources": 2}), Cell("placebo", {}, placebo=True),
    Cell("default (large)", {}, big=True), Cell("placebo (large)", {}, placebo=True, big=True),
)


def robustness(tc: TrainConfig, users: int = 5000, big_users: int = 35_000, cells=CELLS, variants=ABLATION,
               seed: int = 0, log=print, workers: int | None = None) -> dict:
    """One ablation per cell (``variants`` must include survey_only: every figure is relative to it)."""
    assert "survey_only" in variants, "the map is relative to survey_only"
    t0 = time.perf_counter()
    survey_fits: dict[int, tuple] = {}  # users → the survey_only fit, shared by every cell of that size
    rows = []
    for cell in cells:
        n = big_users if cell.big else users
        ds = simulate(replace(SimConfig(users=n, seed=seed), **cell.knobs))
        if cell.placebo:
            ds = placebo(ds, seed)
        prep, c0 = prepare(ds, tc), time.perf_counter()
        if n not in survey_fits:
            survey_fits[n] = fit_variants(prep, tc, ["survey_only"], workers, progress=False)["survey_only"]
        result = ablate(prep, ds, tc, variants, trained={"survey_only": survey_fits[n]}, progress=False,
                        log=lambda m: None, workers=workers)
        rows.append(_row(cell, n, result, time.perf_counter() - c0))
        log(_line(rows[-1]))
    return {"users": users, "big_users": big_users, "seed": seed, "variants": list(variants),
            "config": {k: v for k, v in tc.__dict__.items() if k != "variant"},
            "cells": rows, "seconds": time.perf_counter() - t0}


def _row(cell: Cell, users: int, result: dict, seconds: float) -> dict:
    hidden = result["versus_survey"]["hidden"]
    versus = {name: {m: d[m] for m in ("log_loss", "rare_log_loss")} for name, d in hidden.items()}
    out = {"cell": cell.name, "knobs": cell.knobs, "placebo": cell.placebo, "users": users, "seconds": seconds,
           "log_loss": {name: r["log_loss"] for name, r in result["variants"].items() if "log_loss" in r},
           "versus_survey": versus}
    pairs = result["comparisons"]["hidden"]
    if "lantern - early_fusion" in pairs:
        out["lantern_vs_early_fusion"] = {m: pairs["lantern - early_fusion"][m] for m in ("log_loss", "rare_log_loss")}
    return out


def _line(row: dict) -> str:
    cells = [f"{name} {d['log_loss']['diff']:+.4f}{'' if d['log_loss']['excludes_0'] else ' ~'}"
             for name, d in row["versus_survey"].items() if name in ABLATION]
    return f"{row['cell']:>22} ({row['users']} users, {row['seconds']:.0f} s): " + ", ".join(cells)
