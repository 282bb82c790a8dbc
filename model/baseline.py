"""The classical baseline a practitioner tries first: logistic regression on the flattened survey
(visible answers + which questions were presented) and flattened external inputs (standardised
numerics + missing flags, one-hot categoricals, bag of sequence categories and mean sequence
values, presence flags) — ``model/wide.py``. Through the shared output layer
(``model/outputs.py``) that is a multinomial logistic regression per single-select question and
a binary one per multi-select option; L2 comes from the optimiser's weight decay."""

from __future__ import annotations

from torch import nn

from model.lantern import Batch, LanternConfig
from model.wide import Wide


class LogisticBaseline(nn.Module):
    def __init__(self, cfg: LanternConfig):
        super().__init__()
        self.cfg = cfg
        self.wide = Wide(cfg)

    def forward(self, batch: Batch, return_aux: bool = False, survey_only_path: bool = False, **_):
        logits = self.wide(batch.q_idx, batch.sel, batch.sources, use_external=not survey_only_path)  # (B, K)
        return (logits, {}) if return_aux else logits
