"""Model and training configuration: plain data, no torch import (the CLI's settings read it)."""

from __future__ import annotations

from dataclasses import dataclass

VARIANTS = ("survey_only", "external_only", "early_fusion", "lantern")
BASELINES = ("logistic",)  # model/baseline.py, built from the same config
PRESETS = {
    # small: 2 heads in the encoders' self-attention (head dim 32) run ~3x faster on CPU than 8
    "small": dict(d_model=64, survey_layers=2, source_layers=1, ff_mult=2, encoder_heads=2, question_readout=True,
                  output_gate=True),
    "paper": dict(d_model=512, survey_layers=10, source_layers=2, ff_mult=4, encoder_heads=8, question_readout=True,
                  output_gate=True),
}


EPOCH_ROWS = 360_000  # rows an automatic epoch budget covers (35K users: 12 passes; 2.8K users: 60)


@dataclass(frozen=True)
class TrainConfig:
    variant: str = "lantern"
    preset: str = "small"
    epochs: int | None = None  # passes at most; None: see max_epochs (early stopping usually ends sooner)
    batch_size: int = 256  # at most: smaller where needed for min_batches
    min_batches: int = 50  # per epoch at least: a 2K-user dataset gets smaller batches, not fewer updates
    lr: float = 2e-3
    weight_decay: float = 0.01
    patience: int = 3  # epochs without a lower validation loss (each halves the learning rate)
    hide_fraction: float = 0.3
    # modality dropout, LANTERN only (the fused model must know every state a user can be in):
    # a training row scored without any external source, each source dropped on its own, and a
    # row whose visible survey answers are all hidden (the external path learns to stand alone)
    drop_context: float = 0.3
    drop_source: float = 0.0
    drop_survey: float = 0.15
    seed: int = 0
    eval_seed: int = 1234
    device: str = "auto"

    def max_epochs(self, n_train: int) -> int:
        """``epochs`` when set; otherwise about ``EPOCH_ROWS`` training rows, 12 to 60 passes: a large
        dataset gets 12 (the CPU time budget), a small one enough passes to converge."""
        if self.epochs is not None:
            return self.epochs
        return min(60, max(12, -(-EPOCH_ROWS // max(n_train, 1))))

    def __post_init__(self):
        if self.variant not in VARIANTS + BASELINES:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {', '.join(VARIANTS + BASELINES)}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if not 0 < self.hide_fraction < 1:
            raise ValueError("hide_fraction must be between 0 and 1")
        for name in ("drop_context", "drop_source", "drop_survey"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1)")
