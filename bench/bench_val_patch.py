"""Does the search's quality score rank networks as whole images do? Held-out patches of N px against whole images.

    python bench/bench_val_patch.py                               # every prebuilt zoo
    python bench/bench_val_patch.py zoo/derain-tiny --splits 32x48,8x128 --archs 16

``ens search`` scores each trial zero-shot on the zoo's held-out patches (32 of 48 px at tiny). For each zoo,
``--archs`` random hybrids of T/M/E and as many of every kind the zoo holds (seeded, ``ens.zoo.rank.random_archs``)
are scored on each split ``COUNTxPX`` of held-out patches (``ens.data.load_pairs``, the search's seed) and on the
whole held-out images (the quality report's split). Per split: Kendall's tau-b against the whole-image PSNR,
the mean absolute difference of the dB-against-the-teacher figure (the one the search's 0.3-dB cut uses), and
the seconds one network takes to score. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch


def _score(net, pairs, task) -> tuple[float, float]:
    from ens.evaluate import evaluate

    t0 = time.perf_counter()
    p = evaluate(net, pairs, task).psnr
    return p, time.perf_counter() - t0


def split_fidelity(zoo_dir: Path, splits: list[tuple[int, int]], n_archs: int, seed: int) -> dict:
    from scipy.stats import kendalltau

    from ens.data import load_pairs
    from ens.tasks import get_task
    from ens.zoo.build import held_out_images
    from ens.zoo.rank import random_archs
    from ens.zoo.store import Zoo

    zoo = Zoo.load(zoo_dir)
    task = get_task(zoo.manifest.task)
    net = zoo.supernet().eval()
    kinds = [k for k in zoo.manifest.kinds if k != "T"]
    sets = {"T/M/E": random_archs(net, [k for k in ("M", "E") if k in kinds], n_archs, seed),
            "all kinds": random_archs(net, kinds, n_archs, seed + 1)}
    data = {"whole": held_out_images(task, None, 8)}
    for count, px in splits:
        val = load_pairs(task, None, "val", patch_size=px, seed=0, num_patches=count)
        data[f"{count}x{px}"] = [val[i] for i in range(len(val))]
    all_t = {s: ["T"] * len(seq) for s, seq in net.stages.items()}
    out: dict = {"zoo_id": zoo.zoo_id, "task": task.name, "archs_per_set": n_archs, "splits": {}}
    with torch.no_grad():
        net.set_kinds(all_t)
        teacher = {name: _score(net, pairs, task)[0] for name, pairs in data.items()}
        scores: dict[str, dict[str, list[float]]] = {name: {} for name in data}
        seconds: dict[str, list[float]] = {name: [] for name in data}
        for set_name, archs in sets.items():
            for name in data:
                scores[name][set_name] = []
            for arch in archs:
                net.set_kinds(arch.block_kinds(zoo.config))
                for name, pairs in data.items():
                    p, s = _score(net, pairs, task)
                    scores[name][set_name].append(p - teacher[name])
                    seconds[name].append(s)
    whole = scores["whole"]
    for name in data:
        row: dict = {"teacher_psnr": round(teacher[name], 4),
                     "seconds_per_network": round(sum(seconds[name]) / len(seconds[name]), 3)}
        for set_name in sets:
            a, b = scores[name][set_name], whole[set_name]
            diff = sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)
            row[set_name] = {"kendall_tau_vs_whole": round(float(kendalltau(a, b).statistic), 4),
                             "mean_abs_delta_diff_db": round(diff, 4),
                             "within_0.3_db": sum(x >= -0.3 for x in a),
                             "within_0.3_db_whole": sum(y >= -0.3 for y in b)}
        out["splits"][name] = row
    out["archs"] = {set_name: [str(a) for a in archs] for set_name, archs in sets.items()}
    out["delta_vs_teacher"] = {name: {k: [round(v, 4) for v in vals] for k, vals in per.items()}
                               for name, per in scores.items()}
    return out


def main() -> None:
    from ens.zoo.prebuilt import PREBUILT_ROOT, prebuilt_names

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoos", nargs="*", type=Path, help="zoo folders (default: every prebuilt zoo)")
    ap.add_argument("--splits", default="32x48,16x96,8x128", help="COUNTxPX held-out patch splits, comma-separated")
    ap.add_argument("--archs", type=int, default=16, help="random hybrids per set (T/M/E, and every kind)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    splits = [tuple(int(v) for v in s.lower().split("x")) for s in args.splits.split(",") if s.strip()]
    zoos = args.zoos or [PREBUILT_ROOT / n for n in prebuilt_names()]
    t0 = time.monotonic()
    out = {"what": "zero-shot PSNR on held-out patch splits against whole held-out images, per zoo",
           "load_average_start": os.getloadavg(), "threads": args.threads,
           "zoos": [split_fidelity(z, splits, args.archs, args.seed) for z in zoos]}
    out["seconds"] = round(time.monotonic() - t0, 1)
    out["load_average_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
