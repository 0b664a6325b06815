"""Search objectives: which metrics, which direction, and the scalar ``score``.

``--objective`` takes a comma list of: ``psnr``, ``ssim`` (maximised); ``latency``, ``params``,
``macs``, ``transformer_count`` (minimised); or ``score`` alone, the single scalar

    score = PSNR - alpha * log2(latency / latency_ref)      [dB]

where ``latency_ref`` is the all-transformer network's latency on the same profiler and shape and
``alpha`` (``--score-alpha``, default 0.5) is how many dB one halving of latency is worth: an
architecture twice as fast as the teacher and 0.4 dB worse scores +0.1 over it. With
``--latency-budget`` the budget is also an Optuna constraint (latency - budget <= 0 is feasible).
"""

from __future__ import annotations

import math

from ens.errors import EnsError
from studies.runner import Objective

METRICS: dict[str, str] = {
    "psnr": "maximize",
    "ssim": "maximize",
    "latency": "minimize",
    "params": "minimize",
    "macs": "minimize",
    "transformer_count": "minimize",
    "score": "maximize",
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
