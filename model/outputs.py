"""Outputs that fit the question kind: a softmax over each single-select question's options, an
independent sigmoid per multi-select option; the loss that matches them.

    single-select q:  p(k) = softmax(logits[keys of q])[k]        one answer per question
    multi-select  q:  p(k) = σ(logits[k])                          any number of answers

The layout (key → question, question → single?) comes from the model config; a config without
one (models saved before this layout existed) falls back to a sigmoid per key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _layout(cfg, device) -> tuple[torch.Tensor, torch.Tensor]:
    key_question = torch.as_tensor(cfg.key_question, dtype=torch.long, device=device)  # (K,)
    single = torch.as_tensor(cfg.single_select, dtype=torch.bool, device=device)[key_question]  # (K,)
    return key_question, single


def has_layout(cfg) -> bool:
    return bool(getattr(cfg, "key_question", ()))


def key_log_probs(logits: torch.Tensor, cfg) -> torch.Tensor:
    """log P(option chosen) for every response key: (B, K) logits → (B, K)."""
    logits = logits.float()
    if not has_layout(cfg):
        return F.logsigmoid(logits)
    key_question, single = _layout(cfg, logits.device)
    B, n_q = logits.shape[0], len(cfg.single_select)
    idx = key_question.expand(B, -1)  # (B, K)
    z = torch.where(single, logits, torch.full_like(logits, float("-inf")))
    top = torch.full((B, n_q), float("-inf"), device=logits.device).scatter_reduce(1, idx, z, "amax")
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top)).detach()  # (B, Q) stable log-sum-exp
    z = z - top.gather(1, idx)
    total = torch.zeros(B, n_q, device=logits.device).scatter_add(1, idx, z.exp())  # (B, Q)
    log_softmax = z - total.clamp_min(1e-30).log().gather(1, idx)  # multi keys: unused, finite grads
    return torch.where(single, log_softmax, F.logsigmoid(logits))


def key_probs(logits: torch.Tensor, cfg) -> torch.Tensor:
    """P(option chosen) for every response key, (B, K); single-select questions sum to one."""
    return key_log_probs(logits, cfg).exp()


def response_loss(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, cfg) -> torch.Tensor:
    """Mean negative log-likelihood per decision over the keys in ``mask`` (hidden questions):
    a hidden single-select question is one decision (−log p of the chosen option), each hidden
    multi-select option is one (binary cross-entropy)."""
    logits = logits.float()
    if not has_layout(cfg):
        single = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
    else:
        single = _layout(cfg, logits.device)[1]
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")  # (B, K)
    nll = torch.where(single, -y * key_log_probs(logits, cfg), bce) if single.any() else bce
    units = mask * torch.where(single, y, torch.ones_like(y))  # one unit per single question
    return (nll * mask).sum() / units.sum().clamp_min(1.0)
