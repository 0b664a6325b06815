"""``lut:PROFILER``: a per-device latency table, calibrated from real measurements, that predicts
the latency of any architecture of one U-Net configuration at one input shape, instantly.

The model (additive, in context)::

    latency(arch) ~= skeleton + sum over block positions (stage, i) of  cost[stage][kind(stage, i)]

- ``skeleton`` is the fixed part of the U-Net (embedding, down/up-sampling, skip 1x1s, output):
  the network with every block replaced by the identity. Its cost does not depend on the kinds.
- ``cost[stage][kind]`` is the cost of one block of ``kind`` at ``stage``. Every block of a stage
  sees the same tensor shape, so one number per (stage, kind) serves every position of the stage
  (per-stage granularity: ``1 + stages x kinds`` networks, whatever the depth).
- Each cost is measured *in context*, inside the real network around it: the skeleton with the
  whole stage set to ``kind`` (every other block the identity) minus the skeleton, divided by the
  stage's depth. Timing one block alone, out of the network, would miss the memory traffic and
  cache state the network puts around it.
- Context correction: the ``uniform`` networks (every block of one kind, one per kind) are measured
  in the same interleaved batch; the costs of each kind are scaled so that the table reproduces
  them exactly (``scale[kind] = (uniform_kind - skeleton) / sum of that kind's costs``). This
  captures what isolated stages miss when every stage is busy (caches, allocator, threads) and
  is what made the table accurate on this CPU (see ``bench/bench_profilers.py``).

``1 + (stages + 1) x kinds`` networks are measured once each (the skip kind, ``I``, is the skeleton and costs
0 without a measurement), all in one interleaved batch when
the profiler supports it (``ort-cpu``), so a slow drift of the machine's load affects every
entry alike. Any measured profiler can calibrate a table (``lut:ort-cpu``, ``lut:trt:ssh://...``,
``lut:qaihub:...``); predictions carry ``details["source"] == "predicted"``.

``statistic="min"`` fits each network's fastest run instead of its median (and the table then
predicts that); on a machine shared with other jobs it is the less disturbed estimate.

The table is JSON: device, profiler spec, precision, input shape, U-Net config (and preset
name), kinds, skeleton, costs, scales, the raw measurements, versions of onnxruntime / torch /
onnx / ens, creation time and calibration time. Predicting for another shape, config, precision
or an unknown kind raises :class:`~profilers.errors.TableMismatch`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profilers import onnx_info
from profilers.base import Profiler, WrappingProfiler, format_shape, parse_shape
from profilers.cache import GRAPH_REVISION, cache_root
from profilers.errors import MeasurementError, ProfilerError, TableMismatch, TableNotFound
from profilers.result import PREDICTED, LatencyResult

FORMAT = "ens-latency-table/1"
METHOD = "in-context stage costs, uniform-scaled"
Progress = Callable[[str, int, int], None]


def config_hash(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(_canon(config), sort_keys=True).encode()).hexdigest()[:12]


def _canon(config: Mapping[str, Any]) -> dict[str, Any]:
    d = json.loads(json.dumps(dict(config), sort_keys=True, default=list))
    for k in ("num_blocks", "heads"):
        if k in d and d[k] is not None:
            d[k] = list(d[k])
    return d


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:80]


def tables_dir() -> Path:
    return cache_root() / "latency" / "tables"


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for pkg in ("ens", "onnxruntime", "torch", "onnx"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


@dataclass
class LatencyTable:
    profiler: str
    device: str
    precision: str
    input_shape: tuple[int, ...]
    config: dict[str, Any]
    kinds: tuple[str, ...]
    stages: dict[str, int]  # stage -> depth, in data-flow order
    skeleton_ms: float
    costs: dict[str, dict[str, float]]  # stage -> kind -> ms per block (scaled)
    scales: dict[str, float] = field(default_factory=dict)
    measurements: dict[str, dict[str, Any]] = field(default_factory=dict)
    preset: str | None = None
    method: str = METHOD
    versions: dict[str, str | None] = field(default_factory=dict)
    created: str = ""
    calibration_s: float = 0.0
    statistic: str = "median"  # which per-network statistic the costs come from: median or min
    verify: dict[str, Any] = field(default_factory=dict)  # its error against measured archs (ens calibrate --verify)
    graph_revision: int = GRAPH_REVISION  # of the exported graphs it timed (profilers.cache.GRAPH_REVISION)
    path: Path | None = field(default=None, compare=False)

    # -- predicting -----------------------------------------------------------------------------
    def predict(self, block_kinds: Mapping[str, Sequence[str]]) -> float:
        """Predicted median latency (ms) of the network with these kinds per stage."""
        total = self.skeleton_ms
        for stage, depth in self.stages.items():
            ks = list(block_kinds.get(stage, ()))
            if len(ks) != depth:
                raise TableMismatch(
                    f"the table's stage {stage} has {depth} block(s); the network gives {len(ks)} ({ks})"
                )
            for k in ks:
                if k not in self.costs[stage]:
                    raise TableMismatch(
                        f"block kind {k!r} was not calibrated (table kinds: {', '.join(self.kinds)}); "
                        "recalibrate with it: ens calibrate --kinds ..."
                    )
                total += self.costs[stage][k]
        extra = set(block_kinds) - set(self.stages)
        if extra:
            raise TableMismatch(f"stages {sorted(extra)} are not in the table")
        return float(total)

    def breakdown(self, block_kinds: Mapping[str, Sequence[str]]) -> dict[str, float]:
        out = {"skeleton": self.skeleton_ms}
        for stage in self.stages:
            out[stage] = float(sum(self.costs[stage][k] for k in block_kinds[stage]))
        return out

    def check_compatible(
        self, config: Mapping[str, Any] | None, input_shape: Sequence[int], precision: str | None = None
    ) -> None:
        shape = tuple(parse_shape(input_shape))
        if self.graph_revision != GRAPH_REVISION:
            raise TableMismatch(
                f"the latency table timed revision {self.graph_revision} of the exported graphs, and this ens "
                f"exports revision {GRAPH_REVISION}: calibrate it again (ens calibrate)"
            )
        if shape != tuple(self.input_shape):
            raise TableMismatch(
                f"the latency table was made for shape {format_shape(self.input_shape)}, not {format_shape(shape)}; "
                "calibrate one for this shape"
            )
        if config is not None and config_hash(config) != config_hash(self.config):
            mine, theirs = _canon(self.config), _canon(config)
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise TableMismatch(
                f"the latency table was made for another network configuration (differs in {', '.join(diff)}); "
                "calibrate one for this preset/config"
            )
        if precision is not None and precision != self.precision:
            raise TableMismatch(f"the latency table is for {self.precision}, not {precision}")

    # -- storing --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "method": self.method,
            "profiler": self.profiler,
            "device": self.device,
            "precision": self.precision,
            "input_shape": list(self.input_shape),
            "preset": self.preset,
            "config": _canon(self.config),
            "config_hash": config_hash(self.config),
            "kinds": list(self.kinds),
            "stages": dict(self.stages),
            "skeleton_ms": self.skeleton_ms,
            "costs": self.costs,
            "scales": self.scales,
            "measurements": self.measurements,
            "versions": self.versions,
            "created": self.created,
            "calibration_s": self.calibration_s,
            "verify": dict(self.verify),
            "statistic": self.statistic,
            "graph_revision": self.graph_revision,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: Path | None = None) -> LatencyTable:
        if d.get("format") != FORMAT:
            raise TableMismatch(f"{path or 'table'} is not an ens latency table ({FORMAT})")
        return cls(
            profiler=d["profiler"],
            device=d["device"],
            precision=d["precision"],
            input_shape=tuple(d["input_shape"]),
            config=dict(d["config"]),
            kinds=tuple(d["kinds"]),
            stages={k: int(v) for k, v in d["stages"].items()},
            skeleton_ms=float(d["skeleton_ms"]),
            costs={s: {k: float(v) for k, v in c.items()} for s, c in d["costs"].items()},
            scales={k: float(v) for k, v in (d.get("scales") or {}).items()},
            measurements=dict(d.get("measurements") or {}),
            preset=d.get("preset"),
            method=d.get("method", METHOD),
            versions=dict(d.get("versions") or {}),
            created=d.get("created", ""),
            calibration_s=float(d.get("calibration_s", 0.0)),
            verify=dict(d.get("verify") or {}),
            statistic=str(d.get("statistic", "median")),
            graph_revision=int(d.get("graph_revision", 1)),
            path=path,
        )

    def default_path(self, directory: str | os.PathLike[str] | None = None) -> Path:
        return default_table_path(
            self.profiler, self.device, self.input_shape, self.precision, self.config, directory
        )

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the table as JSON, atomically; returns the path."""
        p = Path(path) if path is not None else self.default_path()
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".json", dir=p.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_dict(), f, indent=1, sort_keys=False)
            os.replace(tmp, p)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.path = p
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyTable:
        p = Path(path)
        try:
            with open(p, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise TableNotFound(f"no latency table at {p}") from None
        except json.JSONDecodeError as exc:
            raise TableMismatch(f"{p} is not valid JSON: {exc}") from None
        return cls.from_dict(d, path=p)


def default_table_path(
    profiler_spec: str,
    device: str,
    input_shape: Sequence[int],
    precision: str,
    config: Mapping[str, Any],
    directory: str | os.PathLike[str] | None = None,
) -> Path:
    d = Path(directory) if directory is not None else tables_dir()
    key = hashlib.sha256(f"{profiler_spec}|{device}".encode()).hexdigest()[:8]
    if precision == "int8":  # a table of one INT8 graph never predicts another's
        from profilers.int8_graphs import int8_graph_name

        precision = f"int8.{int8_graph_name()}"
    name = (f"{_slug(profiler_spec)}-{key}-{format_shape(input_shape)}-{precision}-{config_hash(config)}"
            f"-g{GRAPH_REVISION}.json")
    return d / name


# -- calibration --------------------------------------------------------------------------------
def passthrough_kinds(kinds: Sequence[str]) -> set[str]:
    """The kinds whose block returns its input (the skip, ``I``): a network of them *is* the skeleton, so they
    cost nothing by construction and are not measured (their measured differences were noise: -5 ms a stage
    in one 8-kind table, which predicted -2.6 ms for the all-skip network)."""
    from blocks.registry import block_kinds

    known = block_kinds()
    return {k for k in kinds if k in known and known[k].passthrough}


def calibration_networks(cfg: Any, kinds: Sequence[str]) -> dict[str, dict[str, list[str | None]]]:
    """Name -> kinds per stage (``None`` = identity) of every network the calibration measures."""
    from blocks.unet import stage_layout

    layout = stage_layout(cfg)
    nets: dict[str, dict[str, list[str | None]]] = {"skeleton": {s.name: [None] * s.depth for s in layout}}
    kinds = [k for k in kinds if k not in passthrough_kinds(kinds)]
    for k in kinds:
        nets[f"uniform:{k}"] = {s.name: [k] * s.depth for s in layout}
    for s in layout:
        for k in kinds:
            nets[f"stage:{s.name}:{k}"] = {t.name: ([k] * t.depth if t.name == s.name else [None] * t.depth)
                                          for t in layout}
    return nets


def build_calibration_network(cfg: Any, kinds: Mapping[str, Sequence[str | None]], seed: int = 0):
    """A HybridUNet whose positions marked ``None`` hold ``nn.Identity`` (the skeleton's)."""
    import torch
    from torch import nn

    from blocks import HybridUNet

    first = next((k for ks in kinds.values() for k in ks if k is not None), "T")
    torch.manual_seed(seed)
    model = HybridUNet(cfg, {s: [k or first for k in ks] for s, ks in kinds.items()})
    for s, ks in kinds.items():
        for i, k in enumerate(ks):
            if k is None:
                model.stages[s][i] = nn.Identity()
    return model.eval()


def fit_table(
    medians: Mapping[str, float], stages: Mapping[str, int], kinds: Sequence[str]
) -> tuple[float, dict[str, dict[str, float]], dict[str, float]]:
    """(skeleton, costs, scales) from the medians of :func:`calibration_networks`' networks. A pass-through kind
    costs 0; a stage cost measured below 0 (a block faster than no block: the machine's noise) counts as 0."""
    skeleton = float(medians["skeleton"])
    nil = passthrough_kinds(kinds)
    raw = {s: {k: 0.0 if k in nil else max(0.0, (float(medians[f"stage:{s}:{k}"]) - skeleton) / d) for k in kinds}
           for s, d in stages.items()}
    scales: dict[str, float] = {}
    for k in kinds:
        if k in nil:
            scales[k] = 1.0
            continue
        total = sum(raw[s][k] * d for s, d in stages.items())
        target = float(medians[f"uniform:{k}"]) - skeleton
        scales[k] = target / total if total > 0 and target > 0 else 1.0
    costs = {s: {k: raw[s][k] * scales[k] for k in kinds} for s in stages}
    return skeleton, costs, scales


def export_calibration_networks(
    cfg: Any,
    kinds: Sequence[str],
    input_shape: Sequence[int],
    directory: str | os.PathLike[str],
    precision: str = "fp32",
    progress: Progress | None = None,
    seed: int = 0,
    only: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Export every calibration network of ``cfg`` (or those named in ``only``) into ``directory``; name -> ONNX
    path."""
    from profilers.onnx_export import export_onnx

    shape = parse_shape(input_shape)
    nets = calibration_networks(cfg, kinds)
    if only is not None:
        wanted = set(only)
        nets = {name: ks for name, ks in nets.items() if name in wanted}
    out: dict[str, Path] = {}
    for i, (name, ks) in enumerate(nets.items()):
        if progress:
            progress("export", i, len(nets))
        path = Path(directory) / f"{_slug(name)}.onnx"
        model = build_calibration_network(cfg, ks, seed)
        if precision == "int8":
            from profilers.int8_graphs import build_int8

            build_int8(model, shape, path)
        else:
            export_onnx(model, shape, path)
        out[name] = path
    if progress:
        progress("export", len(nets), len(nets))
    return out


STATISTICS = ("median", "min")


def statistic_of(result: LatencyResult, statistic: str = "median") -> float:
    """The result's median, or the minimum over its runs (``details["min_ms"]``, measured profilers)."""
    if statistic == "median":
        return float(result.median_ms)
    if statistic == "min":
        if "min_ms" not in result.details:
            raise MeasurementError(f"{result.profiler or 'this profiler'} reports no per-run minimum")
        return float(result.details["min_ms"])
    raise ProfilerError(f"unknown statistic {statistic!r} (choose from {', '.join(STATISTICS)})")


def table_from_results(
    profiler: Profiler,
    cfg: Any,
    input_shape: Sequence[int],
    kinds: Sequence[str],
    results: Mapping[str, LatencyResult],
    precision: str,
    calibration_s: float,
    preset: str | None = None,
    statistic: str = "median",
) -> LatencyTable:
    """Fit a :class:`LatencyTable` from the measured calibration networks (name -> result).

    ``statistic="min"`` fits the fastest run of each network instead of its median: on a machine
    shared with other jobs the minimum is the least disturbed estimate of a network's cost.
    """
    from blocks.unet import stage_layout

    stages = {s.name: s.depth for s in stage_layout(cfg)}
    medians = {name: statistic_of(r, statistic) for name, r in results.items()}
    bad = [n for n, v in medians.items() if not (v > 0 and math.isfinite(v))]
    if bad:
        raise MeasurementError(f"calibration got no usable time for {', '.join(bad)}")
    skeleton, costs, scales = fit_table(medians, stages, kinds)
    cfg_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return LatencyTable(
        profiler=profiler.spec,
        device=profiler.device,
        precision=precision,
        input_shape=tuple(parse_shape(input_shape)),
        config=cfg_dict,
        kinds=tuple(kinds),
        stages=stages,
        skeleton_ms=skeleton,
        costs=costs,
        scales=scales,
        measurements={n: {"median_ms": r.median_ms, "p90_ms": None if math.isnan(r.p90_ms) else r.p90_ms,
                          "min_ms": r.details.get("min_ms"), "runs": r.runs} for n, r in results.items()},
        preset=preset,
        versions=versions(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        calibration_s=calibration_s,
        statistic=statistic,
    )


def calibrate_table(
    profiler: Profiler,
    cfg: Any,
    input_shape: Sequence[int],
    kinds: Sequence[str],
    precision: str | None = None,
    preset: str | None = None,
    workdir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    seed: int = 0,
    statistic: str = "median",
) -> LatencyTable:
    """Export and measure the calibration networks of ``cfg`` on ``profiler``; fit a table.

    ``calibration_s`` (stored in the table) is the wall time of the whole calibration,
    exports included.
    """
    shape = parse_shape(input_shape)
    prec = (precision or profiler.default_precision).lower()
    kinds = tuple(dict.fromkeys(kinds))
    if not kinds:
        raise ProfilerError("calibrate needs at least one block kind")
    if statistic not in STATISTICS:
        raise ProfilerError(f"unknown statistic {statistic!r} (choose from {', '.join(STATISTICS)})")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ens-lut-", dir=workdir) as tmp:
        paths = export_calibration_networks(cfg, kinds, shape, tmp, prec, progress, seed)
        if progress:
            progress("measure", 0, len(paths))
        measured = profiler.measure_many(list(paths.values()), shape, prec)
    results = dict(zip(paths, measured, strict=True))
    return table_from_results(
        profiler, cfg, shape, kinds, results, prec, time.perf_counter() - t0, preset, statistic
    )


# -- the profiler -------------------------------------------------------------------------------
class LUTProfiler(WrappingProfiler):
    """Predicts from a latency table calibrated with ``inner``; never touches the device."""

    name = "lut"
    predicts = True

    def __init__(
        self,
        inner: Profiler,
        table: LatencyTable | str | os.PathLike[str] | None = None,
        tables_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(inner)
        self._table = table if isinstance(table, LatencyTable) else None
        self._table_path = Path(table) if isinstance(table, (str, os.PathLike)) else None
        self.tables_dir = Path(tables_dir) if tables_dir else None
        self._loaded: dict[Path, LatencyTable] = {}

    @property
    def spec(self) -> str:
        return f"lut:{self.inner.spec}"

    @property
    def measurer(self) -> Profiler | None:
        return self.inner

    def profile(self, net, precision: str | None = None, **_: Any) -> LatencyResult:
        return self.predict_kinds(net.kinds, net.config, net.shape, precision, arch=net.label or None)

    def prepare(self, config: dict[str, Any], input_shape: Sequence[int], kinds: Sequence[str],
                log: Callable[[str], None] = print, preset: str | None = None, precision: str | None = None) -> None:
        """Calibrate and save the table for this config, shape and precision if there is none (each stage and
        kind once)."""
        from blocks import UNetConfig

        prec = self._precision(precision)
        try:
            self.table_for(config, input_shape, prec)
            return
        except TableNotFound:
            pass
        log(f"no {prec} latency table for {self.inner.spec} at {format_shape(input_shape)}: calibrating one first "
            f"(each stage and block kind measured once in context)")
        self.inner.check()
        table = calibrate_table(self.inner, UNetConfig.from_dict(dict(config)), input_shape, kinds, precision=prec,
                                preset=preset)
        path = table.save(table.default_path(self.tables_dir))
        log(f"latency table written to {path}")

    def check(self) -> None:
        """A table given by path must load; otherwise nothing to reach (tables are found per config)."""
        if self._table_path is not None:
            self._load(self._table_path)

    def _load(self, path: Path) -> LatencyTable:
        if path not in self._loaded:
            self._loaded[path] = LatencyTable.load(path)
        return self._loaded[path]

    def table_for(self, config: Mapping[str, Any] | None, input_shape: Sequence[int], precision: str) -> LatencyTable:
        if self._table is not None:
            table = self._table
        elif self._table_path is not None:
            table = self._load(self._table_path)
        else:
            if config is None:
                raise TableMismatch("this ONNX file carries no ens.config metadata: give the table (lut:...?table=)")
            path = default_table_path(
                self.inner.spec, self.inner.device, input_shape, precision, config, self.tables_dir
            )
            if not path.is_file():
                raise TableNotFound(
                    f"no latency table for {self.inner.spec} on this device at {format_shape(input_shape)} "
                    f"({precision}) for this network; run: ens calibrate --profiler {self.inner.spec} "
                    f"--shape {format_shape(input_shape)} ..."
                )
            table = self._load(path)
        table.check_compatible(config, input_shape, precision)
        return table

    def predict_kinds(
        self,
        block_kinds: Mapping[str, Sequence[str]],
        config: Mapping[str, Any] | None,
        input_shape: Sequence[int],
        precision: str | None = None,
        arch: str | None = None,
    ) -> LatencyResult:
        shape = parse_shape(input_shape)
        prec = self._precision(precision)
        table = self.table_for(config, shape, prec)
        ms = table.predict(block_kinds)
        return LatencyResult(
            median_ms=ms,
            p90_ms=math.nan,
            runs=0,
            device=self.device,
            details={
                "source": PREDICTED,
                "table": str(table.path) if table.path else None,
                "table_created": table.created,
                "method": table.method,
                "statistic": table.statistic,
                "calibrated_with": table.profiler,
                "breakdown_ms": table.breakdown(block_kinds),
                "input_shape": format_shape(shape),
                **({"arch": arch} if arch else {}),
            },
            profiler=self.spec,
            input_shape=shape,
            precision=prec,
        )

    def measure(
        self,
        onnx_path: str | os.PathLike[str],
        input_shape: Sequence[int],
        precision: str | None = None,
    ) -> LatencyResult:
        try:
            meta = onnx_info.read_metadata(onnx_path)
            kinds = meta.get("block_kinds") or onnx_info.block_kinds_from_graph(onnx_path)
        except (OSError, ValueError) as exc:
            raise MeasurementError(f"cannot read {onnx_path}: {exc}") from None
        if not kinds:
            raise TableMismatch(
                f"{Path(onnx_path).name} carries no block kinds (ens.block_kinds metadata or slot node names); "
                "a latency table predicts ens networks only"
            )
        return self.predict_kinds(kinds, meta.get("config"), input_shape, precision, arch=meta.get("arch"))
