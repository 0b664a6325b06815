"""How much of a zoo's quality depends on the context a network sees: whole images against tiles.

    python bench/bench_context.py                         # every prebuilt zoo, tiles of 48, 128 and 256 px
    python bench/bench_context.py zoo/derain-tiny --tiles 48,96

For each zoo: PSNR on its whole held-out images (the quality report's split) of the teacher (all T), of
each full-resolution slot swapped alone to M and to E, and of all-M and all-E, when each network sees the
whole image and when it sees non-overlapping tiles of N px (``ens.tiling.run_tiled``, overlap 0). A teacher
whose attention pools over the whole image (Restormer's transposed attention) gains from context that a
48-px distillation patch never shows its surrogates; a swap that costs more on whole images than on tiles
points at that. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch


def _psnr(net, pairs, task, tile: int) -> float:
    from ens.metrics import psnr
    from ens.tiling import run_tiled

    vals = []
    for deg, clean in pairs:
        if tile:
            out = run_tiled(net, deg, (tile, tile), 0)[None]
        else:
            out = net(deg[None])
        vals.append(float(psnr(out.clamp(0, 1), clean[None], **task.metric_kwargs())))
    return sum(vals) / len(vals)


def context_figures(zoo_dir: Path, tiles: list[int]) -> dict:
    from blocks.unet import FULL_RES_STAGES
    from ens.tasks import get_task
    from ens.zoo.build import held_out_images
    from ens.zoo.store import Zoo

    zoo = Zoo.load(zoo_dir)
    task = get_task(zoo.manifest.task)
    net = zoo.supernet().eval()
    pairs = held_out_images(task, None, 8)
    all_t = {s: ["T"] * len(seq) for s, seq in net.stages.items()}
    nets = {"T": all_t}
    for stage in FULL_RES_STAGES:
        for i in range(len(all_t[stage])):
            for k in ("M", "E"):
                ks = {s: list(v) for s, v in all_t.items()}
                ks[stage][i] = k
                nets[f"{stage}.{i}:{k}"] = ks
    for k in ("M", "E"):
        nets[f"all-{k}"] = {s: [k] * len(seq) for s, seq in all_t.items()}
    rows: dict[str, dict] = {}
    with torch.no_grad():
        for tile in [0, *tiles]:
            label = "whole" if tile == 0 else f"tile{tile}"
            psnrs = {}
            for name, ks in nets.items():
                net.set_kinds(ks)
                psnrs[name] = _psnr(net, pairs, task, tile)
            rows[label] = {"teacher_psnr": round(psnrs["T"], 4),
                           "delta_vs_teacher": {n: round(p - psnrs["T"], 4) for n, p in psnrs.items() if n != "T"}}
    return {"zoo_id": zoo.zoo_id, "task": task.name, "images": [list(d.shape) for d, _ in pairs],
            "distill_patch": zoo.manifest.distill.get("patch_size", zoo.manifest.patch_size), "by_context": rows}


def main() -> None:
    from ens.zoo.prebuilt import PREBUILT_ROOT, prebuilt_names

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoos", nargs="*", type=Path, help="zoo folders (default: every prebuilt zoo)")
    ap.add_argument("--tiles", default="48,128,256", help="tile sizes in px, comma-separated")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    zoos = args.zoos or [PREBUILT_ROOT / n for n in prebuilt_names()]
    tiles = [int(t) for t in args.tiles.split(",") if t.strip()]
    t0 = time.monotonic()
    out = {"what": "PSNR on whole held-out images, each network seeing the whole image or non-overlapping tiles",
           "load_average_start": os.getloadavg(), "threads": args.threads,
           "zoos": [context_figures(z, tiles) for z in zoos]}
    out["seconds"] = round(time.monotonic() - t0, 1)
    out["load_average_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
