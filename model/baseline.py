"""The classical baseline a practitioner tries first: one-vs-rest logistic regression on the
flattened survey (visible answers + which questions were presented) and flattened external
inputs (standardised numerics + missing flags, one-hot categoricals, bag of sequence categories
and mean sequence values, presence flags). One linear layer with an independent sigmoid per key
is exactly K independent logistic regressions; L2 comes from the optimiser's weight decay."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.lantern import Batch, LanternConfig


class LogisticBaseline(nn.Module):
    def __init__(self, cfg: LanternConfig):
        super().__init__()
        self.cfg = cfg
        n_in = cfg.n_keys + cfg.n_questions + 1
        for s in cfg.sources:
            n_in += 2 * s.n_num + sum(c + 1 for c in s.cat_cards) + 1
            n_in += (s.seq_card + 1 + s.n_seq_vals + 1) if s.seq_card else 0
        self.linear = nn.Linear(n_in, cfg.n_keys)

    def features(self, batch: Batch) -> torch.Tensor:
        B = batch.q_idx.shape[0]
        answered = torch.zeros(B, self.cfg.n_keys + 1, device=batch.q_idx.device)
        answered.scatter_(1, batch.sel.reshape(B, -1), 1.0)
        presented = torch.zeros(B, self.cfg.n_questions + 1, device=batch.q_idx.device)
        presented.scatter_(1, batch.q_idx, 1.0)
        parts = [answered[:, 1:], presented[:, 1:], torch.ones(B, 1, device=answered.device)]
        for dims, s in zip(self.cfg.sources, batch.sources):
            present = s.present[:, None].float()
            parts += [s.num, s.num_missing.float() * present, present]
            parts += [F.one_hot(s.cat[:, j], c + 1).float() for j, c in enumerate(dims.cat_cards)]
            if dims.seq_card:
                bag = torch.zeros(B, dims.seq_card + 1, device=answered.device)
                bag.scatter_add_(1, s.seq_cat, s.seq_mask.float())
                n = s.seq_mask.sum(1, keepdim=True).clamp_min(1)
                mean_val = (s.seq_val * s.seq_mask[..., None]).sum(1) / n
                parts += [bag / n, mean_val, torch.log1p(s.seq_mask.sum(1, keepdim=True).float())]
        return torch.cat(parts, 1)  # (B, n_in)

    def forward(self, batch: Batch, return_aux: bool = False):
        logits = self.linear(self.features(batch))  # (B, K)
        return (logits, {}) if return_aux else logits
