"""Training throughput per device: teacher steps per second and peak memory, for each preset and device.

    python bench/bench_device.py [--devices cpu,cuda] [--presets tiny,small] [--steps 30] [--amp auto]
                                 [--patch 64] [--batch 8] [--threads N]

For each (preset, device): the all-transformer teacher of that preset, trained with the zoo build's own loop
(``ens.zoo.teacher.train_teacher``: Charbonnier, AdamW, channels-last, autocast per ``--amp``) on random
patch pairs for ``--steps`` steps after ``--warmup`` untimed ones. Reported: steps/s, peak memory (CUDA:
``torch.cuda.max_memory_allocated``; CPU: the process's peak RSS, which includes everything loaded before),
the device's name, the load average, and each device's steps/s as a ratio of the first device's (same run,
side by side). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from blocks.unet import HybridUNet, get_preset  # noqa: E402
from ens.compute import make_compute  # noqa: E402
from ens.zoo.build import machine  # noqa: E402
from ens.zoo.teacher import TeacherRecipe, train_teacher  # noqa: E402


def pairs(n: int, patch: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(n, 3, patch, patch, generator=g)
    return [(c.roll(2, -1) * 0.7 + 0.15, c) for c in clean]


def teacher_rate(preset: str, device: str, amp: str, steps: int, warmup: int, patch: int, batch: int) -> dict:
    compute = make_compute(device, amp)
    data = pairs(4 * batch, patch)
    torch.manual_seed(0)
    net = HybridUNet(get_preset(preset))
    if compute.cuda:
        torch.cuda.reset_peak_memory_stats(compute.device)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "t.safetensors"
        train_teacher(net, data, TeacherRecipe(steps=warmup, batch_size=batch, warmup=1, checkpoint_every_s=1e9),
                      0, ckpt, show_progress=False, compute=compute)
        ckpt.unlink()
        recipe = TeacherRecipe(steps=steps, batch_size=batch, warmup=1, checkpoint_every_s=1e9)
        if compute.cuda:
            torch.cuda.synchronize(compute.device)
        t0 = time.perf_counter()
        stats = train_teacher(net, data, recipe, 1, ckpt, show_progress=False, compute=compute)
        if compute.cuda:
            torch.cuda.synchronize(compute.device)
        dt = time.perf_counter() - t0
    out = {"preset": preset, "device": compute.describe(), "params": sum(p.numel() for p in net.parameters()),
           "steps": steps, "seconds": round(dt, 3), "steps_per_s": round(steps / dt, 3),
           "train_loss": stats["train_loss"], "patch": patch, "batch": batch}
    if compute.cuda:
        out["peak_mem_mib"] = round(torch.cuda.max_memory_allocated(compute.device) / 2**20, 1)
    else:
        out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--amp", default="auto")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    rows = []
    for preset in args.presets.split(","):
        for device in args.devices.split(","):
            rows.append(teacher_rate(preset, device, args.amp, args.steps, args.warmup, args.patch, args.batch))
            print(json.dumps(rows[-1]), file=sys.stderr)
    for preset in args.presets.split(","):
        mine = [r for r in rows if r["preset"] == preset]
        for r in mine:
            r["ratio_to_first_device"] = round(r["steps_per_s"] / mine[0]["steps_per_s"], 2)
    print(json.dumps({"bench": "bench_device", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
                      "torch_threads": torch.get_num_threads(),
                      "torch": torch.__version__, "loadavg": os.getloadavg(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
