"""Noise: additive white Gaussian (the synthetic benchmark) and a real-camera-like Poisson-Gaussian model.

Gaussian: ``noisy = clip(clean + N(0, sigma/255))``, sigma 15, 25 or 50 on the 0-255 scale, as in
DnCNN/Restormer's colour Gaussian denoising (we clip to [0, 1], so the degraded image is a valid
image; the benchmarks leave it unclipped, which matters only at sigma 50 near black and white).

Poisson-Gaussian ("real" noise, SIDD-like), after Brooks et al., "Unprocessing images for learned
raw denoising" (CVPR 2019), simplified:

1. decode sRGB to linear light and undo a random white balance (red gain 1.5-2.4, blue 1.4-1.95), so
   the raw red and blue channels are darker and noisier after white balance, as in a camera;
2. on an RGGB Bayer mosaic, draw heteroscedastic noise with variance ``shot * x + read``:
   ``shot`` log-uniform in [1e-4, 1.2e-2] and ``log(read) = 2.18 log(shot) + 1.2 + N(0, 0.26)``
   (Brooks' fit to real sensors);
3. demosaic the *noise* bilinearly (the clean signal is kept exact), which makes it spatially
   correlated over 3x3 and correlated across channels, as in camera sRGB output;
4. re-apply the white balance, encode to sRGB and quantise to 8 bits, as a camera writes its file.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import convolve

from ens.degradations.color import linear_to_srgb, srgb_to_linear
from ens.degradations.registry import register_degradation

GAUSSIAN_SIGMAS = (15, 25, 50)

_K_RB = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 4.0
_K_G = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=np.float32) / 4.0


def add_gaussian_noise(clean: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """``clip(clean + N(0, sigma/255))`` with sigma on the 0-255 scale."""
    noise = rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(sigma / 255.0)
    return np.clip(clean + noise, 0.0, 1.0)


def _bayer_masks(h: int, w: int) -> np.ndarray:
    """``[3, H, W]`` boolean RGGB site masks."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = (yy % 2 == 0) & (xx % 2 == 0)
    b = (yy % 2 == 1) & (xx % 2 == 1)
    return np.stack([r, ~(r | b), b])


def add_poisson_gaussian_noise(
    clean: np.ndarray,
    rng: np.random.Generator,
    *,
    shot: float | None = None,
    read: float | None = None,
    quantize: bool = True,
) -> np.ndarray:
    """Camera-like noise on an sRGB image (see the module docstring). ``shot``/``read`` are variances."""
    h, w = clean.shape[:2]
    if shot is None:
        shot = float(np.exp(rng.uniform(math.log(1e-4), math.log(1.2e-2))))
    if read is None:
        read = float(np.exp(2.18 * math.log(shot) + 1.2 + rng.normal(0.0, 0.26)))
    gains = np.array([rng.uniform(1.5, 2.4), 1.0, rng.uniform(1.4, 1.95)], dtype=np.float32)
    raw = srgb_to_linear(clean) / gains  # [H, W, 3], camera-raw-like intensities
    masks = _bayer_masks(h, w)
    mosaic = np.einsum("chw,hwc->hw", masks.astype(np.float32), raw)
    std = np.sqrt(shot * np.clip(mosaic, 0.0, None) + read).astype(np.float32)
    noise_mosaic = rng.standard_normal((h, w), dtype=np.float32) * std
    noise = np.empty_like(raw)
    for c in range(3):
        k = _K_G if c == 1 else _K_RB
        noise[:, :, c] = convolve(noise_mosaic * masks[c], k, mode="mirror")
    noisy = linear_to_srgb(np.clip((raw + noise) * gains, 0.0, 1.0))
    if quantize:
        noisy = np.round(noisy * 255.0) / 255.0
    return noisy.astype(np.float32)


def _fixed_sigma(sigma: int):
    def fn(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return add_gaussian_noise(clean, rng, sigma)

    fn.__name__ = f"gaussian_noise_{sigma}"
    return fn


for _s in GAUSSIAN_SIGMAS:
    register_degradation(f"gaussian_noise_{_s}", f"additive white Gaussian noise, sigma {_s}/255")(_fixed_sigma(_s))


@register_degradation("gaussian_noise", "blind Gaussian noise: sigma drawn from {15, 25, 50}/255 per image")
def gaussian_noise(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return add_gaussian_noise(clean, rng, float(rng.choice(GAUSSIAN_SIGMAS)))


@register_degradation(
    "poisson_gaussian",
    "real-noise-like: shot+read noise on a Bayer mosaic, white balance, demosaicked, sRGB, 8-bit",
)
def poisson_gaussian(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return add_poisson_gaussian_noise(clean, rng)
