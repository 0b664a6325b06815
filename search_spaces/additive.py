"""The fastest choice per slot within a quality budget, when loss and cost both add up over slots.

Each slot offers kinds, each with a loss (dB) and a cost (ms). Under the additive model, the
architectures worth looking at are the Pareto front of (total loss, total cost) over every
combination: a multiple-choice knapsack. It is solved exactly by merging one slot at a time and
keeping only the non-dominated partial sums, which stay few (hundreds for 8 slots of 8 kinds).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FrontPoint:
    loss: float  # summed loss, dB
    cost: float  # summed cost, ms
    choice: tuple[str, ...]  # one kind per slot, in slot order


def _non_dominated(points: Iterable[FrontPoint]) -> list[FrontPoint]:
    """Sorted by loss; each point strictly cheaper than every point of smaller or equal loss."""
    out: list[FrontPoint] = []
    for p in sorted(points, key=lambda p: (p.loss, p.cost, p.choice)):
        if not out or p.cost < out[-1].cost:
            out.append(p)
    return out


def additive_front(options: Sequence[Mapping[str, tuple[float, float]]]) -> list[FrontPoint]:
    """``options[i][kind] = (loss, cost)`` of slot ``i``; the exact front of all combinations, by loss.

    Raises ``ValueError`` for a slot with no option."""
    front = [FrontPoint(0.0, 0.0, ())]
    for i, opts in enumerate(options):
        if not opts:
            raise ValueError(f"slot {i} has no option")
        front = _non_dominated(FrontPoint(p.loss + loss, p.cost + cost, (*p.choice, kind))
                               for p in front for kind, (loss, cost) in opts.items())
    return front


def fastest_within(front: Sequence[FrontPoint], budget: float) -> FrontPoint | None:
    """The cheapest point of ``front`` (as :func:`additive_front` returns it) whose loss is at most ``budget``."""
    best = None
    for p in front:
        if p.loss > budget:
            break
        best = p
    return best
