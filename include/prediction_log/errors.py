"""What the prediction log raises: the service turns each into its HTTP answer."""

from __future__ import annotations


class LogOverloaded(RuntimeError):
    """Too many rows are waiting for the database: answer 503 with Retry-After, do not queue more."""

    retry_after_s = 1


class LogUnavailable(RuntimeError):
    """The commit that carried the rows failed (or the log is not running): answer 503."""


class UnknownRequest(LookupError):
    """Feedback names a request id that was never logged (404)."""


class ConflictingLabel(ValueError):
    """A different label is already recorded for this request; labels are write-once (409)."""
