"""The registry of degradations: ``register_degradation`` adds one, ``get_degradation`` finds it by name.

Its own module, so that the degradation modules import it without importing the package back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

DegradeFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Degradation:
    name: str
    description: str
    fn: DegradeFn
    margin: int = 0

    def __call__(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        clean = check_image(clean)
        out = self.fn(clean, rng)
        if out.shape != clean.shape:  # a bug in a degradation, not the user's input
            raise RuntimeError(f"degradation {self.name!r} changed the shape {clean.shape} -> {out.shape}")
        return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


_DEGRADATIONS: dict[str, Degradation] = {}


def register_degradation(name: str, description: str, margin: int = 0) -> Callable[[DegradeFn], DegradeFn]:
    """Decorator: ``@register_degradation("name", "what it does", margin=...)`` on ``fn(clean, rng)``."""

    def wrap(fn: DegradeFn) -> DegradeFn:
        if name in _DEGRADATIONS:
            raise ValueError(f"degradation {name!r} is already registered")
        _DEGRADATIONS[name] = Degradation(name, description, fn, margin)
        return fn

    return wrap


def get_degradation(name: str) -> Degradation:
    try:
        return _DEGRADATIONS[name]
    except KeyError:
        raise KeyError(f"unknown degradation {name!r} (known: {', '.join(sorted(_DEGRADATIONS))})") from None


def list_degradations() -> list[Degradation]:
    return [_DEGRADATIONS[k] for k in sorted(_DEGRADATIONS)]


def check_image(img: np.ndarray) -> np.ndarray:
    """Return ``img`` as float32 ``[H, W, 3]``; raise ValueError on any other layout."""
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an image of shape [H, W, 3], got {img.shape}")
    if not np.issubdtype(img.dtype, np.floating):
        raise ValueError(f"expected a float image in [0, 1], got dtype {img.dtype}")
    return img.astype(np.float32, copy=False)
