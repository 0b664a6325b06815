"""Search objectives: which metrics, which direction, and the scalar ``score``.

``--objective`` takes a comma list of: ``psnr``, ``ssim`` (maximised); ``latency``, ``params``,
``macs``, ``transformer_count`` (minimised); or ``score`` alone, the single scalar

    score = PSNR - alpha * log2(latency / latency_ref)      [dB]

where ``latency_ref`` is the all-transformer network's latency on the same profiler and shape and
``alpha`` (``--score-alpha``, default 0.5) is how many dB one halving of latency is worth: an
architecture twice as fast as the teacher and 0.4 dB worse scores +0.1 over it. With
``--latency-budget`` the budget is also an Optuna constraint (latency - budget <= 0 is feasible).

Each objective is named with its unit in the study (``study.set_metric_names``), so the dashboard shows
"PSNR (dB)" and "latency (ms, predicted by lut:ort-cpu, ±3.9% measured error)", not "0" and "1". A
predicted latency always says so, with the table's error against measurements when ``ens calibrate
--verify`` recorded one in the table (``"verify": {"median_abs_error_pct": ...}``), else "error not
verified".
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ens.errors import EnsError
from profilers.result import MEASURED, PREDICTED, PROXY, REPORTED, LatencyResult
from studies.runner import Objective

if TYPE_CHECKING:
    from blocks.unet import UNetConfig
    from profilers.base import Profiler

METRICS: dict[str, str] = {
    "psnr": "maximize",
    "ssim": "maximize",
    "latency": "minimize",
    "params": "minimize",
    "macs": "minimize",
    "transformer_count": "minimize",
    "score": "maximize",
}

NAMES: dict[str, str] = {
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "params": "parameters",
    "macs": "MACs",
    "transformer_count": "transformer blocks",
    "score": "score (dB)",
}


def parse_objectives(text: str) -> list[Objective]:
    names = [n.strip().lower() for n in str(text).split(",") if n.strip()]
    if not names:
        raise EnsError("--objective is empty (for example: psnr,latency)")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise EnsError(f"unknown objective {unknown[0]!r} (choose from {', '.join(METRICS)})")
    if len(set(names)) != len(names):
        raise EnsError(f"objective listed twice in {text!r}")
    if "score" in names and len(names) > 1:
        raise EnsError("'score' is a single scalar objective: use it alone")
    if not any(METRICS[n] == "maximize" for n in names) and "score" not in names:
        raise EnsError(f"--objective {text!r} has no quality term (add psnr or ssim)")
    return [Objective(n, METRICS[n]) for n in names]


def score(psnr: float, latency_ms: float, ref_latency_ms: float, alpha: float = 0.5) -> float:
    if latency_ms <= 0 or ref_latency_ms <= 0:
        raise ValueError("latencies must be positive")
    return psnr - alpha * math.log2(latency_ms / ref_latency_ms)


def latency_label(profiler: str, source: str, unit: str = "ms", error_pct: float | None = None) -> str:
    """What a latency number is, for axes, metric names and table headers: its unit, and whether it was
    measured (on which profiler) or predicted (by which table, with what error against measurements)."""
    if source == PROXY or unit not in ("ms", ""):
        return f"{unit} (latency proxy)" if unit not in ("", "count") else "latency proxy (a count, not a time)"
    if source in (MEASURED, REPORTED):
        return f"latency (ms, measured on {profiler})"
    err = f"±{error_pct:.1f}% measured error" if error_pct is not None else "error not verified"
    return f"latency (ms, {source} by {profiler}, {err})"


def table_error_pct(details: Mapping[str, Any]) -> float | None:
    """The median |error| (%) of the latency table behind a prediction against measured architectures, as
    ``ens calibrate --verify`` records it in the table file; None when it has none (or no table is named)."""
    path = details.get("table")
    if details.get("source") != PREDICTED or not path:
        return None
    try:
        verify = json.loads(Path(path).read_text(encoding="utf-8")).get("verify") or {}
        err = verify.get("median_abs_error_pct")
    except (OSError, ValueError, AttributeError):
        return None
    return float(err) if isinstance(err, (int, float)) and math.isfinite(err) else None


QUALITY = ("psnr", "ssim", "score")


def metric_names(objectives: Sequence[Objective], latency: str, quality_on: str | None = None) -> list[str]:
    """The study's objective names, with units; ``latency`` is the latency's label (:func:`latency_label`);
    ``quality_on``: what the quality metrics were measured on when it is not the held-out patches."""
    def name(metric: str) -> str:
        if metric == "latency":
            return latency
        if quality_on and metric in QUALITY:
            base = NAMES[metric]
            return f"{base[:-1]}, {quality_on})" if base.endswith(")") else f"{base} ({quality_on})"
        return NAMES[metric]

    return [name(o.metric) for o in objectives]


def latency_naming(prof: Profiler, cfg: UNetConfig, shape: Sequence[int],
                   precision: str | None = None) -> tuple[str, float | None]:
    """The latency's label for a study on ``prof`` and the latency table's measured error (%, or None).

    A predicting profiler answers for the all-transformer network (instantly) to say what it predicts
    and from which table; a measuring one is not run."""
    if not prof.predicts:
        return latency_label(prof.spec, MEASURED, prof.unit), None
    from ens.profiling import profile_arch
    from search_spaces.arch import Arch

    lat = profile_arch(Arch.uniform("T"), prof, cfg, shape, precision=precision)
    err = table_error_pct(lat.details)
    return latency_label(prof.spec, lat.source, latency_unit(lat), err), err


def latency_unit(lat: LatencyResult) -> str:
    return "ms" if lat.is_time else str(lat.details.get("unit", "count"))
