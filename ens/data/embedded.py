"""The embedded default data: photographs that scikit-image ships (they load offline).

The split is by image, fixed, and never changes with the seed:

- **validation** (never cropped for training): ``chelsea`` (the cat, 300x451; ``skimage.data.cat`` is
  the same photo) and ``coffee`` (400x600);
- **training**: the colour photographs ``astronaut`` (512x512), ``rocket`` (427x640),
  ``stereo_motorcycle`` (both views, 500x741, drawn as one source), ``immunohistochemistry``
  (512x512), ``hubble_deep_field`` (872x1000) and ``retina`` (1411x1411), plus the greyscale
  textures ``brick``, ``grass``, ``gravel`` (512x512, replicated to RGB) at half the weight of a
  colour photograph, for fine texture that the colour photos lack.

Training images are also used at 0.75x and 0.5x (MATLAB-bicubic downscaled), which gives sharper,
more varied content per patch; validation images are used at full size only.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from ens.degradations.resize import imresize

VAL_IMAGES: tuple[str, ...] = ("chelsea", "coffee")
# (source name, scikit-image loaders, weight)
TRAIN_SOURCES: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("astronaut", ("astronaut",), 1.0),
    ("rocket", ("rocket",), 1.0),
    ("stereo_motorcycle", ("stereo_motorcycle:0", "stereo_motorcycle:1"), 1.0),
    ("immunohistochemistry", ("immunohistochemistry",), 1.0),
    ("hubble_deep_field", ("hubble_deep_field",), 1.0),
    ("retina", ("retina",), 1.0),
    ("brick", ("brick",), 0.5),
    ("grass", ("grass",), 0.5),
    ("gravel", ("gravel",), 0.5),
)
TRAIN_SCALES: tuple[float, ...] = (1.0, 0.75, 0.5)


def train_image_names() -> list[str]:
    return [name for name, _, _ in TRAIN_SOURCES]


@cache
def load_skimage(spec: str) -> np.ndarray:
    """``"name"`` or ``"name:index"`` from ``skimage.data`` as float32 ``[H, W, 3]`` in [0, 1] (cached; read-only)."""
    import skimage.data

    name, _, index = spec.partition(":")
    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):
        img = img[int(index or 0)]
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = img[:, :, :3].astype(np.float32) / 255.0
    img.setflags(write=False)
    return img


@cache
def _scaled(spec: str, scale: float) -> np.ndarray:
    img = load_skimage(spec)
    if scale == 1.0:
        return img
    h, w = img.shape[:2]
    out = np.clip(imresize(img, (round(h * scale), round(w * scale))), 0.0, 1.0)
    out.setflags(write=False)
    return out


def train_images() -> list[tuple[str, list[np.ndarray], float]]:
    """Per training source: its name, its images at every scale in :data:`TRAIN_SCALES`, its weight."""
    out = []
    for name, specs, weight in TRAIN_SOURCES:
        out.append((name, [_scaled(s, sc) for s in specs for sc in TRAIN_SCALES], weight))
    return out


def train_whole_images() -> list[tuple[str, np.ndarray]]:
    """One image per training source (its first view), at full scale."""
    return [(name, load_skimage(specs[0])) for name, specs, _ in TRAIN_SOURCES]


def val_images() -> list[tuple[str, np.ndarray]]:
    return [(name, load_skimage(name)) for name in VAL_IMAGES]
