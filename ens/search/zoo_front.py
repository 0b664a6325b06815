"""Architectures the zoo puts on the front, evaluated before the sampler's (``ens search --zoo-front``).

A random or evolutionary sampler rarely visits the corner near the teacher: with 8 kinds and 8
slots, a trial keeps T at the three costly full-resolution slots with odds of 1 in 8^3. So before the
sampler starts, the search scores every single swap (the teacher with one block replaced by one kind)
on its own held-out patches, with the same evaluation as its trials, and prices every slot and kind
with the latency table. Adding both up over slots, the fastest architecture within each loss budget
is an exact multiple-choice knapsack (:mod:`search_spaces.additive`).

The sums hold near the teacher and fail where several cheap blocks compound (deblur: 0.30 dB predicted,
2.15 measured). So the front is refined by successive linearisation: each round scores the single swaps
around the fastest architecture measured so far within the target loss, solves the knapsack again from
there (with the swaps' gains counted and, separately, clipped to zero), and scores what it proposes. It
stops when that incumbent no longer changes. The fastest architectures measured within each budget (and the
few fastest within the target) are enqueued, and the study evaluates them like any other trial.

On the prebuilt zoos the rounds took the fastest network measured within 0.3 dB from 77.8 to 59.5 ms predicted
on deblur, 154.3 to 109.3 on derain and 178.4 to 175.7 on denoise (all-T 238.3 ms; 2026-12-03,
``bench/records/bench_space-zoo-front-rounds-2026-12-03.json``, with the measured speed-ups). The zoo's own
swap figures on whole held-out images did not work (denoise 0.29 dB predicted, 1.45 measured): the metric has
to be the search's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from blocks.unet import UNetConfig, stage_layout
from search_spaces.additive import additive_front, fastest_within
from search_spaces.arch import Arch
from search_spaces.errors import ArchError
from search_spaces.sampling import arch_from_params, arch_to_params, param_names

BUDGETS_DB = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)  # predicted loss against all-T, dB
ROUNDS = 4
TARGET_DB = 0.3  # the loss the rounds refine around (the papers' "within 0.3 dB"), dB
NEAR_TARGET = 3  # seeds within the target: the fastest few, since the table's ranking of near ties is noisy

BlockKinds = Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class Predicted:
    arch: Arch
    budget_db: float
    loss_db: float  # predicted PSNR loss against all-T: the base's measured loss plus the swaps' sum, dB
    latency_ms: float  # predicted by the latency table


@dataclass(frozen=True)
class Seed:
    """An architecture the refinement measured, enqueued before the sampler's trials."""

    arch: Arch
    loss_db: float  # measured PSNR loss against all-T on the search's held-out patches, dB
    latency_ms: float  # predicted by the latency table
    round: int  # the refinement round that scored it (0: around the teacher)
    predicted_loss_db: float | None  # what the knapsack predicted for it; None for a single swap


@dataclass(frozen=True)
class Round:
    base: str  # the architecture this round's swaps are taken around
    base_loss_db: float
    base_latency_ms: float
    scored: int  # networks first scored in this round


@dataclass(frozen=True)
class FrontRefinement:
    teacher_psnr: float
    swaps: dict[str, dict[str, float]]  # around the teacher: block position -> kind -> PSNR change, dB
    rounds: list[Round]
    seeds: list[Seed]


class HeldOutScorer:
    """PSNR of the supernet's architectures on the search's held-out pairs (patches, or whole images with
    ``--val whole``), evaluated as its trials are."""

    def __init__(self, supernet: Any, val: Any, task: Any) -> None:
        self.supernet, self.val, self.task = supernet.eval(), val, task

    def __call__(self, kinds: BlockKinds) -> float:
        from ens.evaluate import evaluate

        self.supernet.set_kinds({s: list(kinds[s]) for s in self.supernet.stages})
        return evaluate(self.supernet, self.val, self.task, with_ssim=False).psnr


class _Memo:
    """``score`` evaluated once per architecture."""

    def __init__(self, score: Callable[[BlockKinds], float]) -> None:
        self.score, self.seen = score, {}

    def __call__(self, kinds: BlockKinds) -> float:
        key = tuple((s, tuple(v)) for s, v in sorted(kinds.items()))
        if key not in self.seen:
            self.seen[key] = self.score(kinds)
        return self.seen[key]


