"""The zoo quality report: is the zoo pre-aligned?

Teacher and degraded-input PSNR/SSIM on the held-out split; all-surrogate networks of each kind
assembled with no further training; random mixed networks; and, for each block position and kind,
the PSNR change when only that position is swapped into the teacher.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from blocks.unet import HybridUNet
from ens.evaluate import evaluate
from ens.tasks import Task
from search_spaces.arch import Arch

CORE_KINDS = ("M", "E")  # with T, the space the zoo's targets are stated in (issue 16)


def quality_report(
    supernet: HybridUNet,
    kinds: Sequence[str],
    val,
    task: Task,
    seed: int,
    mixed: int = 8,
    per_slot: bool = True,
) -> dict[str, Any]:
    def q_of(k: dict[str, list[str]]) -> dict[str, float]:
        supernet.set_kinds(k)
        return evaluate(supernet, val, task).to_dict()

    all_of = {k: {s: [k] * len(seq) for s, seq in supernet.stages.items()} for k in ["T", *kinds]}
    report: dict[str, Any] = {
        "input": evaluate(None, val, task).to_dict(),
        "teacher": q_of(all_of["T"]),
        "uniform": {},
        "mixed": [],
        "swap": {},
    }
    t_psnr = report["teacher"]["psnr"]
    for k in kinds:
        q = q_of(all_of[k])
        report["uniform"][k] = {**q, "delta_psnr": round(q["psnr"] - t_psnr, 4),
                                "arch": str(Arch.from_block_kinds(all_of[k]))}
    def random_hybrids(pool: list[str]) -> list[dict[str, Any]]:
        rng, rows = random.Random(seed), []
        for _ in range(mixed):
            k = {s: [rng.choice(pool) for _ in seq] for s, seq in supernet.stages.items()}
            q = q_of(k)
            rows.append({**q, "delta_psnr": round(q["psnr"] - t_psnr, 4), "arch": str(Arch.from_block_kinds(k))})
        return rows

    def mean_delta(rows: list[dict[str, Any]]) -> float:
        return round(sum(m["delta_psnr"] for m in rows) / len(rows), 4)

    report["mixed"] = random_hybrids(["T", *kinds])
    if report["mixed"]:
        report["mixed_mean_delta_psnr"] = mean_delta(report["mixed"])
    core = [k for k in CORE_KINDS if k in kinds]
    if mixed and core and len(core) < len(kinds):  # the T/M/E figure, comparable across zoos of more kinds
        report["mixed_core"] = random_hybrids(["T", *core])
        report["mixed_core_kinds"] = ["T", *core]
        report["mixed_core_mean_delta_psnr"] = mean_delta(report["mixed_core"])
    if per_slot:
        for stage, i, _ in supernet.slot_blocks():
            row = {}
            for k in kinds:
                ks = {s: list(v) for s, v in all_of["T"].items()}
                ks[stage][i] = k
                row[k] = round(q_of(ks)["psnr"] - t_psnr, 4)
            report["swap"][f"{stage}.{i}"] = row
    supernet.set_kinds(all_of["T"])
    return report


def quality_markdown(report: dict[str, Any], distill: dict[str, dict[str, float]], kinds: Sequence[str]) -> str:
    lines = ["# Zoo quality (whole held-out images)", "", "| network | PSNR (dB) | SSIM | vs teacher (dB) |",
             "|---|---|---|---|"]
    inp, t = report["input"], report["teacher"]
    lines.append(f"| degraded input | {inp['psnr']:.2f} | {inp['ssim']:.4f} | {inp['psnr'] - t['psnr']:+.2f} |")
    lines.append(f"| teacher (all T) | {t['psnr']:.2f} | {t['ssim']:.4f} | 0.00 |")
    for k, q in report["uniform"].items():
        lines.append(f"| all {k} | {q['psnr']:.2f} | {q['ssim']:.4f} | {q['delta_psnr']:+.2f} |")
    if report["mixed"]:
        lines.append(f"| random mixed (mean of {len(report['mixed'])}) | "
                     f"{sum(m['psnr'] for m in report['mixed']) / len(report['mixed']):.2f} | "
                     f"{sum(m['ssim'] for m in report['mixed']) / len(report['mixed']):.4f} | "
                     f"{report['mixed_mean_delta_psnr']:+.2f} |")
    if report.get("mixed_core"):
        mc = report["mixed_core"]
        lines.append(f"| random mixed {'/'.join(report['mixed_core_kinds'])} (mean of {len(mc)}) | "
                     f"{sum(m['psnr'] for m in mc) / len(mc):.2f} | {sum(m['ssim'] for m in mc) / len(mc):.4f} | "
                     f"{report['mixed_core_mean_delta_psnr']:+.2f} |")
    if report["swap"]:
        lines += ["", "## Per slot: PSNR change when only that block is swapped, and distillation error",
                  "", "| slot | " + " | ".join(f"{k}: dPSNR | {k}: rel. error" for k in kinds) + " |",
                  "|---|" + "---|---|" * len(kinds)]
        for slot, row in report["swap"].items():
            cells = " | ".join(f"{row[k]:+.3f} | {distill.get(slot, {}).get(k, float('nan')):.3f}" for k in kinds)
            lines.append(f"| {slot} | {cells} |")
    curve = report.get("teacher_curve")
    if curve:
        lines += ["", "## Teacher: held-out PSNR against training steps", "",
                  "| step | PSNR (dB) | gain over input (dB) |", "|---|---|---|"]
        lines += [f"| {p['step']} | {p['psnr']:.2f} | {p['gain_db']:+.2f} |" for p in curve]
    rank = report.get("rank")
    if rank:
        lines += ["", f"## Rank fidelity: Kendall tau {rank['tau']:+.3f} over {rank['n']} random hybrids",
                  "", f"zero-shot PSNR against PSNR after {rank['finetune_steps']} steps of end-to-end fine-tuning",
                  "", "| arch | zero-shot | fine-tuned |", "|---|---|---|"]
        lines += [f"| `{r['arch']}` | {r['zero_shot_psnr']:.2f} | {r['finetuned_psnr']:.2f} |" for r in rank["archs"]]
    pc = report.get("patch_check")
    if pc:
        lines += ["", f"Quick check on {pc['patches']} held-out patches: input {pc['input_psnr']:.2f} dB, "
                      f"teacher {pc['teacher_psnr']:.2f} dB."]
    return "\n".join(lines) + "\n"
