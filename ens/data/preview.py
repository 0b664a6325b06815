"""A picture of a task's data: a grid of (degraded | clean) pairs with labels, for a person to look at."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ens.data.datasets import load_pairs
from ens.data.errors import DataError
from ens.data.io import write_image
from ens.tasks import Task, get_task

PREVIEW_SUFFIXES = (".png", ".jpg", ".jpeg")
_GAP = 6
_BAND = 16


def preview_grid(
    task: Task | str,
    data_dir: str | Path | None = None,
    *,
    n: int = 6,
    size: int | None = None,
    seed: int = 0,
    split: str = "train",
    layout: str = "auto",
    pairs_per_row: int = 2,
) -> np.ndarray:
    """``n`` pairs as float32 ``[H, W, 3]``: each pair is degraded (left) and clean (right), ``size`` px square."""
    task = get_task(task)
    if n < 1:
        raise DataError(f"--n must be at least 1, got {n}")
    size = size or max(task.patch_size, 128)
    size -= size % task.scale
    ds = load_pairs(task, data_dir, split, size, seed, n, layout=layout, augment=False)
    per_row = max(1, min(pairs_per_row, n))
    rows = math.ceil(n / per_row)
    cell = size + _GAP
    width = per_row * (2 * size + _GAP) + (per_row - 1) * 2 * _GAP + 2 * _GAP
    height = _BAND * 2 + rows * cell + _GAP
    canvas = np.ones((height, width, 3), dtype=np.float32)
    for i in range(n):
        deg, clean = ds[i]
        r, c = divmod(i, per_row)
        y = 2 * _BAND + r * cell
        x = _GAP + c * (2 * size + 3 * _GAP)
        canvas[y : y + size, x : x + size] = deg.permute(1, 2, 0).numpy()
        canvas[y : y + size, x + size + _GAP : x + 2 * size + _GAP] = clean.permute(1, 2, 0).numpy()
    source = "embedded photos" if data_dir is None else str(data_dir)
    labels = [(_GAP, 2, f"{task.name} ({task.degradation}), {split} split, {source}")]
    for c in range(per_row):
        x = _GAP + c * (2 * size + 3 * _GAP)
        labels += [(x, _BAND + 2, "degraded"), (x + size + _GAP, _BAND + 2, "clean")]
    return _draw_labels(canvas, labels)


def _draw_labels(canvas: np.ndarray, labels: list[tuple[int, int, str]]) -> np.ndarray:
    try:
        from PIL import Image, ImageDraw
    except ImportError:  # labels are a nicety
        return canvas
    im = Image.fromarray(np.round(canvas * 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for x, y, text in labels:
        draw.text((x, y), text, fill=(0, 0, 0))
    return np.asarray(im, dtype=np.float32) / 255.0


def write_preview(out: str | Path, task: Task | str, data_dir: str | Path | None = None, **kwargs) -> Path:
    """Write :func:`preview_grid` to ``out`` (.png or .jpg); returns the path."""
    out = Path(out).expanduser()
    if out.suffix.lower() not in PREVIEW_SUFFIXES:
        raise DataError(f"cannot write {out}: the preview is a .png or .jpg file")
    if not out.parent.is_dir():
        raise DataError(f"cannot write {out}: folder {out.parent} does not exist")
    return write_image(out, preview_grid(task, data_dir, **kwargs))