def single_swaps(score: Callable[[BlockKinds], float], cfg: UNetConfig, kinds: Sequence[str],
                 base: BlockKinds | None = None) -> tuple[float, dict[str, dict[str, float]]]:
    """The base's PSNR (all-T when none is given), and the change (dB) when one block position (``stage.i``)
    of it is swapped to each other kind."""
    base = base or Arch.uniform("T").block_kinds(cfg)
    ref = score(base)
    swaps: dict[str, dict[str, float]] = {f"{s.name}.{i}": {} for s in stage_layout(cfg) for i in range(s.depth)}
    for position, k, ks in one_swaps(base, cfg, kinds):
        swaps[position][k] = round(score(ks) - ref, 4)
    return ref, swaps


def one_swaps(base: BlockKinds, cfg: UNetConfig, kinds: Sequence[str]) -> Iterator[tuple[str, str, BlockKinds]]:
    """Every network that differs from ``base`` at one block position: (``stage.i``, its kind there, its kinds)."""
    for s in stage_layout(cfg):
        for i in range(s.depth):
            for k in kinds:
                if k != base[s.name][i]:
                    ks = {n: list(v) for n, v in base.items()}
                    ks[s.name][i] = k
                    yield f"{s.name}.{i}", k, ks


def slot_options(swap: Mapping[str, Mapping[str, float]], costs: Mapping[str, Mapping[str, float]],
                 cfg: UNetConfig, kinds: Sequence[str], granularity: str, base: BlockKinds | None = None,
                 clip: bool = True) -> list[dict[str, tuple[float, float]]]:
    """Per search parameter (a stage, or a block position), ``kind -> (loss dB, cost ms)`` against ``base``
    (all-T when none is given). The base's kind is always in, at no loss; a kind without a swap figure or a
    table cost at some block of the slot is left out there. ``clip`` counts a swap that gains as no loss."""
    base = base or Arch.uniform("T").block_kinds(cfg)
    out = []
    for name in param_names(cfg, granularity):
        stage = name.split(".")[0]
        idx = list(range(_depth(cfg, stage))) if granularity == "stage" else [int(name.split(".")[1])]
        here = {base[stage][i] for i in idx}
        if len(here) != 1:
            raise ValueError(f"the base mixes kinds {sorted(here)} inside stage {stage}: use granularity 'block'")
        (own,) = here
        if own not in costs.get(stage, {}):
            raise ValueError(f"the latency table has no cost for {own} at {stage}")
        opts: dict[str, tuple[float, float]] = {own: (0.0, costs[stage][own] * len(idx))}
        for k in kinds:
            if k == own or k not in costs.get(stage, {}):
                continue
            if not all(k in swap.get(f"{stage}.{i}", {}) for i in idx):
                continue
            drops = [-float(swap[f"{stage}.{i}"][k]) for i in idx]
            opts[k] = (sum(max(0.0, d) for d in drops) if clip else sum(drops), costs[stage][k] * len(idx))
        out.append(opts)
    return out


def _depth(cfg: UNetConfig, stage: str) -> int:
    return next(s.depth for s in stage_layout(cfg) if s.name == stage)


def predicted_front(swap: Mapping[str, Mapping[str, float]], skeleton_ms: float,
                    costs: Mapping[str, Mapping[str, float]], cfg: UNetConfig, kinds: Sequence[str],
                    granularity: str = "stage", budgets: Sequence[float] = BUDGETS_DB,
                    base: BlockKinds | None = None, base_loss: float = 0.0, clip: bool = True) -> list[Predicted]:
    """The fastest predicted architecture within each budget (loss against all-T, the base's ``base_loss``
    included), each architecture once (at its smallest budget), the base itself left out."""
    names = param_names(cfg, granularity)
    base = base or Arch.uniform("T").block_kinds(cfg)
    front = additive_front(slot_options(swap, costs, cfg, kinds, granularity, base, clip))
    out: list[Predicted] = []
    seen = {str(Arch.from_block_kinds(base))}
    for b in sorted(budgets):
        p = fastest_within(front, b - base_loss)
        if p is None:
            continue
        arch = arch_from_params(dict(zip(names, p.choice, strict=True)), cfg, granularity)
        if str(arch) in seen:
            continue
        seen.add(str(arch))
        out.append(Predicted(arch, b, round(base_loss + p.loss, 4), round(skeleton_ms + p.cost, 2)))
    return out


