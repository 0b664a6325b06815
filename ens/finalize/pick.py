"""Which trial to finalize: one picked by number, by a latency budget, or the knee of the Pareto front.

Reads only the study's storage (trial user attrs, through :func:`ens.report.trials_frame` and
:func:`ens.report.pareto_frame`), as the dashboard and ``ens report`` do.

- ``trial=N``: that trial, whether or not it is on the front (a trial recorded as a duplicate of an
  earlier one resolves to the original).
- ``latency_budget=MS``: the highest-PSNR trial of the front whose recorded latency is at most MS (in
  the study profiler's unit: milliseconds, or a count for the ``proxy`` profiler).
- ``finalist``: the fastest of the finalists ``ens search --time-finalists K`` timed beside all-T (the study's
  user attr ``finalists``): a table's ranking checked by measurement, so the one to ship for speed.
- ``knee`` (the default): on the front normalised to [0, 1] in latency and PSNR, the point farthest
  above the chord from the fastest to the best point, i.e. ``argmax(q - c)`` with
  ``q = (psnr - min) / (max - min)`` and ``c = (latency - min) / (max - min)``. Ties (a front of two
  points always ties: both lie on the chord) go to the faster trial, since finalize ships for speed;
  ``--trial`` or ``--latency-budget`` choose otherwise. The front's latency axis is ``latency_ms``,
  else MACs when the study has no latencies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from ens.errors import EnsError
from ens.report import pareto_frame, trials_frame

PICK_METHODS = ("knee", "finalist")


class PickError(EnsError):
    """No trial can be picked as asked."""


@dataclass(frozen=True)
class Picked:
    number: int
    arch: str
    psnr: float
    ssim: float
    latency: float | None
    params: int | None
    macs: int | None
    profiler: str | None
    zoo_id: str | None
    how: str  # "trial", "budget", "knee" or "finalist"
    on_front: bool
    front_size: int

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _picked(row: pd.Series, how: str, front: pd.DataFrame, zoo_id: str | None) -> Picked:
    params, macs = _num(row.get("params")), _num(row.get("macs"))
    return Picked(
        number=int(row["number"]),
        arch=str(row["arch"]),
        psnr=float(row["psnr"]),
        ssim=float(row["ssim"]) if _num(row.get("ssim")) is not None else float("nan"),
        latency=_num(row.get("latency_ms")),
        params=int(params) if params is not None else None,
        macs=int(macs) if macs is not None else None,
        profiler=row.get("profiler"),
        zoo_id=zoo_id,
        how=how,
        on_front=bool((front["number"] == row["number"]).any()) if len(front) else False,
        front_size=len(front),
    )


def knee_index(psnr: list[float], cost: list[float]) -> int:
    """Index of the knee of a front given as (psnr, cost) pairs (see the module docstring)."""
    if not psnr:
        raise ValueError("empty front")
    lo_q, hi_q = min(psnr), max(psnr)
    lo_c, hi_c = min(cost), max(cost)
    best, best_key = 0, None
    for i, (q, c) in enumerate(zip(psnr, cost, strict=True)):
        nq = (q - lo_q) / (hi_q - lo_q) if hi_q > lo_q else 1.0
        nc = (c - lo_c) / (hi_c - lo_c) if hi_c > lo_c else 0.0
        key = (round(nq - nc, 12), -c, q)
        if best_key is None or key > best_key:
            best, best_key = i, key
    return best


def pick_trial(
    study: optuna.Study,
    trial: int | None = None,
    latency_budget: float | None = None,
    pick: str | None = None,
) -> Picked:
    """The trial to finalize; at most one of ``trial``, ``latency_budget``, ``pick`` (default: knee)."""
    given = [n for n, v in (("--trial", trial), ("--latency-budget", latency_budget), ("--pick", pick))
             if v is not None]
    if len(given) > 1:
        raise PickError(f"give only one of --trial, --latency-budget, --pick (got {', '.join(given)})")
    if pick is not None and pick not in PICK_METHODS:
        raise PickError(f"unknown --pick {pick!r} (choose from {', '.join(PICK_METHODS)})")
    zoo_id = study.user_attrs.get("zoo_id")
    df = trials_frame(study)
    if df.empty:
        raise PickError(f"study {study.study_name!r} has no completed trial to finalize")
    front = pareto_frame(study, df)

    if trial is not None:
        number = _resolve_duplicate(study, int(trial))
        rows = df[df["number"] == number]
        if rows.empty:
            done = ", ".join(str(n) for n in df["number"].tolist()[:20])
            raise PickError(f"trial {trial} is not a completed, evaluated trial of study {study.study_name!r} "
                            f"(completed: {done}{' ...' if len(df) > 20 else ''})")
        return _picked(rows.iloc[0], "trial", front, zoo_id)

    if pick == "finalist":
        return _picked(_fastest_finalist(study, df), "finalist", front, zoo_id)

    if front.empty:
        raise PickError(f"study {study.study_name!r} has no feasible trial on its Pareto front")

    if latency_budget is not None:
        if not latency_budget > 0:
            raise PickError("--latency-budget must be positive")
        lat = pd.to_numeric(front["latency_ms"], errors="coerce")
        fits = front[lat <= latency_budget]
        if fits.empty:
            fastest = lat.min()
            unit = _unit(front)
            raise PickError(f"no trial of the Pareto front fits a latency budget of {latency_budget:g} {unit} "
                            f"(the fastest takes {fastest:.4g} {unit}, profiler {front['profiler'].iloc[0]})")
        row = fits.sort_values(["psnr", "latency_ms"], ascending=[False, True]).iloc[0]
        return _picked(row, "budget", front, zoo_id)

    cost_col = "latency_ms" if pd.to_numeric(front["latency_ms"], errors="coerce").notna().all() else "macs"
    idx = knee_index([float(v) for v in front["psnr"]], [float(v) for v in front[cost_col]])
    return _picked(front.iloc[idx], "knee", front, zoo_id)


def _fastest_finalist(study: optuna.Study, df: pd.DataFrame) -> pd.Series:
    """The trial row of the fastest measured finalist (study attr ``finalists``)."""
    record = study.user_attrs.get("finalists")
    rows = record.get("rows") if isinstance(record, dict) else None
    if not rows:
        why = ("no finalist was within reach of all-T" if isinstance(record, dict)
               else "it has no timed finalists (run ens search with --time-finalists K)")
        raise PickError(f"--pick finalist: study {study.study_name!r} has nothing to pick: {why}")
    best = max(rows, key=lambda r: float(r["speedup"]))
    match = df[df["number"] == int(best["trial"])]
    if match.empty:
        raise PickError(f"--pick finalist: trial {best['trial']} of the finalists is not a completed trial of "
                        f"study {study.study_name!r}")
    return match.iloc[0]


def _unit(front: pd.DataFrame) -> str:
    unit = str(front["latency_unit"].iloc[0] or "ms") if "latency_unit" in front else "ms"
    return "ms" if unit == "ms" else f"({unit})"


def _resolve_duplicate(study: optuna.Study, number: int) -> int:
    """A trial the study marked ``duplicate_of`` another is the same architecture: use the original."""
    seen = set()
    while number not in seen:
        seen.add(number)
        try:
            t = study.trials[number] if 0 <= number < len(study.trials) else None
        except IndexError:
            t = None
        if t is None or t.number != number:
            t = next((x for x in study.get_trials(deepcopy=False) if x.number == number), None)
        if t is None or t.state != TrialState.COMPLETE:
            return number
        dup = t.user_attrs.get("duplicate_of")
        if dup is None:
            return number
        number = int(dup)
    return number
