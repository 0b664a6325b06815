"""Finalists timed side by side: the trials the study ranks fastest within a loss of all-T, against all-T.

A latency table predicts a network from stage costs calibrated once, and on a shared machine one calibration
can misjudge a network by a quarter: the README's first command predicted 2.91x for a winner that ran 2.34-2.40x
beside all-T. ``ens search --time-finalists K`` exports the ``K`` fastest trials (by the study's latency)
within ``--zoo-front-target`` dB of the all-T trial, and all-T itself, times them interleaved on the profiler
that measures for the table (ort-cpu under lut:ort-cpu), and keeps the result in the study's user attr
``finalists``. The fastest measured finalist is the one to finalize.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from blocks.unet import UNetConfig
from ens.errors import EnsError
from profilers.base import Profiler
from search_spaces.arch import Arch

STUDY_ATTR = "finalists"


@dataclass(frozen=True)
class Finalist:
    trial: int
    arch: str
    psnr: float
    loss_db: float  # the all-T trial's PSNR minus this one's
    study_ms: float  # the latency the study ranked it by (a table's prediction, or the trial's measurement)
    measured_ms: float  # median of the batches' medians, timed interleaved with all-T
    speedup: float  # all-T's measured latency over this one's


def pick_finalists(study: optuna.Study, k: int, target_db: float) -> tuple[FrozenTrial, list[FrozenTrial]]:
    """The all-T trial, and the ``k`` trials of other architectures fastest by the study's latency within
    ``target_db`` of its PSNR (one trial per architecture; ties go to the better PSNR)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if {"arch", "psnr", "latency"} <= t.user_attrs.keys() and "duplicate_of" not in t.user_attrs]
    all_t = str(Arch.uniform("T"))
    ref = next((t for t in done if t.user_attrs["arch"] == all_t), None)
    if ref is None:
        raise EnsError(f"study {study.study_name!r} has no all-T trial to time the finalists against")
    near = sorted((t for t in done if t.user_attrs["arch"] != all_t
                   and ref.user_attrs["psnr"] - t.user_attrs["psnr"] <= target_db),
                  key=lambda t: (t.user_attrs["latency"], -t.user_attrs["psnr"]))
    picked: dict[str, FrozenTrial] = {}
    for t in near:
        picked.setdefault(t.user_attrs["arch"], t)
        if len(picked) == k:
            break
    return ref, list(picked.values())


def time_finalists(study: optuna.Study, k: int, target_db: float, measurer: Profiler, cfg: UNetConfig,
                   shape: Sequence[int], precision: str, batches: int = 3,
                   log: Callable[[str], None] = print) -> list[Finalist]:
    """Time the finalists and all-T in ``batches`` interleaved batches of ``measurer``; store and return them."""
    from ens.profiling import export_arch

    ref, picked = pick_finalists(study, k, target_db)
    record = {"profiler": measurer.spec, "precision": precision, "target_db": target_db, "batches": 0,
              "all_t_trial": ref.number, "all_t_ms": None, "rows": []}
    if not picked:  # recorded too: no earlier run's finalists left standing in the study
        study.set_user_attr(STUDY_ATTR, record)
        log(f"finalists: no trial within {target_db:g} dB of all-T to time")
        return []
    archs = [ref.user_attrs["arch"], *[t.user_attrs["arch"] for t in picked]]
    log(f"finalists: timing the {len(picked)} fastest within {target_db:g} dB of all-T and all-T on "
        f"{measurer.spec}, interleaved, {batches} batch(es)")
    with tempfile.TemporaryDirectory(prefix="ens-finalists-") as tmp:
        paths = [export_arch(Arch.parse(a), cfg, shape, Path(tmp) / f"{i}.onnx", precision=precision)
                 for i, a in enumerate(archs)]
        runs = [measurer.measure_many(paths, shape, precision) for _ in range(batches)]
    ms = [statistics.median(batch[i].median_ms for batch in runs) for i in range(len(archs))]
    rows = [Finalist(t.number, t.user_attrs["arch"], round(t.user_attrs["psnr"], 4),
                     round(ref.user_attrs["psnr"] - t.user_attrs["psnr"], 4), round(t.user_attrs["latency"], 2),
                     round(m, 2), round(ms[0] / m, 3)) for t, m in zip(picked, ms[1:], strict=True)]
    study.set_user_attr(STUDY_ATTR, {**record, "batches": batches, "all_t_ms": round(ms[0], 2),
                                     "rows": [asdict(r) for r in rows]})
    best = max(rows, key=lambda r: r.speedup)
    log(f"finalists: fastest measured trial {best.trial}, {best.arch}: {best.measured_ms:.1f} ms vs "
        f"{ms[0]:.1f} ms for all-T ({best.speedup:.2f}x; loss {best.loss_db:+.3f} dB)")
    return rows
