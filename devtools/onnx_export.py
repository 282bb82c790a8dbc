"""The stored-encoding forward graph (survey encoder + fusion + outputs, external encodings as
inputs) exported to ONNX, and its inputs in the same length-sorted chunks the eager forward
uses: `lantern bench model`'s ONNX Runtime candidate. Needs onnx and onnxscript (not lantern
dependencies)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model.data import EncodedData, to_batch
from model.inference import CPU_CHUNK_ROWS, session_gate
from model.lantern import Batch, ExternalEncoding
from model.materialized import UserEncoding, stack
from model.outputs import key_probs

INPUTS = ("q_idx", "sel", "tokens", "mask", "wide")


class StoredGraph(nn.Module):
    """(survey, stored external encoding) → (probabilities (B, K), mean gate (B,))."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, q_idx, sel, tokens, mask, wide):
        external = ExternalEncoding(tokens, mask, torch.zeros(1, dtype=torch.long), wide)
        logits, aux = self.model(Batch(q_idx, sel, []), return_aux=True, aux_attention=False, external=external)
        return key_probs(logits, self.model.cfg), session_gate(aux)


def _feed(model, data: EncodedData, stored: list[UserEncoding]) -> list[np.ndarray]:
    batch = to_batch(data.survey.q_idx, data.survey.sel, [])
    ext = stack(stored, model.cfg.d_model, model.cfg.n_keys)
    return [batch.q_idx.numpy(), batch.sel.numpy(), ext.tokens.numpy(), ext.mask.numpy(), ext.wide.numpy()]


def stored_inputs(model, data: EncodedData, stored: list[UserEncoding]):
    """(rows, inputs) per length-sorted chunk of ``CPU_CHUNK_ROWS``, as the eager forward chunks."""
    order = np.argsort((data.survey.q_idx > 0).sum(1), kind="stable")
    for rows in np.array_split(order, max(1, -(-len(data) // CPU_CHUNK_ROWS))):
        yield rows, _feed(model, data.take(rows), [stored[i] for i in rows])


def export_stored_graph(model, sample: EncodedData, stored: list[UserEncoding]) -> tuple[Path, list[str]]:
    """Export with dynamic batch, survey length and token count; returns the file and input names."""
    assert model.cfg.variant == "lantern", "the stored-encoding graph is LANTERN's"
    args = tuple(torch.from_numpy(x) for x in _feed(model, sample, stored))
    B, T, Tk = torch.export.Dim("B"), torch.export.Dim("T"), torch.export.Dim("Tk")
    dims = {"q_idx": {0: B, 1: T}, "sel": {0: B, 1: T}, "tokens": {0: B, 1: Tk}, "mask": {0: B, 1: Tk},
            "wide": {0: B}}
    program = torch.onnx.export(StoredGraph(model).eval(), args, input_names=list(INPUTS), dynamic_shapes=dims,
                                dynamo=True, optimize=True, verbose=False)
    path = Path(tempfile.mkdtemp(prefix="lantern-onnx-")) / "stored_graph.onnx"
    program.save(str(path))
    return path, list(INPUTS)
