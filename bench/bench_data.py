"""Data loading speed: pool generation and batch serving, per task. Prints one JSON object.

    python bench/bench_data.py [--patches 1024] [--patch 64] [--batch 16] [--tasks deblur,derain,...]

- ``generate_patches_per_s``: cutting + degrading the embedded training pool (once per run; cached after).
- ``serve_patches_per_s``: an epoch of shuffled, augmented float32 batches from the pool (every epoch).
- ``folder_patches_per_s``: reading a synthetic paired folder (PNG decode + crop).
- ``image_load_s``: loading and rescaling scikit-image's photographs (once per process).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from ens.data import PairBatches, clear_cache, load_pairs
from ens.data.embedded import train_images, val_images
from ens.data.fakes import make_paired
from ens.tasks import list_tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--patches", type=int, default=1024)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--tasks", default="deblur,derain,denoise,denoise_real,sr_x2")
    args = ap.parse_args()

    t0 = time.perf_counter()
    train_images()
    val_images()
    result: dict = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min": os.getloadavg()[0],
        "image_load_s": round(time.perf_counter() - t0, 2),
        "patches": args.patches,
        "patch": args.patch,
        "tasks": {},
    }
    names = {t.name for t in list_tasks()}
    for name in args.tasks.split(","):
        if name not in names:
            raise SystemExit(f"unknown task {name}")
        patch = args.patch - args.patch % {"sr_x3": 3}.get(name, 1)
        row = {}
        for workers in (1, 2):
            clear_cache()
            t = time.perf_counter()
            ds = load_pairs(name, None, "train", patch, 0, args.patches, workers=workers)
            row[f"generate_patches_per_s_workers{workers}"] = round(args.patches / (time.perf_counter() - t), 1)
        batches = PairBatches(ds, args.batch, seed=0)
        rates = []
        for _ in range(args.epochs):
            t = time.perf_counter()
            n = sum(d.shape[0] for d, _ in batches)
            rates.append(n / (time.perf_counter() - t))
        row["serve_patches_per_s_median"] = round(sorted(rates)[len(rates) // 2], 1)
        result["tasks"][name] = row

    with tempfile.TemporaryDirectory() as tmp:
        root = make_paired(Path(tmp) / "pairs", n=40, size=(256, 320))
        for workers in (1, 2):
            clear_cache()
            t = time.perf_counter()
            load_pairs("derain", root, "train", args.patch, 0, args.patches, workers=workers)
            result[f"folder_patches_per_s_workers{workers}"] = round(args.patches / (time.perf_counter() - t), 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
