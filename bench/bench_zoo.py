"""What a zoo's own build measured, and how its deblur teacher does on photographs it never saw.

    python bench/bench_zoo.py                     # every prebuilt zoo (ens/zoo/prebuilt/*)
    python bench/bench_zoo.py zoo/deblur-tiny ... # or zoo folders
    python bench/bench_zoo.py --unseen            # plus the deblur zoo on photographs outside the embedded set

Prints one JSON object: per zoo, the teacher's held-out PSNR against training steps (whole held-out
images), the degraded input's PSNR, all-M / all-E / mixed / per-slot swap deltas, and the rank-fidelity
tau, all read from the zoo's manifest and quality report (measured when it was built).

``--unseen``: photographs that are neither training nor validation images of the embedded data and that
installed packages ship offline (matplotlib's ``grace_hopper.jpg``; scikit-image's ``camera``, ``coins``,
``moon`` and ``page``, greyscale, replicated to RGB), each blurred by the default camera shake (seeded,
one kernel per image), centre-cropped to a multiple of 8; PSNR of the blurred input and of the zoo's
networks (all-T teacher, all-M, all-E) on RGB, as ``ens.metrics.psnr``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch


def zoo_summary(zoo_dir: Path) -> dict:
    from ens.zoo.manifest import ZooManifest

    m = ZooManifest.read(zoo_dir)
    q = json.loads((zoo_dir / "quality.json").read_text())
    # the figures are over T, M and E: swaps of M and E, hybrids of T/M/E (older reports mixed every kind)
    swaps = [abs(v) for row in q.get("swap", {}).values() for k, v in row.items() if k in ("M", "E")]
    return {
        "zoo_id": m.zoo_id, "command": m.build.get("command"), "wall_time_s": m.build.get("wall_time_s"),
        "machine": m.build.get("machine"), "stage_seconds": m.build.get("stage_seconds"),
        "input_psnr": q["input"]["psnr"], "teacher_psnr": q["teacher"]["psnr"],
        "teacher_gain_db": round(q["teacher"]["psnr"] - q["input"]["psnr"], 4),
        "teacher_curve": m.teacher.get("curve"),
        "uniform_delta_db": {k: v["delta_psnr"] for k, v in q["uniform"].items()},
        "mixed_mean_delta_db": (q.get("mixed_core_mean_delta_psnr") if "mixed_core" in q
                                else q.get("mixed_mean_delta_psnr") if set(m.kinds) <= {"T", "M", "E"} else None),
        "mixed_all_kinds_mean_delta_db": q.get("mixed_mean_delta_psnr"),
        "worst_single_swap_db": round(-max(swaps), 4) if swaps else None,
        "swaps_within_0.15_db": f"{sum(s <= 0.15 for s in swaps)} of {len(swaps)}",
        "rank_tau": m.rank.get("tau"), "rank_n": m.rank.get("n"), "rank_finetune_steps": m.rank.get("finetune_steps"),
        "patch_check": q.get("patch_check"),
    }


def unseen_images() -> dict[str, np.ndarray]:
    import matplotlib
    import skimage.data
    from PIL import Image

    out = {"grace_hopper": np.asarray(Image.open(Path(matplotlib.get_data_path()) / "sample_data" /
                                                 "grace_hopper.jpg").convert("RGB"), dtype=np.float32) / 255}
    for name in ("camera", "coins", "moon", "page"):
        g = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255
        out[name] = np.repeat(g[:, :, None], 3, axis=2)
    return out


def unseen_pairs(task, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """:func:`unseen_images` cropped to a multiple of 8 and degraded by ``task`` (image ``i`` with the generator
    ``[seed, i]``), as ([3, H, W] degraded, [3, H, W] clean) float32 tensors."""
    out = {}
    for i, (name, img) in enumerate(unseen_images().items()):
        h, w = (s - s % 8 for s in img.shape[:2])
        clean = np.ascontiguousarray(img[:h, :w])
        deg = task.degrade(clean, np.random.default_rng([seed, i]))
        out[name] = (torch.from_numpy(np.ascontiguousarray(deg, dtype=np.float32)).permute(2, 0, 1),
                     torch.from_numpy(clean).permute(2, 0, 1))
    return out


@torch.no_grad()
def unseen(zoo_dir: Path, seed: int = 1234) -> dict:
    from ens.degradations.blur import MAX_LENGTH, MIN_LENGTH
    from ens.metrics import psnr
    from ens.tasks import get_task
    from ens.zoo.store import Zoo
    from search_spaces.arch import Arch

    zoo = Zoo.load(zoo_dir)
    nets = {k: zoo.build(Arch.uniform(k)) for k in zoo.manifest.kinds}
    rows = {}
    for name, (deg, clean) in unseen_pairs(get_task("deblur"), seed).items():
        d, c = deg[None], clean[None]
        h, w = c.shape[-2:]
        row = {"size": f"{w}x{h}", "input": round(float(psnr(d, c)), 3)}
        for k, net in nets.items():
            row[f"all_{k}"] = round(float(psnr(net(d).clamp(0, 1), c)), 3)
        rows[name] = row
    keys = [k for k in next(iter(rows.values())) if k != "size"]
    mean = {k: round(float(np.mean([r[k] for r in rows.values()])), 3) for k in keys}
    return {"zoo_id": zoo.zoo_id, "blur": f"default camera shake, {MIN_LENGTH:g}-{MAX_LENGTH:g} px", "seed": seed,
            "images": rows, "mean": mean, "teacher_gain_db": round(mean["all_T"] - mean["input"], 3)}


def main() -> None:
    from ens.zoo.prebuilt import PREBUILT_ROOT, prebuilt_names

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("zoos", nargs="*", type=Path)
    ap.add_argument("--unseen", action="store_true", help="the deblur zoo on photographs outside the embedded set")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--markdown", action="store_true", help="print the README's tables instead of JSON")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    zoos = a.zoos or [PREBUILT_ROOT / n for n in prebuilt_names()]
    out: dict = {"zoos": {z.name: zoo_summary(z) for z in zoos}}
    if a.unseen:
        deblur = [z for z in zoos if z.name.startswith("deblur")]
        if deblur:
            out["unseen_deblur"] = unseen(deblur[0])
    out["load_average"] = os.getloadavg()
    print(markdown(out) if a.markdown else json.dumps(out, indent=1))


def _mixed(z: dict) -> str:
    if z["mixed_mean_delta_db"] is not None:
        return f"{z['mixed_mean_delta_db']:+.2f}"
    return f"n/a (report predates the T/M/E figure; all kinds {z['mixed_all_kinds_mean_delta_db']:+.2f})"


def markdown(out: dict) -> str:
    rows = ["| zoo | build (2 cores) | input → teacher, whole held-out images | teacher by step (dB over input) | "
            "all-M / all-E / mixed (dB of teacher) | worst single swap | rank tau |", "|---|---|---|---|---|---|---|"]
    for name, z in out["zoos"].items():
        curve = ", ".join(f"{p['step']}: {p['gain_db']:+.2f}" for p in z["teacher_curve"] or [])
        u = z["uniform_delta_db"]
        rows.append(f"| {name} | {z['wall_time_s'] / 60:.0f} min | {z['input_psnr']:.2f} → {z['teacher_psnr']:.2f} "
                    f"({z['teacher_gain_db']:+.2f}) | {curve} | {u.get('M', float('nan')):+.2f} / "
                    f"{u.get('E', float('nan')):+.2f} / {_mixed(z)} | "
                    f"{z['worst_single_swap_db']:+.2f} ({z['swaps_within_0.15_db']} within 0.15) | "
                    f"{z['rank_tau']:+.2f} ({z['rank_n']} archs, {z['rank_finetune_steps']} steps) |")
    u = out.get("unseen_deblur")
    if u:
        rows += ["", f"Deblur zoo on photographs it never saw ({u['blur']}, seed {u['seed']}), PSNR in dB:", "",
                 "| image | size | blurred input | all-T teacher | all-M | all-E |", "|---|---|---|---|---|---|"]
        for img, r in u["images"].items():
            rows.append(f"| {img} | {r['size']} | {r['input']:.2f} | {r['all_T']:.2f} | {r['all_M']:.2f} | "
                        f"{r['all_E']:.2f} |")
        m = u["mean"]
        rows.append(f"| mean | | {m['input']:.2f} | {m['all_T']:.2f} | {m['all_M']:.2f} | {m['all_E']:.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
