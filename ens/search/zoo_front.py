"""Architectures the zoo predicts on the front, evaluated before the sampler's (``ens search --zoo-front``).

A random or evolutionary sampler rarely visits the corner near the teacher: with 8 kinds and 8
slots, a trial keeps T at every costly full-resolution slot with odds of 1 in 8^3. The zoo already
knows what each swap costs in quality (its quality report swaps each slot of the teacher to each
kind, on the whole held-out images) and the latency table what it saves. Adding both up over slots,
the fastest architecture within each loss budget is an exact multiple-choice knapsack
(:mod:`search_spaces.additive`); those architectures are enqueued, and the study then measures them
like any other trial. A swap that *gains* quality counts as no loss: gains do not pay for another
slot's losses, since the measured gains (a surrogate better than a weak teacher on the whole images)
need not carry over to the search's held-out patches or to other contexts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
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


def zoo_swaps(zoo_dir: Path) -> dict[str, dict[str, float]] | None:
    """The single-swap PSNR changes of the zoo's quality report (``stage.i -> kind -> dB``), or None."""
    from ens.zoo.manifest import QUALITY_JSON

    path = Path(zoo_dir) / QUALITY_JSON
    try:
        swap = json.loads(path.read_text()).get("swap")
    except (OSError, ValueError, AttributeError):
        return None
    return swap if isinstance(swap, dict) and swap else None


def search_seeds(zoo_dir: Path, prof: Any, cfg: UNetConfig, shape: Sequence[int], precision: str | None,
                 kinds: Sequence[str], granularity: str) -> tuple[list[Predicted], str]:
    """The predicted front for this search, and a one-line account of it (or of why there is none)."""
    from profilers.lut import LUTProfiler

    if not isinstance(prof, LUTProfiler):
        return [], (f"zoo front: skipped (profiler {prof.spec} has no latency table to price the swaps; "
                    "lut:... has)")
    swap = zoo_swaps(zoo_dir)
    if swap is None:
        return [], f"zoo front: skipped (the zoo in {zoo_dir} has no single-swap figures in its quality report)"
    table = prof.table_for(cfg.to_dict(), shape, prof.resolve_precision(precision))
    seeds = [s for s in predicted_front(swap, table.skeleton_ms, table.costs, cfg, kinds, granularity)
             if len(s.arch.kinds_used()) > 1]  # the uniform networks are enqueued as the references already
    if not seeds:
        return [], "zoo front: no mixed architecture is predicted on the front within 2 dB of all-T"
    all_t = table.predict(Arch.uniform("T").block_kinds(cfg))
    near = [s for s in seeds if s.budget_db <= 0.3]
    best = near[-1] if near else seeds[0]
    return seeds, (f"zoo front: {len(seeds)} architectures predicted from the zoo's single swaps and the latency "
                   f"table, evaluated first (within {best.budget_db:g} dB: {best.arch}, {best.latency_ms:.1f} ms "
                   f"predicted vs {all_t:.1f} ms for all-T)")
