from __future__ import annotations


class StudyError(Exception):
    """A study that cannot be opened, created or run as asked."""

    exit_code = 2
