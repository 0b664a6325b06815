"""Rain streaks, rendered as layers of motion-blurred drops and blended as rain appears on camera.

Per image, 1-3 layers (from near to far: longer, wider and sparser, then shorter, thinner, denser):

- a shared fall angle, mostly near vertical (normal, sd 15 degrees, clipped at +-40), each layer
  jittered by a few degrees (wind);
- drops are sparse random seeds of random brightness: 0.025%-0.6% of the pixels (log-uniform) for the
  nearest layer, 2x and 3x that for the farther ones;
- each drop is drawn as a streak: length 8-45 px, a Gaussian cross-section (sd 0.4-1.4 px, i.e.
  about 1-3 px wide) and a tapered profile along its length (bright in the middle, fading at the
  ends), by convolving the seeds with that streak kernel;
- layers combine as light does (``1 - prod(1 - a_l R_l)``) and the rain is *screen*-blended onto
  the scene, ``O = 1 - (1 - B)(1 - c R)``: streaks brighten dark areas a lot and bright areas a
  little, which is how the semi-transparent drops of real rain look (additive-with-clip would
  saturate; alpha would darken bright skies);
- with probability 0.5, a veil of rain accumulation (fog), ``O = t O + (1 - t) A``, with
  transmission t in [0.8, 1] and a grey atmospheric light A in [0.7, 1].

Streaks are rendered on a canvas larger than the image by one streak length on each side, so drops
from outside the frame enter it as they would in a real photograph.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import fftconvolve

from ens.degradations.registry import register_degradation


def streak_kernel(length: float, angle: float, width: float) -> np.ndarray:
    """A streak PSF: ``angle`` in radians from vertical, Gaussian cross-section of sd ``width``; peak 1."""
    half = int(math.ceil(length / 2 + 2 * width)) + 1
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    ux, uy = math.sin(angle), math.cos(angle)  # along the streak
    along = xx * ux + yy * uy
    across = -xx * uy + yy * ux
    s = np.clip(along / (length / 2), -1.0, 1.0)
    taper = np.where(np.abs(along) <= length / 2 + width, np.sqrt(np.clip(1.0 - s * s, 0.0, 1.0)) + 0.15, 0.0)
    k = np.exp(-0.5 * (across / width) ** 2) * taper
    return (k / k.max()).astype(np.float32)


def rain_layer(
    rng: np.random.Generator,
    shape: tuple[int, int],
    *,
    density: float,
    length: float,
    angle: float,
    width: float,
) -> np.ndarray:
    """One layer of streaks in [0, 1], shape ``[H, W]``."""
    h, w = shape
    pad = int(math.ceil(length / 2 + 2 * width)) + 1
    seeds = (rng.random((h + 2 * pad, w + 2 * pad)) < density) * rng.uniform(0.5, 1.0, (h + 2 * pad, w + 2 * pad))
    k = streak_kernel(length, angle, width)
    layer = fftconvolve(seeds, k, mode="same")[pad : pad + h, pad : pad + w]
    return np.clip(layer, 0.0, 1.0).astype(np.float32)


def render_rain(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """The combined streak map (``[H, W]`` in [0, 1]) of 1-3 random layers."""
    base = math.radians(float(np.clip(rng.normal(0.0, 15.0), -40.0, 40.0)))
    n_layers = int(rng.integers(1, 4))
    keep = np.ones(shape, dtype=np.float32)
    for i in range(n_layers):
        near = 1.0 - i / 3.0  # 1 for the nearest layer, smaller for far ones
        layer = rain_layer(
            rng,
            shape,
            density=float(np.exp(rng.uniform(math.log(2.5e-4), math.log(6e-3)))) * (1 + i),
            length=rng.uniform(8.0, 45.0) * (0.5 + 0.5 * near),
            angle=base + math.radians(rng.normal(0.0, 3.0)),
            width=rng.uniform(0.4, 1.4) * (0.6 + 0.4 * near),
        )
        keep *= 1.0 - rng.uniform(0.45, 0.95) * layer
    return 1.0 - keep


@register_degradation(
    "rain_streaks",
    "rain: 1-3 streak layers of varied density, angle, length and width, screen-blended, optional veil",
)
def rain_streaks(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = clean.shape[:2]
    rain = render_rain(rng, (h, w))
    colour = rng.uniform(0.85, 1.0)
    out = 1.0 - (1.0 - clean) * (1.0 - colour * rain[:, :, None])
    if rng.random() < 0.5:
        t = rng.uniform(0.8, 1.0)
        out = t * out + (1.0 - t) * rng.uniform(0.7, 1.0)
    return out.astype(np.float32)
