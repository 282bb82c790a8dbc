"""`lantern bench model`: the model stage alone, per CPU core — today's eager forward against
candidate inference paths of the same trained model, measured side by side in one run
(interleaved rounds, medians), each with its prediction difference from eager on the held-out
set (max |Δp|, F1 delta at the model's own decision rules).

Paths:

* ``eager``: the reference (and the fallback of every other path);
* ``stored_external``: each user's external encoding materialized ahead (model/materialized.py),
  read back (the blob parse is timed) and fused: the work changes, not the kernels;
* ``int8_dynamic``: dynamic int8 quantization of the linear layers;
* ``torch_compile``: inductor;
* ``onnx_stored``: ONNX Runtime's CPU provider (all graph optimizations, one thread) on the
  stored-encoding graph, when ``onnxruntime``, ``onnx`` and ``onnxscript`` are installed
  (not dependencies of lantern: the entry says why when they are missing).

A path would be adopted at ≥ 2× events/s with max |Δp| ≤ 1e-3 and |ΔF1| ≤ 0.002 (issue 22).
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace

import numpy as np
import torch

from model.inference import forward
from model.materialized import encode_users, read_many

CPU = torch.device("cpu")
TAG = "bench"


def _eager(model):
    return lambda d, blobs: forward(model, d.survey.q_idx, d.survey.sel, d.sources, CPU)[0]


def _stored(model):
    def run(d, blobs):
        stored, _ = read_many(blobs, TAG)  # as the scorer reads a batch
        return forward(model, d.survey.q_idx, d.survey.sel, [], CPU, stored=stored)[0]
    return run


def _onnx(model, sample, blobs):
    """The stored-encoding graph exported to ONNX and run by ONNX Runtime (None + why when it can't)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return None, f"onnxruntime is not installed ({exc.name}); pip install onnxruntime onnx onnxscript"
    from devtools.onnx_export import export_stored_graph, stored_inputs

    path, names = export_stored_graph(model, sample, read_many(blobs, TAG)[0])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(d, blobs):
        out = np.empty((len(d), model.cfg.n_keys), np.float32)
        for rows, feed in stored_inputs(model, d, read_many(blobs, TAG)[0]):
            out[rows] = session.run(None, dict(zip(names, feed)))[0]
        return out
    return run, None


def _paths(model, sample, blobs) -> tuple[dict, dict]:
    paths = {"eager": _eager(model), "stored_external": _stored(model)}
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu(), {torch.nn.Linear}, dtype=torch.qint8)
    paths["int8_dynamic"] = _eager(quantized)
    compiled = copy.deepcopy(model)
    compiled.forward = torch.compile(compiled.forward, dynamic=True)
    paths["torch_compile"] = _eager(compiled)
    onnx, why = _onnx(model, sample, blobs)
    skipped = {}
    if onnx is None:
        skipped["onnx_stored"] = why
    else:
        paths["onnx_stored"] = onnx
    return paths, skipped


def _chunks(run, data, blobs: list[bytes], rows: int = 1024) -> np.ndarray:
    """``run`` over ``data`` in slices of ``rows`` (a stream's micro-batches), each with its rows' blobs."""
    spans = [(s, min(s + rows, len(data))) for s in range(0, len(data), rows)]
    return np.concatenate([run(data.take(np.arange(a, b)), blobs[a:b]) for a, b in spans])


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
    t0 = time.perf_counter()
    blobs = encode_users(model, data.sources, TAG)  # each event's own (point-in-time) rows, encoded ahead
    encode_s = time.perf_counter() - t0
    test_blobs = encode_users(model, test.data.sources, TAG)
    paths, skipped = _paths(model, data.take(np.arange(64)), blobs[:64])
    reference = _chunks(paths["eager"], test.data, test_blobs)
    ref_f1 = decision_f1(reference, test.y, test.loss_mask, layout, threshold)["f1"]
    result = {"users": users, "events": len(data), "torch_threads": 1, "paths": {}, "skipped": skipped,
              "stored_external": {"encode_s_per_1k_users": 1000 * encode_s / len(data),
                                  "bytes_per_user": float(np.mean([len(b) for b in blobs]))}}
    for name, why in skipped.items():
        log(f"{name:>16}: not measured: {why}")
    for name, run in paths.items():
        t0 = time.perf_counter()
        probs = _chunks(run, test.data, test_blobs)  # also warms up (and compiles) the path
        f1 = decision_f1(probs, test.y, test.loss_mask, layout, threshold)["f1"]
        result["paths"][name] = {"max_abs_dp": float(np.abs(probs - reference).max()), "f1": f1,
                                 "f1_delta": f1 - ref_f1, "first_pass_s": time.perf_counter() - t0, "eps": []}
    for _ in range(rounds):  # interleaved: every path once per round
        for name, run in paths.items():
            t0 = time.perf_counter()
            _chunks(run, data, blobs, rows=256)
            result["paths"][name]["eps"].append(len(data) / (time.perf_counter() - t0))
    eager = float(np.median(result["paths"]["eager"]["eps"]))
    for name, r in result["paths"].items():
        r["events_per_s"] = float(np.median(r["eps"]))
        r["speedup"] = r["events_per_s"] / eager
        r["meets_goal"] = bool(r["speedup"] >= 2 and r["max_abs_dp"] <= 1e-3 and abs(r["f1_delta"]) <= 0.002)
        log(f"{name:>16}: {r['events_per_s']:8.0f} events/s/core ({r['speedup']:.2f}x), max |dp| "
            f"{r['max_abs_dp']:.2e}, F1 delta {r['f1_delta']:+.5f}")
    return result
