"""Architectures the zoo predicts on the front, evaluated before the sampler's (``ens search --zoo-front``).

A random or evolutionary sampler rarely visits the corner near the teacher: with 8 kinds and 8
slots, a trial keeps T at the three costly full-resolution slots with odds of 1 in 8^3. So before the
sampler starts, the search scores every single swap (the teacher with one slot replaced by one kind)
on its own held-out patches, with the same evaluation as its trials, and prices every slot and kind
with the latency table. Adding both up over slots, the fastest architecture within each loss budget
is an exact multiple-choice knapsack (:mod:`search_spaces.additive`); those architectures are
enqueued, and the study measures them like any other trial.

On the prebuilt denoise zoo the sums predicted the measured loss of such hybrids well (0.049 dB predicted,
0.041 measured; 0.188 / 0.240; 0.299 / 0.286; 0.49 / 0.54), less so where skipped blocks pile up (deblur
0.30 / 2.15); the zoo's own swap figures on the whole held-out images did not work (denoise 0.29 predicted,
1.45 measured): the metric has to be the search's. A swap that *gains* quality counts as no loss: a gain
does not pay for another slot's loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from blocks.unet import UNetConfig, stage_layout
from search_spaces.additive import additive_front, fastest_within
from search_spaces.arch import Arch
from search_spaces.sampling import arch_from_params, param_names

BUDGETS_DB = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)  # predicted loss against all-T, dB


@dataclass(frozen=True)
class Predicted:
    arch: Arch
    budget_db: float
    loss_db: float  # predicted PSNR loss against all-T (sum of single-swap losses), dB
    latency_ms: float  # predicted by the latency table


def slot_options(swap: Mapping[str, Mapping[str, float]], costs: Mapping[str, Mapping[str, float]],
                 cfg: UNetConfig, kinds: Sequence[str], granularity: str) -> list[dict[str, tuple[float, float]]]:
    """Per search parameter (a stage, or a block position), ``kind -> (loss dB, cost ms)``. A kind without a
    swap figure or a table cost at some block of the slot is left out there; T is always in, at (0, its cost)."""
    out = []
    for name in param_names(cfg, granularity):
        if granularity == "stage":
            stage = name
            positions = [f"{stage}.{i}" for i in range(_depth(cfg, stage))]
        else:
            stage, positions = name.split(".")[0], [name]
        opts: dict[str, tuple[float, float]] = {}
        for k in kinds:
            if k != "T" and not all(k in swap.get(p, {}) for p in positions):
                continue
            if k not in costs.get(stage, {}):
                continue
            loss = 0.0 if k == "T" else sum(max(0.0, -float(swap[p][k])) for p in positions)
            opts[k] = (loss, costs[stage][k] * len(positions))
        if "T" not in opts:
            raise ValueError(f"the latency table has no cost for T at {stage}")
        out.append(opts)
    return out


def _depth(cfg: UNetConfig, stage: str) -> int:
    return next(s.depth for s in stage_layout(cfg) if s.name == stage)


def predicted_front(swap: Mapping[str, Mapping[str, float]], skeleton_ms: float,
                    costs: Mapping[str, Mapping[str, float]], cfg: UNetConfig, kinds: Sequence[str],
                    granularity: str = "stage", budgets: Sequence[float] = BUDGETS_DB) -> list[Predicted]:
    """The fastest predicted architecture within each budget, each architecture once (at its smallest budget),
    all-T left out."""
    names = param_names(cfg, granularity)
    front = additive_front(slot_options(swap, costs, cfg, kinds, granularity))
    out: list[Predicted] = []
    seen: set[str] = set()
    for b in sorted(budgets):
        p = fastest_within(front, b)
        if p is None or set(p.choice) == {"T"}:
            continue
        arch = arch_from_params(dict(zip(names, p.choice, strict=True)), cfg, granularity)
        if str(arch) in seen:
            continue
        seen.add(str(arch))
        out.append(Predicted(arch, b, round(p.loss, 4), round(skeleton_ms + p.cost, 2)))
    return out


def single_swaps(supernet, val, task, kinds: Sequence[str]) -> tuple[float, dict[str, dict[str, float]]]:
    """The teacher's PSNR on ``val``, and the change (dB) when one block position (``stage.i``) of it is swapped
    to each kind other than T, everything else T; evaluated as the search's trials are."""
    from ens.evaluate import evaluate

    supernet.eval()
    all_t = {s: ["T"] * len(seq) for s, seq in supernet.stages.items()}

    def psnr(ks: dict[str, list[str]]) -> float:
        supernet.set_kinds(ks)
        return evaluate(supernet, val, task).psnr

    teacher = psnr(all_t)
    swaps: dict[str, dict[str, float]] = {}
    for stage, i, _ in supernet.slot_blocks():
        row = {}
        for k in kinds:
            if k == "T":
                continue
            ks = {s: list(v) for s, v in all_t.items()}
            ks[stage][i] = k
            row[k] = round(psnr(ks) - teacher, 4)
        swaps[f"{stage}.{i}"] = row
    supernet.set_kinds(all_t)
    return teacher, swaps


def latency_table(prof: Any, cfg: UNetConfig, shape: Sequence[int], precision: str | None) -> tuple[Any, str]:
    """The table ``prof`` predicts with, or None and a line saying why there is none."""
    from profilers.lut import LUTProfiler

    if not isinstance(prof, LUTProfiler):
        return None, (f"zoo front: skipped (profiler {prof.spec} has no latency table to price the swaps; "
                      "lut:... has)")
    return prof.table_for(cfg.to_dict(), shape, prof.resolve_precision(precision)), ""


def front_seeds(swaps: Mapping[str, Mapping[str, float]], table: Any, cfg: UNetConfig, kinds: Sequence[str],
                granularity: str) -> tuple[list[Predicted], str]:
    """The predicted front for this search (mixed architectures only: the uniform ones are the study's
    references already), and a one-line account of it."""
    seeds = [s for s in predicted_front(swaps, table.skeleton_ms, table.costs, cfg, kinds, granularity)
             if len(s.arch.kinds_used()) > 1]
    if not seeds:
        return [], "zoo front: no mixed architecture is predicted on the front within 2 dB of all-T"
    all_t = table.predict(Arch.uniform("T").block_kinds(cfg))
    near = [s for s in seeds if s.budget_db <= 0.3]
    best = near[-1] if near else seeds[0]
    return seeds, (f"zoo front: {len(seeds)} architectures predicted from the single swaps and the latency "
                   f"table, evaluated first (within {best.budget_db:g} dB: {best.arch}, {best.latency_ms:.1f} ms "
                   f"predicted vs {all_t:.1f} ms for all-T)")
