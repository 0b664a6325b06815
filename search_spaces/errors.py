from __future__ import annotations


class ArchError(ValueError):
    """A malformed or inapplicable architecture string."""

    exit_code = 2
