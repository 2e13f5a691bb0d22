"""User-facing errors.

An `EvstreamError` is a mistake the user can fix (a bad file, an unknown camera, a bad flag
value). The CLI prints its message as one line on stderr and exits with `exit_code` (2), never
with a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class EvstreamError(Exception):
    """A user error: one line, exit code 2."""

    exit_code = 2


class SourceError(EvstreamError):
    """A source cannot be opened or read (missing/corrupt/truncated file, no camera...)."""


class BadEventsError(SourceError):
    """Events that break the contract: time going backwards, coordinates outside the sensor."""


class NotBuiltError(EvstreamError):
    """A command or feature that a later issue fills in."""
