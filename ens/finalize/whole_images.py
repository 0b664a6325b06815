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
from ens.finalize.report import gain_recovery, recovery
from ens.tiling import Tiled

TILE_OVERLAP = 32  # px shared by neighbouring tiles, at most a quarter of the tile


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


def _entry(q: Quality, fp32: float | None, degraded: float | None) -> dict[str, Any]:
    d: dict[str, Any] = q.to_dict()
    if fp32 is not None:
        d["recovery_pct"] = recovery(q.psnr, fp32)
        d["gain_recovery_pct"] = gain_recovery(q.psnr, fp32, degraded)
    return d


def whole_image_quality(net: torch.nn.Module, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], task: Any,
                        fp32_file: Path, int8_file: Path | None, ptq_file: Path | None, threads: int,
                        fuse_qdq: bool, overlap: int = TILE_OVERLAP,
                        log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """PSNR/SSIM (the task's conventions) on ``pairs`` of whole images: degraded input, the FP32 network untiled
    (PyTorch), and each ONNX file tiled at its own input shape (ONNX Runtime)."""
    deg = evaluate(None, pairs, task)
    fp32_torch = evaluate(net, pairs, task, batch_size=1)
    files = {"fp32_onnx": fp32_file, "int8_qdr": int8_file, "int8_ptq": ptq_file}
    out: dict[str, Any] = {
        "images": len(pairs), "sizes": [list(p[0].shape[-2:]) for p in pairs], "overlap": overlap,
        "degraded": deg.to_dict(), "fp32_torch_untiled": fp32_torch.to_dict(),
    }
    fp32_onnx: float | None = None
    for name, path in files.items():
        if path is None:
            continue
        model = ex.OnnxModel(path, threads, fuse_qdq=fuse_qdq if name != "fp32_onnx" else True)
        shape = model.sess.get_inputs()[0].shape
        out["tile"] = [int(shape[-2]), int(shape[-1])]
        out["overlap"] = min(overlap, min(out["tile"]) // 4)
        tiled = Tiled(model, (shape[-2], shape[-1]), out["overlap"], batch=model.batch or 1)
        q = evaluate(tiled, pairs, task, batch_size=1)
        out[name] = _entry(q, fp32_onnx, deg.psnr) if name != "fp32_onnx" else q.to_dict()
        if name == "fp32_onnx":
            fp32_onnx = q.psnr
    if "int8_qdr" in out and "int8_ptq" in out:
        out["qdr_minus_ptq_db"] = round(out["int8_qdr"]["psnr"] - out["int8_ptq"]["psnr"], 4)
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
    return f"whole held-out images ({w['images']}, tiled {tile}): " + ", ".join(parts) + " dB"
