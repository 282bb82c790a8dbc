"""One exception root for the whole project.

Edges (CLI, stream shells) catch :class:`LanternError` and turn it into an exit code or a
dead-letter record; nothing below them prints or exits.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """Why one input cannot be used, as data (errors at the edges are data): a dead letter's
    class, message and field (``streaming.events.EventError``), a session's contract violation
    (``lantern.dataset.validate``). ``kind`` is stable: DLQ headers and metrics key on it."""

    kind: str
    message: str
    field: str = ""
    exception: str = ""  # class ``internal``: the unexpected exception's qualified type name


class LanternError(Exception):
    """Root of every error lantern raises on purpose."""

    exit_code = 1


class ConfigError(LanternError):
    """A setting, flag or path is wrong; the message says which and what to do."""

    exit_code = 2


class DataValidationError(LanternError):
    """Input data breaks the data contract. Names the file, row and field."""

    exit_code = 3

    def __init__(self, message: str, *, file: str = "", row: int | None = None, field: str = ""):
        self.file, self.row, self.field, self.reason = file, row, field, message
        where = ", ".join(
            part
            for part in (
                f"file {file}" if file else "",
                f"row {row}" if row is not None else "",
                f"field {field}" if field else "",
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)


class ModelError(LanternError):
    """A model checkpoint is missing, incompatible with the data, or corrupt."""

    exit_code = 4


class FeatureStoreUnavailable(LanternError):
    """The online store cannot be reached; ``__cause__`` holds the driver's error. The one error
    a scorer rides out (survey-only scores, flagged ``degraded``): any other stops it."""

    exit_code = 5
