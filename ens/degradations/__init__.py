"""Synthetic degradations, keyed by name; a new degradation is one ``register_degradation`` call.

Every degradation is ``fn(clean, rng) -> degraded``:

- ``clean`` is a float32 array ``[H, W, 3]`` in [0, 1];
- ``rng`` is a :class:`numpy.random.Generator`, the only source of randomness, so the result is
  deterministic under the generator's seed;
- the result is a float32 array of the same shape, clipped to [0, 1].

``margin`` is how many pixels around a patch the degradation reads (half the largest blur kernel,
for instance): the data pipeline degrades a crop that is ``2 * margin`` larger and keeps its centre,
so patches have no artificial border effects.

Registered here (see each module for the models):

=====================  ==============================================================================
``motion_blur``        camera-shake trajectories (curved, varied length/angle, abrupt shakes), in linear light
``rain_streaks``       1-3 layers of streaks (density, angle, length, width), screen-blended, optional veil
``gaussian_noise_15``  additive white Gaussian noise, sigma 15/255 (likewise ``_25``, ``_50``)
``gaussian_noise``     blind: sigma drawn from {15, 25, 50}/255 per image
``poisson_gaussian``   real-noise-like: heteroscedastic shot+read noise on a Bayer mosaic, white balance,
                       bilinear demosaicking (spatially correlated), sRGB gamma, 8-bit quantisation
``bicubic_x2``         MATLAB-style bicubic down by 2 then up by 2 (same size in and out); also ``_x3``, ``_x4``
=====================  ==============================================================================
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


# sRGB transfer curves (IEC 61966-2-1), used by the physically based models.
def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


# Register the built-in models (imported for their side effect).
from ens.degradations import blur as _blur  # noqa: E402,F401
from ens.degradations import noise as _noise  # noqa: E402,F401
from ens.degradations import rain as _rain  # noqa: E402,F401
from ens.degradations import resize as _resize  # noqa: E402,F401

__all__ = [
    "Degradation",
    "DegradeFn",
    "check_image",
    "get_degradation",
    "linear_to_srgb",
    "list_degradations",
    "register_degradation",
    "srgb_to_linear",
]
