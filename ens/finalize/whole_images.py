"""finalize's quality on whole held-out images, as the papers report it, by the files that ship.

The patch split (32 crops of the zoo's patch size) is a quick check; between seeds its PTQ figure moved by
0.08 dB, the size of the gains being compared. Here the shipped ``model_fp32.onnx`` and ``model_int8.onnx``
(and a plain-PTQ INT8 file of the same deployed FP32 graph) restore the first ``limit`` whole held-out images,
tiled at their input shape (:mod:`ens.tiling`); the FP32 network also runs on each whole image untiled in
PyTorch, which shows what the tiling costs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ens.evaluate import Quality, evaluate
from ens.finalize import export as ex
from ens.finalize.report import quality_entry
from ens.tiling import Tiled

TILE_OVERLAP = 32  # px shared by neighbouring tiles, at most a quarter of the tile (64 or 0: within 0.03 dB)


def calibration_mosaics(patches: Sequence[np.ndarray], shape: Sequence[int]) -> list[np.ndarray]:
    """The PTQ calibration patches ([1, C, p, p] each) laid side by side into inputs of the deployed ``shape``,
    every patch used once (the last mosaic wraps round to the first patches)."""
    n, c, h, w = (int(s) for s in shape)
    p = patches[0].shape[-1]
    rows, cols = -(-h // p), -(-w // p)
    per = n * rows * cols
    out = []
    for start in range(0, len(patches), per):
        tiles = [patches[(start + k) % len(patches)][0] for k in range(per)]
        grid = [np.concatenate(tiles[(b * rows + r) * cols : (b * rows + r + 1) * cols], axis=-1)
                for b in range(n) for r in range(rows)]
        imgs = [np.concatenate(grid[b * rows : (b + 1) * rows], axis=-2)[:c, :h, :w] for b in range(n)]
        out.append(np.ascontiguousarray(np.stack(imgs), dtype=np.float32))
    return out


def tile_overlap(tile: tuple[int, int]) -> int:
    return min(TILE_OVERLAP, min(tile) // 4)


def _files_quality(net: torch.nn.Module, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], task: Any,
                   models: dict[str, tuple[torch.nn.Module, tuple[int, int], int]]) -> dict[str, Quality]:
    out = {"degraded": evaluate(None, pairs, task), "fp32_torch_untiled": evaluate(net, pairs, task, batch_size=1)}
    for name, (model, tile, batch) in models.items():
        out[name] = evaluate(Tiled(model, tile, tile_overlap(tile), batch), pairs, task, batch_size=1)
    return out


def _entries(q: dict[str, Quality]) -> dict[str, Any]:
    fp32 = q["fp32_onnx"].psnr
    deg = q["degraded"].psnr
    out = {k: (quality_entry(v, fp32, deg) if k.startswith("int8") else v.to_dict()) for k, v in q.items()}
    if "int8_qdr" in q and "int8_ptq" in q:
        out["qdr_minus_ptq_db"] = round(q["int8_qdr"].psnr - q["int8_ptq"].psnr, 4)
    return out


def whole_image_quality(net: torch.nn.Module, pair_sets: dict[str, Sequence[tuple[torch.Tensor, torch.Tensor]]],
                        task: Any, fp32_file: Path, int8_file: Path | None, ptq_file: Path | None, threads: int,
                        fuse_qdq: bool, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """PSNR/SSIM (``task``'s conventions) on whole images: degraded input, the FP32 network untiled (PyTorch), and
    each ONNX file tiled at its own input shape (ONNX Runtime). ``pair_sets``: the held-out images at each
    degradation level (one set, or one per level, e.g. per noise sigma, as the papers report blind denoising); with
    several, the headline figures are their mean and ``levels`` holds each."""
    files = {"fp32_onnx": fp32_file, "int8_qdr": int8_file, "int8_ptq": ptq_file}
    models = {}
    for name, path in files.items():
        if path is not None:
            model = ex.OnnxModel(path, threads, fuse_qdq=fuse_qdq if name != "fp32_onnx" else True)
            shape = model.sess.get_inputs()[0].shape
            models[name] = (model, (int(shape[-2]), int(shape[-1])), model.batch or 1)
    per_level = {level: _files_quality(net, pairs, task, models) for level, pairs in pair_sets.items()}
    mean = {k: Quality(float(np.mean([q[k].psnr for q in per_level.values()])),
                       float(np.mean([q[k].ssim for q in per_level.values()]))) for k in next(iter(per_level.values()))}
    first = next(iter(pair_sets.values()))
    tile = models["fp32_onnx"][1]
    out: dict[str, Any] = {"images": len(first), "sizes": [list(p[0].shape[-2:]) for p in first], "tile": list(tile),
                           "overlap": tile_overlap(tile), **_entries(mean)}
    if len(per_level) > 1:
        out["levels"] = {level: _entries(q) for level, q in per_level.items()}
    log(whole_image_line(out))
    return out


def whole_image_line(w: dict[str, Any]) -> str:
    """One log line of :func:`whole_image_quality`'s result."""
    parts = [f"degraded {w['degraded']['psnr']:.3f}", f"FP32 {w['fp32_onnx']['psnr']:.3f}"]
    if "int8_qdr" in w:
        parts.append(f"INT8 QDR {w['int8_qdr']['psnr']:.3f} ({w['int8_qdr']['recovery_pct']}%)")
    if "int8_ptq" in w:
        parts.append(f"PTQ {w['int8_ptq']['psnr']:.3f} ({w['int8_ptq']['recovery_pct']}%)")
    tile = "x".join(str(t) for t in w.get("tile", []))
    levels = f" x {len(w['levels'])} levels, mean" if w.get("levels") else ""
    return f"whole held-out images ({w['images']}{levels}, tiled {tile}): " + ", ".join(parts) + " dB"


def degradation_levels(task: Any, synthetic: bool) -> list[Any]:
    """The tasks whose held-out images are scored: ``task.eval_levels`` where the degradation is synthesized
    (the embedded data or a folder of clean images), else ``task`` itself (paired data fixes the degradation)."""
    from ens.tasks import get_task

    return [get_task(n) for n in task.eval_levels] if (task.eval_levels and synthetic) else [task]
