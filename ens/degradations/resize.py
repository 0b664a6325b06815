"""Bicubic resizing as MATLAB's ``imresize`` does it (the SR papers' degradation), and the SR task's
same-size degradation.

``imresize`` uses the Keys cubic with a = -0.5, widens the kernel by ``1/scale`` when shrinking
(antialiasing) and reflects at the borders (``symmetric``). It is written here as a few-tap gather per axis, which is
exact, vectorised, and uses no BLAS threads.

Super-resolution is run with the same-size convention of restoration U-Nets with a global residual
(as in VDSR/SRCNN): the low-resolution image is bicubic-*down*sampled by the scale and bicubic-
*up*sampled back to the original size, and the network restores the detail. ``bicubic_x{s}``
does that. For paired folders whose inputs are genuinely smaller (``target = s * input``), the data
readers upsample the input the same way.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ens.degradations.registry import register_degradation


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))


@lru_cache(maxsize=256)
def resize_weights(in_len: int, out_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights (each ``[out_len, taps]``) of MATLAB ``imresize(..., 'bicubic')``
    along one axis: ``out[o] = sum_p weights[o, p] * in[indices[o, p]]``."""
    scale = out_len / in_len
    width = 4.0 / scale if scale < 1 else 4.0
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    p = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(p)[None, :]  # 1-based source positions
    dist = u[:, None] - idx
    wts = scale * _cubic(dist * scale) if scale < 1 else _cubic(dist)
    wts = wts / wts.sum(axis=1, keepdims=True)
    # MATLAB's symmetric border: ..., 2, 1, | 1, 2, ..., n, | n, n-1, ...
    period = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    src = period[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    keep = np.abs(wts).sum(axis=0) > 0  # drop all-zero taps, as MATLAB does
    src, wts = src[:, keep], wts[:, keep].astype(np.float32)
    src.setflags(write=False)  # cached: shared between callers
    wts.setflags(write=False)
    return src, wts


def resize_matrix(in_len: int, out_len: int) -> np.ndarray:
    """The same resampling as a dense ``[out_len, in_len]`` matrix (for tests and small inputs)."""
    src, wts = resize_weights(in_len, out_len)
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    np.add.at(mat, (np.repeat(np.arange(out_len), src.shape[1]), src.ravel()), wts.ravel())
    return mat


def _resize_axis0(x: np.ndarray, out_len: int) -> np.ndarray:
    src, wts = resize_weights(x.shape[0], out_len)
    w = wts.reshape(wts.shape + (1,) * (x.ndim - 1))
    out = x[src[:, 0]] * w[:, 0]
    for p in range(1, src.shape[1]):  # a few taps; elementwise, no BLAS threads (cheap on busy CPUs)
        out += x[src[:, p]] * w[:, p]
    return out


def imresize(img: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Resize ``[H, W, C]`` (or ``[H, W]``) to ``out_hw`` as MATLAB's bicubic ``imresize``; float32 out."""
    x = np.asarray(img, dtype=np.float32)
    oh, ow = out_hw
    out = _resize_axis0(x, oh)
    out = _resize_axis0(np.swapaxes(out, 0, 1), ow)
    return np.ascontiguousarray(np.swapaxes(out, 0, 1))


def down_up(clean: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic down by ``scale`` (to ``floor(H/scale)``) and back up to the input's size."""
    h, w = clean.shape[:2]
    lr = imresize(clean, (max(1, h // scale), max(1, w // scale)))
    return imresize(lr, (h, w))


def _sr(scale: int):
    def fn(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return down_up(clean, scale)

    fn.__name__ = f"bicubic_x{scale}"
    return fn


for _s in (2, 3, 4):
    register_degradation(
        f"bicubic_x{_s}",
        f"x{_s} super-resolution: MATLAB bicubic down by {_s}, then up to the same size",
        margin=4 * _s,
    )(_sr(_s))
