"""Whole images through a network of one fixed input shape: overlapping tiles, averaged where they overlap.

An exported ONNX file takes one shape (``1x3x256x256``); a held-out image is larger or smaller. Each image is
cut into tiles of that shape, ``overlap`` px shared between neighbours (the last tile of a row or column is
moved back to end at the border, so no tile hangs over it); an image smaller than a tile is padded (reflect,
or replicate where the image is too small to reflect) and the padding cropped from the output. Overlapping
outputs are averaged with equal weights, as Restormer's and SwinIR's tiled test modes do.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``size`` px, neighbours sharing at least ``overlap`` px."""
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile {tile}, overlap {overlap}")
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return [*starts, size - tile]


def _pad_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    ph, pw = max(0, h - x.shape[-2]), max(0, w - x.shape[-1])
    if not (ph or pw):
        return x
    mode = "reflect" if (ph < x.shape[-2] and pw < x.shape[-1]) else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def run_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: tuple[int, int], overlap: int,
              batch: int = 1) -> torch.Tensor:
    """``fn`` over overlapping ``tile``-sized tiles of the image ``x`` ([C, H, W]); the averaged [C', H, W] output.
    ``fn`` takes exactly ``batch`` tiles at a time ([batch, C, th, tw]); a short last batch is filled with copies."""
    th, tw = tile
    h, w = x.shape[-2:]
    padded = _pad_to(x.unsqueeze(0), th, tw)[0]
    ph, pw = padded.shape[-2:]
    boxes = [(y, xx) for y in tile_starts(ph, th, overlap) for xx in tile_starts(pw, tw, overlap)]
    out: torch.Tensor | None = None
    count = torch.zeros(1, ph, pw)
    for i in range(0, len(boxes), batch):
        group = boxes[i : i + batch]
        tiles = torch.stack([padded[:, y : y + th, xx : xx + tw] for y, xx in group])
        if len(group) < batch:
            tiles = torch.cat([tiles, tiles[-1:].expand(batch - len(group), *tiles.shape[1:])])
        pred = fn(tiles).float().cpu()
        if out is None:
            out = torch.zeros(pred.shape[1], ph, pw)
        for k, (y, xx) in enumerate(group):
            out[:, y : y + th, xx : xx + tw] += pred[k]
            count[:, y : y + th, xx : xx + tw] += 1
    assert out is not None
    return (out / count)[:, :h, :w]


class Tiled(nn.Module):
    """``inner`` (a network of one input shape, e.g. :class:`ens.finalize.export.OnnxModel`) run tiled over every
    image of a batch, so that :func:`ens.evaluate.evaluate` scores whole images with it."""

    def __init__(self, inner: Callable[[torch.Tensor], torch.Tensor], tile: tuple[int, int], overlap: int = 32,
                 batch: int = 1) -> None:
        super().__init__()
        self.inner, self.tile, self.overlap, self.batch = inner, (int(tile[0]), int(tile[1])), overlap, batch
        tile_starts(max(self.tile), min(self.tile), overlap)  # refuses an overlap as large as a tile

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([run_tiled(self.inner, img, self.tile, self.overlap, self.batch) for img in x])
