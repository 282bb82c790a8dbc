"""How a session is accepted and decided, wherever it is scored (Kafka, HTTP, in process): plain
data, read once at the entry point and handed to every scorer."""

from __future__ import annotations

from dataclasses import dataclass, replace

from lantern.errors import ConfigError

#: how far ahead of the scorer's clock a completion time may be: clients' clocks drift by minutes
#: (a phone's, a kiosk's), not by days; 15 minutes, the skew request signing commonly allows
MAX_CLOCK_SKEW_S = 900.0


@dataclass(frozen=True)
class ScoringConfig:
    # multi-select decision threshold; None: each model version's own, tuned on validation data
    # when it was trained (meta.json → training.multi_threshold), so a hot swap changes it too
    threshold: float | None = None
    # single-select: predict no option where the most likely one is below this (0: never abstain)
    abstain_below: float = 0.0
    # a session completed later than the scorer's clock plus this is refused (class future_time):
    # the score sink keeps each user's latest score by completion time, so one event from a fast
    # clock would otherwise pin that user's served score
    max_clock_skew_s: float = MAX_CLOCK_SKEW_S

    def __post_init__(self):
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ConfigError(f"scoring.threshold must be in [0, 1], got {self.threshold}")
        if not 0 <= self.abstain_below <= 1:
            raise ConfigError(f"scoring.abstain_below must be in [0, 1], got {self.abstain_below}")
        if self.max_clock_skew_s < 0:
            raise ConfigError(f"scoring.max_clock_skew_s must be ≥ 0, got {self.max_clock_skew_s}")

    def with_tuned(self, tuned: float) -> ScoringConfig:
        """These settings for one model version: the threshold set here, else the version's tuned one."""
        return self if self.threshold is not None else replace(self, threshold=tuned)
