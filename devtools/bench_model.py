"""`lantern bench model`: the model stage alone, per CPU core — today's eager forward against
candidate inference paths of the same trained model, measured side by side in one run
(interleaved rounds, medians), each with its prediction difference from eager on the held-out
set (max |Δp|, F1 delta at the model's own decision rules).

Candidates measured here (no new dependency): dynamic int8 quantization of the linear layers
(``torch.ao.quantization.quantize_dynamic``) and ``torch.compile`` (inductor). A path would be
adopted only at ≥ 2× events/s with max |Δp| ≤ 1e-3 and |ΔF1| ≤ 0.002 (issue 22).
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace

import numpy as np
import torch

from model.inference import forward


def _paths(model) -> dict:
    out = {"eager": model}
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu(), {torch.nn.Linear}, dtype=torch.qint8)
    out["int8_dynamic"] = quantized
    compiled = copy.deepcopy(model)
    compiled.forward = torch.compile(compiled.forward, dynamic=True)
    out["torch_compile"] = compiled
    return out


def _predict(model, data, rows: int = 1024) -> np.ndarray:
    parts = []
    for start in range(0, len(data), rows):
        sub = data.take(np.arange(start, min(start + rows, len(data))))
        parts.append(forward(model, sub.survey.q_idx, sub.survey.sel, sub.sources, torch.device("cpu"))[0])
    return np.concatenate(parts)


def bench_model(settings, users: int = 3000, events: int = 4096, rounds: int = 5, log=print) -> dict:
    import tempfile
    from pathlib import Path

    from devtools.bench_serve import trained_registry
    from lantern.dataset.simulate import simulate
    from model.metrics import Layout, decision_f1

    torch.set_num_threads(1)  # per core
    ds = simulate(replace(settings.simulate, users=users))
    with tempfile.TemporaryDirectory() as tmp:
        reg, prep, model = trained_registry(Path(tmp), ds, settings, log)
        threshold = reg.load().meta["training"]["multi_threshold"]
    model = model.cpu().eval()
    layout, test = Layout.of(ds.questionnaire), prep.test
    data = prep.data.take(np.arange(min(events, len(prep.data))))
    paths = _paths(model)
    reference = _predict(model, test.data)
    ref_f1 = decision_f1(reference, test.y, test.loss_mask, layout, threshold)["f1"]
    result = {"users": users, "events": len(data), "torch_threads": 1, "paths": {}}
    for name, m in paths.items():
        t0 = time.perf_counter()
        probs = _predict(m, test.data)  # also warms up (and compiles) the path
        f1 = decision_f1(probs, test.y, test.loss_mask, layout, threshold)["f1"]
        result["paths"][name] = {"max_abs_dp": float(np.abs(probs - reference).max()), "f1": f1,
                                 "f1_delta": f1 - ref_f1, "first_pass_s": time.perf_counter() - t0, "eps": []}
    for _ in range(rounds):  # interleaved: every path once per round
        for name, m in paths.items():
            t0 = time.perf_counter()
            _predict(m, data, rows=256)
            result["paths"][name]["eps"].append(len(data) / (time.perf_counter() - t0))
    eager = float(np.median(result["paths"]["eager"]["eps"]))
    for name, r in result["paths"].items():
        r["events_per_s"] = float(np.median(r["eps"]))
        r["speedup"] = r["events_per_s"] / eager
        r["meets_goal"] = bool(r["speedup"] >= 2 and r["max_abs_dp"] <= 1e-3 and abs(r["f1_delta"]) <= 0.002)
        log(f"{name:>14}: {r['events_per_s']:8.0f} events/s/core ({r['speedup']:.2f}x), max |dp| "
            f"{r['max_abs_dp']:.2e}, F1 delta {r['f1_delta']:+.5f}")
    return result
