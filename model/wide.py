"""The flat (logistic-regression) view of a batch: what a one-vs-rest logistic model reads, and the
wide path a neural variant adds to its logits.

    survey:   answered keys (K) + "none of these" per question (Q) + presented questions (Q)
                                                                         → Linear with bias
    external: per source [numerics, missing flags, presence, one-hot categoricals,
              bag of sequence categories, mean sequence values, log length] × present
                                                                         → Linear without bias

Every external block is multiplied by its source's presence and the external map has no bias,
so a user with no external row gets exactly zero from it: the gate's guarantee (no external data
⇒ the survey-only answer) holds with the wide path too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def survey_width(cfg) -> int:
    return cfg.n_keys + 2 * cfg.n_questions


def source_width(s) -> int:
    """One source's block of the flat external features (its ``SourceDims``)."""
    sequence = (s.seq_card + 1 + s.n_seq_vals + 1) if s.seq_card else 0
    return 2 * s.n_num + sum(c + 1 for c in s.cat_cards) + 1 + sequence


def external_width(cfg) -> int:
    return sum(source_width(s) for s in cfg.sources)


def survey_features(cfg, q_idx: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """(B, T) question indices + (B, T, M) selections → (B, K + 2Q): answered keys, "none of these"
    answers, presented questions."""
    B = q_idx.shape[0]
    answered = torch.zeros(B, cfg.n_keys + cfg.n_questions + 1, device=q_idx.device)
    answered.scatter_(1, sel.reshape(B, -1), 1.0)
    presented = torch.zeros(B, cfg.n_questions + 1, device=q_idx.device)
    presented.scatter_(1, q_idx, 1.0)
    return torch.cat([answered[:, 1:], presented[:, 1:]], 1)


def external_features(cfg, sources: list) -> torch.Tensor:
    """Every source's flat features, zero for users without that source: (B, external_width)."""
    parts = []
    for dims, s in zip(cfg.sources, sources):
        present = s.present[:, None].float()
        block = [s.num, s.num_missing.float(), torch.ones_like(present)]
        block += [F.one_hot(s.cat[:, j], c + 1).float() for j, c in enumerate(dims.cat_cards)]
        if dims.seq_card:
            B = s.seq_cat.shape[0]
            bag = torch.zeros(B, dims.seq_card + 1, device=s.seq_cat.device)
            bag.scatter_add_(1, s.seq_cat, s.seq_mask.float())
            n = s.seq_mask.sum(1, keepdim=True).clamp_min(1)
            mean_val = (s.seq_val * s.seq_mask[..., None]).sum(1) / n
            block += [bag / n, mean_val, torch.log1p(s.seq_mask.sum(1, keepdim=True).float())]
        parts.append(torch.cat(block, 1) * present)
    return torch.cat(parts, 1)


class Wide(nn.Module):
    """Linear maps of the flat survey and external features to every response key's logit."""

    def __init__(self, cfg, survey: bool = True, external: bool = True):
        super().__init__()
        self.cfg = cfg
        self.survey = nn.Linear(survey_width(cfg), cfg.n_keys) if survey else None
        self.external = nn.Linear(external_width(cfg), cfg.n_keys, bias=False) if external and cfg.sources else None

    def survey_logits(self, q_idx, sel) -> torch.Tensor | float:  # → (B, K), or 0.0 without a survey part
        return self.survey(survey_features(self.cfg, q_idx, sel)) if self.survey is not None else 0.0

    def external_logits(self, sources) -> torch.Tensor | float:  # → (B, K), or 0.0 without an external part
        return self.external(external_features(self.cfg, sources)) if self.external is not None else 0.0

    def external_logits_by_source(self, sources) -> torch.Tensor:
        """Each source's part of the external logits, (B, S, K): the map is linear and has no bias,
        so the parts sum to :meth:`external_logits`."""
        widths = [source_width(s) for s in self.cfg.sources]
        x = external_features(self.cfg, sources).split(widths, 1)
        return torch.stack([part @ w.T for part, w in zip(x, self.external.weight.split(widths, 1))], 1)

    def forward(self, q_idx, sel, sources, use_external: bool = True) -> torch.Tensor:  # → (B, K)
        return self.survey_logits(q_idx, sel) + (self.external_logits(sources) if use_external else 0.0)
