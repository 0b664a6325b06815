"""Rank fidelity of a zoo: does the zero-shot PSNR of an assembled hybrid rank it as fine-tuning would?

For ``n`` random architectures (seeded), the zero-shot PSNR on the held-out split and the PSNR after
``steps`` of end-to-end fine-tuning (``ens.finetune``: finalize's FP32 recipe, the same batches for every
network, as ``ens search --finetune-steps`` does), and
Kendall's tau between the two rankings (scipy's tau-b). Results are kept per architecture in a JSON
file as they finish, so an interrupted check resumes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blocks.unet import HybridUNet
from ens.compute import CPU, Compute
from ens.evaluate import evaluate
from ens.finetune import finetune
from ens.training import atomic_write_text, progress_bar
from search_spaces.arch import Arch


def random_archs(supernet: HybridUNet, kinds: Sequence[str], n: int, seed: int) -> list[Arch]:
    """``n`` distinct random hybrids over T and ``kinds`` (uniform per block), seeded."""
    rng = random.Random(seed * 7919 + 17)
    pool, out, seen = ["T", *kinds], [], set()
    for _ in range(50 * n):
        k = {s: [rng.choice(pool) for _ in seq] for s, seq in supernet.stages.items()}
        a = Arch.from_block_kinds(k)
        if str(a) not in seen:
            seen.add(str(a))
            out.append(a)
        if len(out) == n:
            break
    return out


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import kendalltau

    tau = kendalltau(a, b).statistic
    return float(tau) if tau == tau else float("nan")


def rank_fidelity(supernet: HybridUNet, kinds: Sequence[str], train_set, val, task, n: int, steps: int,
                  seed: int, work_file: Path | None = None, show_progress: bool = True,
                  compute: Compute = CPU) -> dict[str, Any]:
    """Zero-shot vs fine-tuned PSNR of ``n`` random hybrids; ``{"tau", "archs": [...], ...}``."""
    done: dict[str, dict] = {}
    if work_file is not None and work_file.is_file():
        done = {r["arch"]: r for r in json.loads(work_file.read_text())}
    archs = random_archs(supernet, kinds, n, seed)
    state = {k: v.clone() for k, v in supernet.state_dict().items()}
    rows = []
    with progress_bar(f"rank check ({steps} fine-tune steps each)", len(archs), 0, show_progress) as advance:
        for arch in archs:
            row = done.get(str(arch))
            if row is None:
                net = HybridUNet(supernet.cfg, arch.block_kinds(supernet.cfg))
                net.load_state_dict({k: state[k] for k in net.state_dict()})
                compute.module(net)
                zero = evaluate(net, val, task, batch_size=1)
                finetune(net, train_set, steps, seed, compute=compute)  # the same batches for every network
                tuned = evaluate(net, val, task, batch_size=1)
                row = {"arch": str(arch), "zero_shot_psnr": round(zero.psnr, 4), "finetuned_psnr": round(tuned.psnr, 4)}
                done[row["arch"]] = row
                if work_file is not None:
                    atomic_write_text(work_file, json.dumps(list(done.values()), indent=1))
            rows.append(row)
            advance()
    tau = kendall_tau([r["zero_shot_psnr"] for r in rows], [r["finetuned_psnr"] for r in rows])
    return {"n": len(rows), "finetune_steps": steps, "tau": round(tau, 4), "archs": rows}
