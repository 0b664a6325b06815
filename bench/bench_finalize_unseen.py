"""A finalized model's files on photographs outside the embedded data: an independent test of what ships.

    python bench/bench_finalize_unseen.py final/                 # one ens finalize output folder
    python bench/bench_finalize_unseen.py final-a/ final-b/      # several, side by side

The held-out split of the embedded data has two whole images; this scores ``model_fp32.onnx``,
``model_int8.onnx`` and a plain-PTQ INT8 file of the same FP32 graph (ONNX Runtime ``quantize_static``,
calibrated as finalize calibrates its own baseline) on five more photographs that installed packages ship
and no zoo or finalize ever trained on (``bench_zoo.unseen_images``: matplotlib's grace_hopper, scikit-image's
camera, coins, moon, page), each degraded by the finalized task's default degradation (seeded), tiled at the
files' input shape as finalize scores whole images. Prints one JSON object: PSNR per image and the mean, per file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_zoo import unseen_pairs  # noqa: E402


def score_folder(folder: Path, seed: int, threads: int) -> dict:
    from ens.data import load_pairs
    from ens.evaluate import evaluate
    from ens.finalize import export as ex
    from ens.finalize.pipeline import ptq_calibration
    from ens.finalize.whole_images import calibration_mosaics, degradation_levels, tile_overlap
    from ens.tasks import get_task
    from ens.tiling import Tiled

    report = json.loads((folder / "report.json").read_text())
    task = get_task(report["task"])
    level = degradation_levels(task, synthetic=True)
    level = level[len(level) // 2]  # blind denoising: the middle sigma (25)
    pairs = unseen_pairs(level, seed)  # bench_zoo's photographs, degraded by this task
    fused = "QDQ fusion off" not in report["quality"].get("int8_runtime", "")
    files = {"fp32": folder / "model_fp32.onnx", "int8_shipped": folder / "model_int8.onnx"}
    with tempfile.TemporaryDirectory() as tmp:
        if files["int8_shipped"].is_file():
            train = load_pairs(task, None, "train", patch_size=report["training"]["train_patch_size"], seed=0,
                               num_patches=512)
            seven = report.get("quantization", {}).get("weight_bits") == 7
            calib = calibration_mosaics(ptq_calibration(train, 32), report["shape"])
            files["int8_ptq"] = ex.ptq_int8(files["fp32"], Path(tmp) / "ptq.onnx", calib, reduce_range=seven)
        rows: dict[str, dict[str, float]] = {
            "degraded": {n: round(evaluate(None, [p], level, with_ssim=False).psnr, 3) for n, p in pairs.items()}}
        for key, path in files.items():
            if not path.is_file():
                continue
            model = ex.OnnxModel(path, threads, fuse_qdq=fused or key == "fp32")
            tile = tuple(int(s) for s in model.sess.get_inputs()[0].shape[-2:])
            tiled = Tiled(model, tile, tile_overlap(tile), model.batch or 1)
            rows[key] = {n: round(evaluate(tiled, [p], level, batch_size=1, with_ssim=False).psnr, 3)
                         for n, p in pairs.items()}
    for r in rows.values():
        r["mean"] = round(float(np.mean(list(r.values()))), 3)
    out = {"folder": str(folder), "task": task.name, "degradation": level.name, "arch": report.get("arch"),
           "selection": report.get("training", {}).get("qat", {}).get("extra", {}).get("selection"),
           "psnr": rows}
    if "int8_shipped" in rows:
        out["int8_minus_fp32_db"] = round(rows["int8_shipped"]["mean"] - rows["fp32"]["mean"], 3)
    if "int8_ptq" in rows:
        out["int8_minus_ptq_db"] = round(rows["int8_shipped"]["mean"] - rows["int8_ptq"]["mean"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="ens finalize output folders")
    ap.add_argument("--seed", type=int, default=1234, help="seeds the degradations")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    load = os.getloadavg()
    results = [score_folder(f, args.seed, args.threads) for f in args.folders]
    print(json.dumps({"load_avg_1_5_15": [round(x, 2) for x in load], "results": results}, indent=1))


if __name__ == "__main__":
    main()
