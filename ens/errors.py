"""Errors that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations


class EnsError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    exit_code = 2
