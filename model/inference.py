"""Inference, in one place for serving, streaming, evaluation and benchmarks: the device, the
batched forward pass (length-sorted CPU chunks, optional fp16 on CUDA), the per-session gate
summary, and the in-process predictor."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.data import to_batch
from model.lantern import ENCODES_EXTERNAL
from model.materialized import UserEncoding, encoding_version, fresh, stack
from model.outputs import key_probs


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: a CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Prediction:
    probs: np.ndarray  # (B, K) probability of every response key
    gate: np.ndarray  # (B,) mean gate per session, NaN where not applicable
    model_version: str  # the version that produced these rows


#: rows per forward chunk on a CPU: sessions sorted by length and cut into chunks, each padded
#: only to its own longest session (half the survey tokens of a micro-batch are padding otherwise)
CPU_CHUNK_ROWS = 64


Stored = list[UserEncoding | None]  # per row: its materialized external encoding, None = encode from sources


@torch.inference_mode()
def forward(model: torch.nn.Module, q_idx: np.ndarray, sel: np.ndarray, sources: list,
            device: torch.device, half: bool = False, stored: Stored | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Forward passes over encoded sessions → (probabilities (B, K), mean gate (B,)), in the
    input's row order. On a CPU the rows go in length-sorted chunks (less padding); a GPU takes
    the batch whole. ``half``: fp16 autocast (matmuls and attention in fp16, reductions in fp32).
    ``stored``: rows' materialized external encodings (model.materialized), used instead of
    encoding their sources; rows without one are encoded from ``sources``."""
    n = len(q_idx)
    if stored is not None and getattr(model.cfg, "variant", "") not in ENCODES_EXTERNAL:
        stored = None  # this variant reads the rows themselves
    if device.type != "cpu" or n <= CPU_CHUNK_ROWS:
        return _forward_batch(model, q_idx, sel, sources, device, half, stored)
    order = np.argsort((q_idx > 0).sum(1), kind="stable")
    probs, gate = np.empty((n, model.cfg.n_keys), np.float32), np.empty(n, np.float32)
    for rows in np.array_split(order, -(-n // CPU_CHUNK_ROWS)):
        probs[rows], gate[rows] = _forward_batch(model, q_idx[rows], sel[rows], [s.take(rows) for s in sources],
                                                 device, half, None if stored is None else [stored[i] for i in rows])
    return probs, gate


def _forward_batch(model, q_idx, sel, sources, device, half, stored=None) -> tuple[np.ndarray, np.ndarray]:
    external = None
    if stored is not None:
        missing = np.array([e is None for e in stored])
        if missing.any():  # encode the rows without a stored encoding, then use one path for all
            rows = np.flatnonzero(missing)
            stored = list(stored)
            for i, e in zip(rows, fresh(model, [s.take(rows) for s in sources])):
                stored[i] = e
        external, sources = stack(stored, model.cfg.d_model, model.cfg.n_keys, device), []
    batch = to_batch(q_idx, sel, sources, device)
    with torch.autocast(device.type, dtype=torch.float16, enabled=half):
        return _forward(model, batch, len(q_idx), external)


def session_gate(aux: dict) -> torch.Tensor:
    """Each session's mean gate over its survey tokens ([CLS] excluded): (B,), NaN for sessions
    without external data (the gate does not apply). Serving and evaluation both report this."""
    mask = aux["survey_mask"][:, 1:].float()  # (B, T)
    gate = (aux["gate"][:, 1:] * mask).sum(1) / mask.sum(1).clamp_min(1)
    return torch.where(aux["has_external"], gate, torch.full_like(gate, float("nan")))


def _forward(model: torch.nn.Module, batch, n: int, external=None) -> tuple[np.ndarray, np.ndarray]:
    extra = {} if external is None else {"external": external}
    if getattr(model.cfg, "variant", "") == "lantern":
        logits, aux = model(batch, return_aux=True, aux_attention=False, **extra)  # the gate only: fused attention
        gate = session_gate(aux)
    else:
        logits, gate = model(batch, **extra), torch.full((n,), float("nan"))
    return key_probs(logits, model.cfg).cpu().numpy(), gate.float().cpu().numpy()


def stored_version(model: torch.nn.Module, version: str) -> str | None:
    """The tag of the stored external encodings ``model`` reads (model.materialized), or None
    when it fuses no external encoding that can be stored."""
    return encoding_version(model, version) if getattr(model.cfg, "variant", "") in ENCODES_EXTERNAL else None


class InProcessPredictor:
    """The model in this process: one forward pass per micro-batch, on the chosen device."""

    def __init__(self, model: torch.nn.Module, model_version: str, device: str | torch.device = "cpu"):
        self.model, self.model_version, self.device = model.eval(), model_version, torch.device(device)
        self.stored_version = stored_version(self.model, model_version)  # None: it reads rows only

    def predict(self, q_idx, sel, sources, stored: Stored | None = None) -> Prediction:
        return Prediction(*forward(self.model, q_idx, sel, sources, self.device, stored=stored), self.model_version)


