"""Errors about the user's data: one line each, naming the file or folder at fault."""

from __future__ import annotations

from ens.errors import EnsError


class DataError(EnsError):
    """A dataset folder or image that cannot be used as it is."""


class ImageReadError(DataError):
    """An image that cannot be read, or whose pixels cannot be converted to RGB in [0, 1] without guessing."""


class PairingError(DataError):
    """Degraded/clean pairs that do not match: a missing partner, or different sizes."""


class LayoutError(DataError):
    """A folder whose dataset layout is not recognised, or not accepted by the task."""
