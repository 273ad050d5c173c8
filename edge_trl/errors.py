"""The error of a run refused before any process starts (no import of its own: every module can raise it)."""

from __future__ import annotations


class LaunchError(ValueError):
    """Bad input to `edge-trl train`; the message names the option and the fix."""