def refine_front(score: Callable[[BlockKinds], float], table: Any, cfg: UNetConfig, kinds: Sequence[str],
                 granularity: str = "stage", rounds: int = ROUNDS, target_db: float = TARGET_DB,
                 budgets: Sequence[float] = BUDGETS_DB,
                 log: Callable[[str], None] = lambda _: None) -> FrontRefinement:
    """Single swaps around the teacher, the knapsack's proposals scored; then up to ``rounds - 1`` more rounds
    around the fastest architecture measured within ``target_db``. Returns the fastest measured within each
    budget as seeds (:func:`front_seeds`)."""
    score = _Memo(score)
    teacher = score(Arch.uniform("T").block_kinds(cfg))
    measured: dict[str, Seed] = {}

    def measure(arch: Arch, r: int, predicted: float | None) -> None:
        if str(arch) in measured:
            return
        try:
            arch_to_params(arch, cfg, granularity)
        except ArchError:  # a one-block swap inside a deeper stage: not a point of a stage-wise space
            return
        loss = round(teacher - score(arch.block_kinds(cfg)), 4)
        measured[str(arch)] = Seed(arch, loss, round(table.predict(arch.block_kinds(cfg)), 2), r, predicted)

    base, history, first = Arch.uniform("T"), [], {}
    measure(base, 0, None)
    for r in range(rounds):
        before = len(score.seen)
        bk = base.block_kinds(cfg)
        _, swaps = single_swaps(score, cfg, kinds, bk)
        first = first or swaps
        for _, _, one in one_swaps(bk, cfg, kinds):
            measure(Arch.from_block_kinds(one), r, None)
        for clip in (True, False):
            for p in predicted_front(swaps, table.skeleton_ms, table.costs, cfg, kinds, granularity, budgets,
                                     bk, measured[str(base)].loss_db, clip):
                measure(p.arch, r, p.loss_db)
        history.append(Round(str(base), measured[str(base)].loss_db, measured[str(base)].latency_ms,
                             len(score.seen) - before))
        best = min((s for s in measured.values() if s.loss_db <= target_db), key=lambda s: (s.latency_ms, s.loss_db))
        log(f"zoo front round {r + 1}: {history[-1].scored} networks scored around {base}; fastest within "
            f"{target_db:g} dB: {best.arch} ({best.loss_db:+.3f} dB, {best.latency_ms:.1f} ms predicted)")
        if best.arch == base:
            break
        base = best.arch
    return FrontRefinement(round(teacher, 4), first, history,
                            front_seeds(measured.values(), sorted({*budgets, target_db}), target_db))


def front_seeds(points: Sequence[Seed] | Any, budgets: Sequence[float], target_db: float,
                near: int = NEAR_TARGET) -> list[Seed]:
    """The fastest mixed architecture measured within each budget, and the ``near`` fastest within the target
    (the latency table's error makes near ties worth timing), by loss. Uniform architectures are left out: they
    are the study's references already."""
    mixed = sorted((s for s in points if len(s.arch.kinds_used()) > 1), key=lambda s: (s.latency_ms, s.loss_db))
    chosen: dict[str, Seed] = {}
    for b in budgets:
        within = [s for s in mixed if s.loss_db <= b]
        for s in within[: near if b == target_db else 1]:
            chosen.setdefault(str(s.arch), s)
    return sorted(chosen.values(), key=lambda s: (s.loss_db, s.latency_ms))


def latency_table(prof: Any, cfg: UNetConfig, shape: Sequence[int], precision: str | None) -> tuple[Any, str]:
    """The table ``prof`` predicts with, or None and a line saying why there is none."""
    from profilers.lut import LUTProfiler

    if not isinstance(prof, LUTProfiler):
        return None, (f"zoo front: skipped (profiler {prof.spec} has no latency table to price the swaps; "
                      "lut:... has)")
    return prof.table_for(cfg.to_dict(), shape, prof.resolve_precision(precision)), ""
