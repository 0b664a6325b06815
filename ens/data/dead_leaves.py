"""Dead-leaves images: procedural training images with natural-image statistics.

An occlusion model (Matheron; Lee, Mumford and Huang 2001): opaque disks fall one behind the other until the
image is covered. With radii drawn from ``p(r) ~ r^-3`` the image is approximately scale invariant, with the
power spectrum and the sharp occluding edges of natural photographs; Achddou et al. (2021, "Synthetic images
as a regularity prior for image restoration neural networks") train restoration networks on them alone
close to natural-image training. Here they add sharp edges at every scale and orientation to the few
embedded photographs, which is what a deblurring network must learn to restore.

Colours are drawn from the embedded training photographs' pixels (so the colour statistics are natural), and
each disk carries a gentle linear shading, so that not every region is flat.
"""

from __future__ import annotations

import numpy as np

#: radius range (px) and the power-law exponent of the radius density
R_MIN, R_MAX_FRACTION, ALPHA = 2.0, 0.25, 3.0


def _radii(rng: np.random.Generator, n: int, r_min: float, r_max: float, alpha: float) -> np.ndarray:
    """``n`` radii with density proportional to ``r^-alpha`` on ``[r_min, r_max]`` (inverse CDF)."""
    a = 1.0 - alpha
    u = rng.random(n)
    return (r_min**a + u * (r_max**a - r_min**a)) ** (1.0 / a)


def dead_leaves(rng: np.random.Generator, size: int = 512, palette: np.ndarray | None = None,
                max_disks: int = 40000) -> np.ndarray:
    """One ``[size, size, 3]`` float32 image in [0, 1].

    Disks are placed front to back: each fills only the pixels no earlier disk covered, which is the same
    image as dropping them back to front, but stops as soon as the image is covered. ``palette``: ``[N, 3]``
    colours to draw from (default: uniform RGB)."""
    img = np.zeros((size, size, 3), dtype=np.float32)
    free = np.ones((size, size), dtype=bool)
    r_max = R_MAX_FRACTION * size
    batch = 512
    placed = 0
    while placed < max_disks:
        radii = _radii(rng, batch, R_MIN, r_max, ALPHA)
        centres = rng.uniform(-r_max / 2, size + r_max / 2, size=(batch, 2))
        colours = (palette[rng.integers(len(palette), size=batch)] if palette is not None
                   else rng.random((batch, 3)))
        slopes = rng.normal(0.0, 0.15, size=(batch, 2)).astype(np.float32)
        for (cx, cy), r, col, (sx, sy) in zip(centres, radii, colours, slopes, strict=True):
            x0, x1 = max(0, int(cx - r)), min(size, int(cx + r) + 1)
            y0, y1 = max(0, int(cy - r)), min(size, int(cy + r) + 1)
            if x0 >= x1 or y0 >= y1:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1]
            dx, dy = (xx - cx) / r, (yy - cy) / r
            m = (dx * dx + dy * dy <= 1.0) & free[y0:y1, x0:x1]
            if not m.any():
                continue
            shade = (sx * dx + sy * dy)[m][:, None]
            img[y0:y1, x0:x1][m] = np.clip(col[None, :] * (1.0 + shade), 0.0, 1.0)
            free[y0:y1, x0:x1][m] = False
        placed += batch
        if not free.any():
            break
    if free.any():  # what the smallest disks never reached: the mean colour (a handful of pixels)
        img[free] = img[~free].mean(axis=0) if (~free).any() else 0.5
    return img


def colour_palette(images: list[np.ndarray], n: int = 4096, seed: int = 0) -> np.ndarray:
    """``n`` pixel colours sampled uniformly from ``images`` (``[H, W, 3]`` float in [0, 1])."""
    rng = np.random.default_rng(seed)
    per = max(1, n // max(1, len(images)))
    out = []
    for im in images:
        flat = im.reshape(-1, 3)
        out.append(flat[rng.integers(len(flat), size=per)])
    return np.concatenate(out).astype(np.float32)
