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

# the built-in models register themselves when imported
from ens.degradations import blur, noise, rain, resize  # noqa: F401
from ens.degradations.color import linear_to_srgb, srgb_to_linear
from ens.degradations.registry import (
    Degradation,
    DegradeFn,
    check_image,
    get_degradation,
    list_degradations,
    register_degradation,
)

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
