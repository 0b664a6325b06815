"""``LatencyResult``: what every profiler returns, a frozen value that round-trips through JSON."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# What the number in ``median_ms`` is, in ``details["source"]``.
MEASURED = "measured"  # timed on the device by this profiler
REPORTED = "reported"  # timed on the device by the vendor's tool/service (trtexec, AI Hub) and parsed
PREDICTED = "predicted"  # a latency table's prediction from measured entries (lut:...)
PROXY = "proxy"  # not a time at all: a count (transformer blocks), see details["unit"]
SOURCES = (MEASURED, REPORTED, PREDICTED, PROXY)


@dataclass(frozen=True)
class LatencyResult:
    """One latency of one ONNX file at one input shape on one device.

    ``median_ms`` and ``p90_ms`` are milliseconds for every source but ``proxy``, whose
    ``details["unit"]`` says what was counted. ``p90_ms`` is NaN when the tool does not report a
    90th percentile (old trtexec); it is never made up. ``runs`` is how many timed inferences the
    statistics come from (0 for a prediction or a proxy).
    """

    median_ms: float
    p90_ms: float
    runs: int
    device: str
    details: Mapping[str, Any] = field(default_factory=dict, compare=False)
    profiler: str = ""
    input_shape: tuple[int, ...] = ()
    precision: str = "fp32"

    @property
    def source(self) -> str:
        return str(self.details.get("source", MEASURED))

    @property
    def is_time(self) -> bool:
        """False for the proxy, whose numbers are counts."""
        return self.source != PROXY

    def replace(self, **changes: Any) -> LatencyResult:
        d = {
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
            "runs": self.runs,
            "device": self.device,
            "details": dict(self.details),
            "profiler": self.profiler,
            "input_shape": self.input_shape,
            "precision": self.precision,
        }
        d.update(changes)
        return LatencyResult(**d)

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_ms": _num_out(self.median_ms),
            "p90_ms": _num_out(self.p90_ms),
            "runs": int(self.runs),
            "device": self.device,
            "profiler": self.profiler,
            "input_shape": list(self.input_shape),
            "precision": self.precision,
            "details": _json_safe(dict(self.details)),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyResult:
        return cls(
            median_ms=_num_in(d["median_ms"]),
            p90_ms=_num_in(d.get("p90_ms")),
            runs=int(d.get("runs", 0)),
            device=str(d["device"]),
            details=dict(d.get("details") or {}),
            profiler=str(d.get("profiler", "")),
            input_shape=tuple(int(v) for v in d.get("input_shape") or ()),
            precision=str(d.get("precision", "fp32")),
        )


def is_time(result: Mapping[str, Any]) -> bool:
    """Whether a result as a dict (``LatencyResult.to_dict()``, or a partial one) holds a time."""
    return str((result.get("details") or {}).get("source", MEASURED)) != PROXY


def summarize_ms(samples_ms: Sequence[float]) -> tuple[float, float]:
    """(median, 90th percentile) of timed runs, in milliseconds."""
    if len(samples_ms) == 0:
        raise ValueError("no timed runs to summarize")
    a = np.asarray(samples_ms, dtype=float)
    return float(np.median(a)), float(np.percentile(a, 90))


def _num_out(v: float) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def _num_in(v: Any) -> float:
    return math.nan if v is None else float(v)


def _json_safe(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(float(v)) else float(v)
    return v
