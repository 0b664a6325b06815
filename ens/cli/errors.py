"""Which exception types are the user's, collected from every layer."""

from __future__ import annotations

import importlib

# (module, class) of each layer's base error; a layer that is absent is skipped.
_USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("ens.errors", "EnsError"),
    ("search_spaces.errors", "ArchError"),
    ("profilers.errors", "ProfilerError"),
    ("studies.errors", "StudyError"),
)


def user_error_types() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = []
    for module, name in _USER_ERRORS:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)
