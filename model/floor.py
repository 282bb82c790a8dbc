"""The output gate's fit: the survey-only answer as LANTERN's floor, the context-only answer where
the survey is blind.

After training, each question q gets the (β_f, β_e) — β ≥ 0, β_f + β_e ≤ 1, on a 0.1 grid — that
minimises the validation log loss of

    z_out = z_s + β_f ⊙ (z − z_s) + β_e ⊙ (z_e − z_s)

z: the fused logits; z_s: the same weights' survey-only logits (every external path closed);
z_e: their context-only logits (the survey closed). Only validation sessions with external data
count (the others score z_s whatever β is), and a candidate replaces the survey's answer only where
its gain is larger than one standard error of the per-session differences (the one-standard-error
rule of model selection: with few validation answers, noise does not pull a question off the
survey). (0, 0) is the survey's answer, (1, 0) the fused one:
a question whose context does not help on held-out users falls back to the survey — the promise
the selective gate makes per token, kept per question on data the model was not fitted on — and
a question the survey knows little about (a rare follow-up whose gate question is hidden) may
lean on the context alone. Both other states are trained states of the model
(``TrainConfig.drop_context``, ``drop_survey``), not afterthoughts. Ties go to the survey.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from model.data import EncodedData, to_batch
from model.evaluate import HiddenSet
from model.outputs import key_log_probs

STEP = 0.1
#: (β_f, β_e) candidates, the survey's answer first and ties to the smaller total
GRID = sorted(((round(f * STEP, 2), round(e * STEP, 2)) for f in range(11) for e in range(11) if f + e <= 10),
              key=lambda b: (b[0] + b[1], b[1]))


@torch.no_grad()
def hidden_logits(model: nn.Module, hs: HiddenSet, survey_only_path: bool = False, batch_size: int = 1024,
                  device="cpu") -> torch.Tensor:
    """Logits (N, K) of a hidden set, on the CPU."""
    model.eval()
    out = []
    for start in range(0, len(hs.y), batch_size):
        sub = hs.data.take(np.arange(start, min(start + batch_size, len(hs.y))))
        batch = to_batch(sub.survey.q_idx, sub.survey.sel, sub.sources, device)
        out.append(model(batch, survey_only_path=survey_only_path).float().cpu())
    return torch.cat(out)


def _without_survey(hs: HiddenSet) -> HiddenSet:
    s = hs.data.survey
    empty = type(s)(np.zeros_like(s.q_idx), np.zeros_like(s.sel), s.y)
    return HiddenSet(EncodedData(empty, hs.data.sources, hs.data.user_ids), hs.y, hs.loss_mask)


@torch.no_grad()
def fit_output_gate(model: nn.Module, hs: HiddenSet, device="cpu") -> dict:
    """Set ``model.output_beta`` (β_f) and ``output_beta_ext`` (β_e) from ``hs`` (validation);
    returns them per question and the validation log loss of the fused model and of the gated one."""
    cfg = model.cfg
    model.output_beta.fill_(1.0)
    model.output_beta_ext.zero_()
    z = hidden_logits(model, hs, device=device)
    z_s = hidden_logits(model, hs, survey_only_path=True, device=device)
    z_e = hidden_logits(model, _without_survey(hs), device=device)
    has_ext = torch.as_tensor(np.stack([s.present for s in hs.data.sources], 1).any(1))  # (N,)
    y = torch.as_tensor(hs.y, dtype=torch.float32)[has_ext]
    mask = torch.as_tensor(hs.loss_mask, dtype=torch.float32)[has_ext]
    z, z_s, z_e = z[has_ext], z_s[has_ext], z_e[has_ext]
    key_q = torch.as_tensor(cfg.key_question, dtype=torch.long)
    single = torch.as_tensor(cfg.single_select, dtype=torch.bool)[key_q]

    def per_session(beta_f: float, beta_e: float) -> torch.Tensor:  # (N, Q) the training loss's decisions
        zb = z_s + beta_f * (z - z_s) + beta_e * (z_e - z_s)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(zb, y, reduction="none")
        per_key = (torch.where(single, -y * key_log_probs(zb, cfg), bce) * mask).double()
        return torch.zeros(len(y), cfg.n_questions, dtype=torch.float64).index_add_(1, key_q, per_key)

    survey = per_session(0.0, 0.0)
    nll = torch.zeros(len(GRID), cfg.n_questions, dtype=torch.float64)  # per candidate, per question
    clears = torch.zeros(len(GRID), cfg.n_questions, dtype=torch.bool)  # gain over the survey > 1 SE
    for i, beta in enumerate(GRID):
        cur = survey if i == 0 else per_session(*beta)
        gain = survey - cur  # (N, Q) per session
        nll[i] = cur.sum(0)
        clears[i] = gain.sum(0) > gain.std(0) * len(y) ** 0.5  # the summed gain against its standard error
    clears[0] = True  # the survey's answer needs no test
    best = torch.where(clears, nll, torch.full_like(nll, float("inf"))).argmin(0)  # (Q,) ties: the survey-most
    grid = torch.as_tensor(GRID, dtype=torch.float32)  # (G, 2)
    model.output_beta.copy_(grid[best, 0].to(model.output_beta.device))
    model.output_beta_ext.copy_(grid[best, 1].to(model.output_beta_ext.device))
    units = (mask * torch.where(single, y, torch.ones_like(y))).sum().clamp_min(1).double()
    fused = GRID.index((1.0, 0.0))
    return {"beta_fused": [GRID[i][0] for i in best.tolist()], "beta_context": [GRID[i][1] for i in best.tolist()],
            "val_loss_fused": float(nll[fused].sum() / units),
            "val_loss_gated": float(nll.gather(0, best[None]).sum() / units)}


def finish_training(model: nn.Module, val: HiddenSet, layout, device="cpu") -> dict:
    """After the best epoch's weights are loaded: fit the output gate (when the model has one) and
    validate again, so the kept row (val_loss, val_f1, multi_threshold) describes the model as saved."""
    from model.train import validate

    if not hasattr(model, "output_beta"):
        return {}
    gate = fit_output_gate(model, val, device)
    return {**validate(model, val, layout, device), "output_gate": gate}
