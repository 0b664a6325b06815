"""ens-level glue between architectures and profilers: build, export, measure, predict, calibrate.

``profilers`` knows ONNX files and shapes only; this module turns an :class:`~search_spaces.Arch`
into a network (random weights: latency does not depend on them), an annotated ONNX file (the
``ens.*`` metadata carries the arch string, hash, block kinds and U-Net config), and a
:class:`~profilers.result.LatencyResult` through any profiler, with the cache in front.

Public functions:

- :func:`profile_arch` one architecture on one profiler (the profiler answers: cache, export, measure or predict);
- :func:`calibrate` / :func:`verify` the latency table of a device and its prediction error;
- :func:`random_archs` seeded random architectures of a config.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blocks import HybridUNet, UNetConfig, get_preset
from blocks.registry import block_kinds as registered_kinds
from blocks.registry import build_block
from ens.errors import EnsError
from profilers.base import Profiler, parse_shape
from profilers.cache import LatencyCache
from profilers.lut import LatencyTable, calibrate_table, export_calibration_networks, statistic_of
from profilers.networks import NetworkSpec, export_network
from profilers.networks import build_network as profiler_network
from profilers.registry import get_profiler
from profilers.result import LatencyResult
from search_spaces import Arch
from search_spaces.errors import ArchError

Progress = Callable[[str, int, int], None]  # (what, done, total)


# -- configuration ------------------------------------------------------------------------------
def resolve_config(preset: str | None = "tiny", cfg: UNetConfig | None = None) -> UNetConfig:
    if cfg is not None:
        return cfg
    try:
        return get_preset(preset or "tiny")
    except KeyError as exc:
        raise EnsError(str(exc.args[0])) from None


def available_kinds(candidates: Sequence[str] | None = None) -> list[str]:
    """Block kinds that are registered and whose module imports (M may be missing in a checkout)."""
    out = []
    for k in candidates or sorted(registered_kinds()):
        try:
            build_block(k, 8, 1)
        except (ImportError, KeyError):
            continue
        out.append(k)
    return out


def parse_kinds(text: str | Sequence[str] | None) -> list[str]:
    if text is None:
        return available_kinds()
    kinds = [k.strip().upper() for k in (text.split(",") if isinstance(text, str) else text) if k.strip()]
    known = registered_kinds()
    bad = [k for k in kinds if k not in known]
    if bad or not kinds:
        raise EnsError(f"unknown block kind(s) {bad or kinds} (known: {', '.join(sorted(known))})")
    missing = [k for k in kinds if k not in available_kinds(kinds)]
    if missing:
        raise EnsError(f"block kind(s) {missing} cannot be built in this installation")
    return kinds


def parse_arch(text: str | Arch, cfg: UNetConfig) -> Arch:
    arch = text if isinstance(text, Arch) else Arch.parse(text, known_kinds=registered_kinds())
    arch.block_kinds(cfg)  # raises ArchError if the arch does not fit the config
    return arch


# -- shapes -------------------------------------------------------------------------------------
MAX_BATCH = 64
MAX_PIXELS = 4096 * 4096  # per image: 16.8 Mpx (a 4K frame is 8.3 Mpx)


def image_shape(text: str | Sequence[int]) -> tuple[int, ...]:
    """An input shape for a restoration network: ``NxCxHxW`` with C = 3, sides of at least 8 px, and a size a
    CPU can hold (at most 64 images of 4096x4096 px); a clear error otherwise."""
    dims = parse_shape(text)
    if len(dims) != 4 or dims[1] != 3:
        raise EnsError(f"bad shape {text!r}: write it as NxCxHxW with C = 3 (RGB), e.g. 1x3x256x256")
    n, _, h, w = dims
    if min(h, w) < 8:
        raise EnsError(f"bad shape {text!r}: height and width must be at least 8 px")
    if n > MAX_BATCH or h * w > MAX_PIXELS:
        raise EnsError(f"shape {text!r} is too large: at most {MAX_BATCH} images of 4096x4096 px")
    return dims


# -- networks and files -------------------------------------------------------------------------
def network_spec(arch: Arch, cfg: UNetConfig, input_shape: Sequence[int]) -> NetworkSpec:
    """What a profiler needs of ``arch``: its block kinds, the config, the shape; keyed by the arch hash."""
    return NetworkSpec(arch.block_kinds(cfg), cfg.to_dict(), parse_shape(input_shape), str(arch), arch.hash)


def build_network(arch: Arch, cfg: UNetConfig, seed: int = 0) -> HybridUNet:
    """The network of ``arch`` with random weights (latency does not depend on them)."""
    return profiler_network(network_spec(arch, cfg, (1, 3, 8, 8)), seed)


def export_arch(
    arch: Arch,
    cfg: UNetConfig,
    input_shape: Sequence[int],
    path: str | os.PathLike[str],
    precision: str = "fp32",
    seed: int = 0,
) -> Path:
    """Export ``arch`` to ``path`` at one static shape, with ``ens.*`` metadata; INT8 is Q/DQ."""
    return export_network(network_spec(arch, cfg, input_shape), path, precision, seed)


# -- profiling ----------------------------------------------------------------------------------
def as_profiler(profiler: Profiler | str) -> Profiler:
    return get_profiler(profiler) if isinstance(profiler, str) else profiler


def measurer_of(profiler: Profiler | str, what: str = "calibrate") -> Profiler:
    """The profiler that times files for ``profiler`` (a table's own), or a clear error for one that cannot."""
    prof = as_profiler(profiler)
    m = prof.measurer
    if m is None:
        raise EnsError(f"{what} needs a measured profiler (ort-cpu, trt:..., qaihub:...), not {prof.spec}")
    return m


def profile_arch(
    arch: Arch,
    profiler: Profiler | str,
    cfg: UNetConfig,
    input_shape: Sequence[int],
    precision: str | None = None,
    cache: LatencyCache | str | os.PathLike[str] | bool | None = True,
    onnx_path: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> LatencyResult:
    """Latency of ``arch`` on ``profiler``: the profiler answers for the network (cache, export and measure,
    or a prediction). ``cache``: True (the default cache), False/None (none), or a LatencyCache/path."""
    result = as_profiler(profiler).profile(network_spec(arch, cfg, input_shape), precision, cache=cache,
                                           onnx_path=onnx_path, seed=seed)
    return result.replace(details={**result.details, "arch": str(arch), "arch_hash": arch.hash})


# -- latency tables -----------------------------------------------------------------------------
def random_archs(n: int, cfg: UNetConfig, kinds: Sequence[str], seed: int = 0) -> list[Arch]:
    """``n`` distinct seeded random architectures, one kind per stage (per-stage granularity)."""
    from blocks.unet import stage_layout

    stages = [s.name for s in stage_layout(cfg)]
    space = len(kinds) ** len(stages)
    if n > space:
        raise EnsError(f"only {space} distinct architectures exist with kinds {list(kinds)}; asked for {n}")
    rng = random.Random(seed)
    seen: dict[str, Arch] = {}
    while len(seen) < n:
        arch = Arch.from_block_kinds({s: [rng.choice(list(kinds))] * d.depth for s, d in zip(
            stages, stage_layout(cfg), strict=True)})
        seen.setdefault(str(arch), arch)
    return list(seen.values())


def calibrate(
    profiler: Profiler | str,
    cfg: UNetConfig,
    input_shape: Sequence[int],
    kinds: Sequence[str],
    precision: str | None = None,
    preset: str | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    check: bool = True,
    statistic: str = "median",
) -> tuple[LatencyTable, Path]:
    """Calibrate a latency table for ``profiler`` (a measured one) and save it; returns (table, path).

    ``check``: call ``profiler.check()`` first (the CLI has already done so).
    """
    prof = measurer_of(profiler)
    if check:
        prof.check()
    table = calibrate_table(
        prof, cfg, input_shape, kinds, precision=precision, preset=preset, progress=progress, statistic=statistic
    )
    path = table.save(out if out is not None else table.default_path())
    return table, path


@dataclass
class VerifyReport:
    rows: list[dict[str, Any]] = field(default_factory=list)
    measure_s: float = 0.0
    calibration_s: float = 0.0
    table_path: str = ""
    statistic: str = "median"
    repeats: list[dict[str, Any]] = field(default_factory=list)  # archs measured twice: arch, first_ms, second_ms
    anchors: dict[str, float] = field(default_factory=dict)  # calibration network -> now / at calibration

    def summary(self) -> dict[str, Any]:
        errs = np.array([r["error_pct"] for r in self.rows], dtype=float)
        n = len(self.rows)
        out = {
            "archs": n,
            "median_abs_error_pct": float(np.median(np.abs(errs))) if n else None,
            "mean_abs_error_pct": float(np.mean(np.abs(errs))) if n else None,
            "max_abs_error_pct": float(np.max(np.abs(errs))) if n else None,
            "mean_error_pct": float(np.mean(errs)) if n else None,
            "within_10pct": float(np.mean(np.abs(errs) <= 10.0)) if n else None,
            "within_5pct": float(np.mean(np.abs(errs) <= 5.0)) if n else None,
            "statistic": self.statistic,
            "calibration_s": self.calibration_s,
            "measure_all_s": self.measure_s,
            "calibration_vs_measure_all": (self.calibration_s / self.measure_s) if self.measure_s else None,
            "table": self.table_path,
        }
        if self.repeats:
            # the same file measured twice in one batch: how well a measurement predicts the next one, the noise
            # floor under the table's error (each measurement is one side of the comparison)
            diffs = np.array([100.0 * (r["second_ms"] - r["first_ms"]) / r["first_ms"] for r in self.repeats])
            out["repeatability"] = {
                "archs": len(self.repeats),
                "median_abs_diff_pct": float(np.median(np.abs(diffs))),
                "within_10pct": float(np.mean(np.abs(diffs) <= 10.0)),
                "within_5pct": float(np.mean(np.abs(diffs) <= 5.0)),
            }
        if self.anchors:
            # the machine's speed now against at calibration, from the calibration's own networks measured again in
            # this batch: a uniform drift scales every prediction alike and changes no ranking
            ratio = float(np.median(list(self.anchors.values())))
            fixed = np.array([100.0 * (r["predicted_ms"] * ratio - r["measured_ms"]) / r["measured_ms"]
                              for r in self.rows], dtype=float)
            out["drift"] = {
                "anchors": len(self.anchors),
                "now_vs_calibration": ratio,
                "median_abs_error_pct": float(np.median(np.abs(fixed))) if n else None,
                "within_10pct": float(np.mean(np.abs(fixed) <= 10.0)) if n else None,
                "within_5pct": float(np.mean(np.abs(fixed) <= 5.0)) if n else None,
            }
        return out


def verify(
    table: LatencyTable,
    profiler: Profiler | str,
    cfg: UNetConfig,
    input_shape: Sequence[int],
    n: int = 50,
    seed: int = 0,
    precision: str | None = None,
    progress: Progress | None = None,
    repeat: int = 0,
    anchors: bool = True,
) -> VerifyReport:
    """Measure ``n`` seeded random architectures and compare them with the table's predictions.

    ``repeat``: the first ``repeat`` of them are measured a second time in the same interleaved batch (a
    separate session each time); the report's ``repeatability`` says how far two measurements of one file
    disagree on this machine, which bounds how close any table can be shown to come.

    ``anchors``: the table's uniform calibration networks (every block one kind) are measured again in the same
    batch; the report's ``drift`` gives the machine's speed now against at calibration, and the table's error
    with that uniform factor taken out (what a search's ranking sees)."""
    prof = measurer_of(profiler, "verify")
    shape = parse_shape(input_shape)
    prec = (precision or table.precision).lower()
    table.check_compatible(cfg.to_dict(), shape, prec)
    archs = random_archs(n, cfg, table.kinds, seed)
    again = min(max(0, repeat), len(archs))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ens-verify-") as tmp:
        paths = []
        for i, arch in enumerate(archs):
            if progress:
                progress("export", i, len(archs))
            paths.append(export_arch(arch, cfg, shape, Path(tmp) / f"{arch.hash}.onnx", precision=prec))
        for p in paths[:again]:  # a second name for the same bytes: measured as one more network
            twin = p.with_name(f"{p.stem}.again.onnx")
            shutil.copyfile(p, twin)
            paths.append(twin)
        then = _anchor_times(table) if anchors else {}
        anchor_paths = export_calibration_networks(cfg, table.kinds, shape, Path(tmp) / "anchors", prec,
                                                   only=list(then)) if then else {}  # calibrate_table's seed
        paths += list(anchor_paths.values())
        if progress:
            progress("measure", 0, len(paths))
        results = prof.measure_many(paths, shape, prec)
    measure_s = time.perf_counter() - t0
    rep = VerifyReport(measure_s=measure_s, calibration_s=table.calibration_s, table_path=str(table.path or ""),
                       statistic=table.statistic)
    for arch, res in zip(archs, results[:len(archs)], strict=True):
        pred = table.predict(arch.block_kinds(cfg))
        got = statistic_of(res, table.statistic)
        rep.rows.append(
            {
                "arch": str(arch),
                "measured_ms": got,
                "predicted_ms": pred,
                "error_pct": 100.0 * (pred - got) / got,
            }
        )
    for row, res in zip(rep.rows[:again], results[len(archs):len(archs) + again], strict=True):
        rep.repeats.append({"arch": row["arch"], "first_ms": row["measured_ms"],
                            "second_ms": statistic_of(res, table.statistic)})
    for name, res in zip(anchor_paths, results[len(archs) + again:], strict=True):
        rep.anchors[name] = statistic_of(res, table.statistic) / then[name]
    return rep


def _anchor_times(table: LatencyTable) -> dict[str, float]:
    """The table's uniform networks and their calibration times in its statistic (none if it did not keep them:
    tables fitted to the minimum before the minimum was stored)."""
    key = "min_ms" if table.statistic == "min" else "median_ms"
    out = {}
    for k in table.kinds:
        v = (table.measurements.get(f"uniform:{k}") or {}).get(key)
        if isinstance(v, (int, float)) and v > 0:
            out[f"uniform:{k}"] = float(v)
    return out


__all__ = [
    "ArchError",
    "VerifyReport",
    "available_kinds",
    "build_network",
    "calibrate",
    "export_arch",
    "parse_arch",
    "parse_kinds",
    "measurer_of",
    "network_spec",
    "profile_arch",
    "random_archs",
    "resolve_config",
    "verify",
]
