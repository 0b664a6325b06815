"""``ort-cpu``: ONNX Runtime on this machine's CPU, measured.

Timing protocol (timing noise between rounds is about +-25% on shared 2-core machines):

- a fixed number of intra-op threads (default 2), one inter-op thread, sequential execution,
  all graph optimisations, the CPU execution provider only;
- one fixed random input (seeded) per shape;
- ``warmup`` untimed runs, then ``runs`` timed runs, each timed with ``perf_counter_ns``;
- the result is the median and the 90th percentile of the timed runs.

``clock="wall"`` (the default) times latency as a user sees it. ``clock="cpu"`` times the CPU
time the process spent in the run (all its threads; ORT's spin-waiting is switched off so that
waiting costs nothing): on a machine shared with other jobs, wall time mostly measures the
neighbours (run-to-run CV 20-45% observed here) while CPU time stays within a few percent, and
with ``threads=1`` it equals the latency of an idle core. Use it to calibrate and compare on busy
machines; the clock is part of the device string, so the cache never mixes the two.

``measure_many`` interleaves several files: ``rounds`` rounds each run every file (in a fresh
random order) for ``runs / rounds`` timed runs after one untimed run, so slow drifts of the
machine's load affect every file alike. At most ``max_sessions`` sessions stay open (a session of
a 256x256 U-Net holds ~300 MB of arena); beyond that a file's session is recreated, and warmed
up again, at each visit. The latency table is calibrated through it.

``breakdown=True`` adds, after timing, a separate profiled pass with ONNX Runtime's own profiler
(``SessionOptions.enable_profiling``): per operator type, per node and per module scope (the exporter's
``/enc1/enc1.0/T/...`` node names; the nodes ORT's optimizer makes, such as NCHWc layout reorders and fused
activations, count under the named node they serve, read off the optimized graph), milliseconds per run.
Profiling perturbs timings, so the headline numbers never come from that pass.

FP32 and INT8 (Q/DQ) graphs are both run as they are; ``precision`` must match the graph
(``profilers.onnx_info.graph_precision``), so that a cache key never says int8 for an FP32 run.
"""

from __future__ import annotations

import json
import os
import platform
import random
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from profilers import onnx_info
from profilers.base import Profiler, format_shape, parse_shape
from profilers.errors import MeasurementError, ProfilerError, ProfilerUnavailable
from profilers.result import MEASURED, LatencyResult, summarize_ms

CLOCKS = ("wall", "cpu")


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``/machine."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("flags", "features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
X86_MACHINES = ("x86_64", "amd64", "x86", "i386", "i686")


def int8_pairs_saturate(machine: str | None = None, flags: frozenset[str] | None = None) -> bool:
    """Whether ONNX Runtime's u8 x s8 kernels (QLinearConv, QLinearMatMul) can saturate on this CPU.

    On x86 without VNNI they multiply with ``vpmaddubsw``, which adds each pair of u8 * s8 products in
    a signed 16-bit register: with full-range weights 255 * 127 * 2 = 64770 overflows it and the result
    is clipped. With weights in [-64, 64] the sum stays below 32767 (255 * 64 * 2 = 32640). VNNI's
    ``vpdpbusd`` adds in 32 bits, ARM's dot products too. An x86 CPU whose flags cannot be read counts
    as one without VNNI.
    """
    machine = (machine or platform.machine()).lower()
    if machine not in X86_MACHINES:
        return False
    flags = cpu_flags() if flags is None else flags
    return not (flags & VNNI_FLAGS)


def int8_dot_product(machine: str | None = None, flags: frozenset[str] | None = None) -> str:
    """How this CPU's u8 x s8 kernels sum products, in words for reports (INT8 speed and the weight range
    depend on it): the VNNI flags it lists, or the saturating 16-bit pairs of x86 without them."""
    machine = (machine or platform.machine()).lower()
    if machine not in X86_MACHINES:
        return f"{machine}: 32-bit dot products"
    found = sorted((cpu_flags() if flags is None else flags) & VNNI_FLAGS)
    if found:
        return f"x86 with VNNI ({', '.join(found)}): 32-bit sums"
    return "x86 without VNNI: pairs of u8 x s8 products summed in 16 bits"


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:  # a base dependency; only a broken install gets here
        raise ProfilerUnavailable(f"onnxruntime does not import: {exc}") from None
    return ort


class OrtCpuProfiler(Profiler):
    name = "ort-cpu"
    precisions = ("fp32", "int8")
    default_precision = "fp32"

    def __init__(
        self,
        threads: int = 2,
        warmup: int = 3,
        runs: int = 20,
        rounds: int = 4,
        breakdown: bool = False,
        breakdown_runs: int = 5,
        seed: int = 0,
        clock: str = "wall",
        spin: bool | None = None,
        max_sessions: int = 8,
    ) -> None:
        if threads < 1 or runs < 1 or warmup < 0 or rounds < 1 or max_sessions < 1:
            raise ProfilerError("ort-cpu: threads, runs, rounds and max_sessions must be >= 1 and warmup >= 0")
        if clock not in CLOCKS:
            raise ProfilerError(f"ort-cpu: clock must be one of {', '.join(CLOCKS)}, not {clock!r}")
        self.clock = clock
        self.spin = (clock == "wall") if spin is None else bool(spin)
        self.max_sessions = int(max_sessions)
        self.threads = int(threads)
        self.warmup = int(warmup)
        self.runs = int(runs)
        self.rounds = int(rounds)
        self.breakdown = bool(breakdown)
        self.breakdown_runs = int(breakdown_runs)
        self.seed = int(seed)

    @property
    def spec(self) -> str:
        opts = [f"threads={self.threads}"] if self.threads != 2 else []
        opts += [f"clock={self.clock}"] if self.clock != "wall" else []
        return "ort-cpu" + ("?" + "&".join(opts) if opts else "")

    @property
    def device(self) -> str:
        clock = "" if self.clock == "wall" else f" / {self.clock} time"
        return f"{cpu_model()} / {self.threads} threads{clock}"

    def check(self) -> None:
        _ort()

    # -- sessions -------------------------------------------------------------------------------
    def _session(
        self, path: str | os.PathLike[str], profile_prefix: str | None = None, optimized_path: str | None = None
    ):
        ort = _ort()
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        if profile_prefix is not None:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        if optimized_path is not None:  # the graph as optimized, whose node names the profile events carry
            so.optimized_model_filepath = optimized_path
        try:
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise MeasurementError(f"onnxruntime cannot load {Path(path).name}: {exc}") from None

    def _feed(self, sess, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        feed = {}
        for i, inp in enumerate(sess.get_inputs()):
            dims = [d if isinstance(d, int) else s for d, s in zip(inp.shape, shape, strict=False)]
            if i == 0:
                dims = list(shape)
            dtype = np.float16 if "float16" in inp.type else np.float32
            feed[inp.name] = rng.random(dims, dtype=np.float32).astype(dtype)
        return feed

    def _prepare(self, path: str | os.PathLike[str], shape: tuple[int, ...], precision: str | None) -> str:
        """The file's precision, checked against ``precision`` (``"auto"``: whatever the file is)."""
        if not Path(path).is_file():
            raise MeasurementError(f"no ONNX file at {path}")
        if precision == "auto":
            precision = onnx_info.graph_precision(path)
        precision = self._precision(precision)
        try:
            onnx_info.check_input_shape(path, shape)
        except ValueError as exc:
            raise MeasurementError(str(exc)) from None
        got = onnx_info.graph_precision(path)
        if got != precision:
            hint = " (quantize it first: profilers.quantize.quantize_int8)" if precision == "int8" else ""
            raise MeasurementError(f"{Path(path).name} is a {got} graph, not {precision}{hint}")
        return precision

    # -- measuring ------------------------------------------------------------------------------
    def measure(
        self,
        onnx_path: str | os.PathLike[str],
        input_shape: Sequence[int],
        precision: str | None = None,
    ) -> LatencyResult:
        shape = parse_shape(input_shape)
        precision = self._prepare(onnx_path, shape, precision)
        sess = self._session(onnx_path)
        feed = self._feed(sess, shape)
        for _ in range(self.warmup):
            sess.run(None, feed)
        samples = [self._timed(sess, feed) for _ in range(self.runs)]
        details: dict[str, Any] = {}
        if self.breakdown:
            details["breakdown"] = self.profile_ops(onnx_path, shape)
        return self._result(samples, shape, precision, details)

    def measure_many(
        self,
        onnx_paths: Sequence[str | os.PathLike[str]],
        input_shape: Sequence[int],
        precision: str | None = None,
    ) -> list[LatencyResult]:
        shape = parse_shape(input_shape)
        precs = [self._prepare(p, shape, precision) for p in onnx_paths]
        keep_open = len(onnx_paths) <= self.max_sessions
        sessions: dict[int, Any] = {}
        feed = None
        per_round = max(1, -(-self.runs // self.rounds))
        samples: list[list[float]] = [[] for _ in onnx_paths]
        order = list(range(len(onnx_paths)))
        rng = random.Random(self.seed)
        for r in range(self.rounds):
            rng.shuffle(order)
            for i in order:
                sess = sessions.get(i)
                fresh = sess is None
                if fresh:
                    sess = self._session(onnx_paths[i])
                    if keep_open:
                        sessions[i] = sess
                if feed is None:
                    feed = self._feed(sess, shape)
                # a new session gets the full warm-up once, then one run per visit (arena, caches)
                warm = self.warmup if (fresh and r == 0) else 1
                for _ in range(max(1, warm)):
                    sess.run(None, feed)
                samples[i].extend(self._timed(sess, feed) for _ in range(per_round))
                del sess
        out = []
        for i, p in enumerate(onnx_paths):
            details: dict[str, Any] = {"interleaved_with": len(onnx_paths) - 1, "rounds": self.rounds,
                                       "sessions_kept_open": keep_open}
            if self.breakdown:
                details["breakdown"] = self.profile_ops(p, shape)
            out.append(self._result(samples[i], shape, precs[i], details))
        return out

    def _result(
        self, samples: list[float], shape: tuple[int, ...], precision: str, extra: dict[str, Any]
    ) -> LatencyResult:
        med, p90 = summarize_ms(samples)
        a = np.asarray(samples)
        details = {
            "source": MEASURED,
            "clock": self.clock,
            "threads": self.threads,
            "warmup": self.warmup,
            "min_ms": float(a.min()),
            "mean_ms": float(a.mean()),
            "max_ms": float(a.max()),
            "cv": float(a.std() / a.mean()) if a.mean() > 0 else 0.0,
            "onnxruntime": _ort().__version__,
            "input_shape": format_shape(shape),
            **extra,
        }
        return LatencyResult(
            median_ms=med,
            p90_ms=p90,
            runs=len(samples),
            device=self.device,
            details=details,
            profiler=self.spec,
            input_shape=shape,
            precision=precision,
        )

    def _timed(self, sess, feed) -> float:
        if self.clock == "wall":
            clock = time.perf_counter_ns
        else:  # one intra-op thread runs on the caller's thread: count only it (not a progress bar's)
            clock = time.thread_time_ns if self.threads == 1 else time.process_time_ns
        t0 = clock()
        sess.run(None, feed)
        return (clock() - t0) / 1e6

    # -- per-operator breakdown -----------------------------------------------------------------
    def profile_ops(self, onnx_path: str | os.PathLike[str], input_shape: Sequence[int], top: int = 15):
        """Per-operator times from ONNX Runtime's profiler: ms per run by op type, by module scope, and top nodes."""
        shape = parse_shape(input_shape)
        with tempfile.TemporaryDirectory(prefix="ens-ortprof-") as tmp:
            optimized = str(Path(tmp) / "optimized.onnx")
            sess = self._session(onnx_path, profile_prefix=str(Path(tmp) / "ort"), optimized_path=optimized)
            feed = self._feed(sess, shape)
            sess.run(None, feed)
            for _ in range(self.breakdown_runs):
                sess.run(None, feed)
            trace = sess.end_profiling()
            with open(trace, encoding="utf-8") as f:
                events = json.load(f)
            owners = optimized_node_owners(optimized)
        return parse_ort_profile(events, runs=self.breakdown_runs + 1, top=top, owners=owners)


def scope_of(node_name: str, depth: int = 3) -> str:
    """The first ``depth`` levels of the module path in a node name of torch's exporter (``dynamo=False``).

    ``/enc1/enc1.0/T/attn/qkv/Conv`` -> ``/enc1/enc1.0/T``; a top-level op (``/Concat``) -> ``/``; a name
    without a path (``Identity_3``, a node ORT made) -> ``""``. The last part of a name is the op, except
    after ORT's fusions, which append their own (``/a/b/Mul/QuickGeluFusion/``): ``depth`` levels are kept
    either way for the paths of a U-Net slot (stage/slot/kind).
    """
    if not node_name.startswith("/"):
        return ""
    parts = node_name.strip("/").split("/")[:-1]
    return "/" + "/".join(parts[:depth])


def optimized_node_owners(path: str | os.PathLike[str], hops: int = 8) -> dict[str, str]:
    """For each node of ORT's optimized graph at ``path`` whose name has no module path (a layout reorder, a
    fused activation, a transpose the optimizer moved): the nearest node with one, whose time it counts under.

    A ``ReorderInput`` works for the node it feeds (an NCHWc convolution), so its consumers come first; every
    other node looks at its producers first. ``{}`` when the file is missing or unreadable.
    """
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # no optimized graph: unnamed nodes stay unassigned
        return {}
    producer = {o: n for n in graph.node for o in n.output if o}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)

    def ups(n) -> list[Any]:
        return [producer[i] for i in n.input if i in producer]

    def downs(n) -> list[Any]:
        return [c for o in n.output for c in consumers.get(o, ())]

    owners: dict[str, str] = {}
    for node in graph.node:
        if node.name.startswith("/"):
            continue
        for step in ((downs, ups) if node.op_type == "ReorderInput" else (ups, downs)):
            frontier, seen, found = [node], {node.name}, None
            for _ in range(hops):
                frontier = [m for n in frontier for m in step(n) if m.name not in seen]
                seen.update(m.name for m in frontier)
                found = next((m.name for m in frontier if m.name.startswith("/")), None)
                if found or not frontier:
                    break
            if found:
                owners[node.name] = found
                break
    return owners


def parse_ort_profile(
    events: list[dict[str, Any]], runs: int, top: int = 15, owners: dict[str, str] | None = None
) -> dict[str, Any]:
    """Aggregate ONNX Runtime profiler events (Chrome trace JSON) into ms per run.

    Node events have ``cat == "Node"``, a name ending in ``_kernel_time``, ``dur`` in
    microseconds and ``args.op_name``. ``by_scope`` sums them by :func:`scope_of` the node's name, or the
    name of its owner in ``owners`` (:func:`optimized_node_owners`) for a node ORT made.
    """
    owners = owners or {}
    by_op: dict[str, float] = defaultdict(float)
    eight_bit_op: dict[str, float] = defaultdict(float)  # of by_op: nodes whose first input is 8-bit
    count_op: dict[str, int] = defaultdict(int)
    by_node: dict[str, tuple[str, float]] = {}
    by_scope: dict[str, float] = defaultdict(float)
    count_scope: dict[str, int] = defaultdict(int)
    total_runs = 0
    model_run_us = 0.0
    for ev in events:
        if ev.get("cat") == "Session" and ev.get("name") == "model_run":
            total_runs += 1
            model_run_us += float(ev.get("dur", 0))
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        op = str(ev.get("args", {}).get("op_name", "?"))
        dur = float(ev.get("dur", 0))
        by_op[op] += dur
        if _first_input_type(ev) in EIGHT_BIT:
            eight_bit_op[op] += dur
        count_op[op] += 1
        node = str(ev["name"])[: -len("_kernel_time")]
        prev = by_node.get(node, (op, 0.0))
        by_node[node] = (op, prev[1] + dur)
        scope = scope_of(owners.get(node, node))
        by_scope[scope] += dur
        count_scope[scope] += 1
    n = total_runs or max(1, runs)
    ops = sorted(by_op.items(), key=lambda kv: -kv[1])
    total_us = sum(by_op.values())
    return {
        "runs": n,
        "total_kernel_ms": total_us / n / 1e3,
        "model_run_ms": model_run_us / n / 1e3 if total_runs else None,
        "by_op_type": [
            {
                "op": op,
                "ms": us / n / 1e3,
                "share": us / total_us if total_us else 0.0,
                "nodes": count_op[op] // n if n else count_op[op],
                "eight_bit_ms": eight_bit_op[op] / n / 1e3,
            }
            for op, us in ops
        ],
        "top_nodes": [
            {"node": name, "op": op, "ms": us / n / 1e3}
            for name, (op, us) in sorted(by_node.items(), key=lambda kv: -kv[1][1])[:top]
        ],
        "by_scope": [
            {"scope": scope, "ms": us / n / 1e3, "nodes": count_scope[scope] // n if n else count_scope[scope]}
            for scope, us in sorted(by_scope.items(), key=lambda kv: -kv[1])
        ],
    }


EIGHT_BIT = frozenset({"uint8", "int8"})


def _first_input_type(event: dict[str, Any]) -> str | None:
    """The element type of a node event's first input (``args.input_type_shape``: ``[{"uint8": [1, 8, 64,
    64]}, ...]``), or None when the event does not carry it."""
    shapes = event.get("args", {}).get("input_type_shape") or []
    return next(iter(shapes[0]), None) if shapes and isinstance(shapes[0], dict) else None


# ONNX Runtime's CPU kernels that compute on 8-bit integers (the fused forms of DQ -> op -> Q, and the Integer ops)
INTEGER_KERNELS = frozenset({
    "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearSigmoid",
    "QLinearLeakyRelu", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearReduceMean", "QLinearSoftmax",
    "QLinearWhere", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul", "MaxPool_int8"})
CONVERSIONS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def precision_shares(profile: dict[str, Any], top: int = 8) -> dict[str, Any]:
    """Where an INT8 graph's kernel time goes, from :func:`parse_ort_profile`'s ``by_op_type``: the percent in
    integer kernels, in Q/DQ conversions and in float ops, and the float ops that take the most (the float
    islands worth cutting). An op that only moves 8-bit data (DepthToSpace, Transpose, Split of a quantized
    tensor: ``eight_bit_ms``) counts with the integer kernels, not as float."""
    rows = profile.get("by_op_type", [])
    total = sum(r["ms"] for r in rows) or 1.0
    integer = sum(r["ms"] for r in rows if r["op"] in INTEGER_KERNELS)
    convert = sum(r["ms"] for r in rows if r["op"] in CONVERSIONS)
    others = [r for r in rows if r["op"] not in INTEGER_KERNELS | CONVERSIONS]
    moved = sum(r.get("eight_bit_ms", 0.0) for r in others)
    floats = sorted(({**r, "ms": r["ms"] - r.get("eight_bit_ms", 0.0)} for r in others), key=lambda r: -r["ms"])
    return {
        "integer_pct": round(100 * (integer + moved) / total, 1),
        "eight_bit_movement_pct": round(100 * moved / total, 1),
        "qdq_pct": round(100 * convert / total, 1),
        "float_pct": round(100 * (total - integer - moved - convert) / total, 1),
        "kernel_ms": round(total, 3),
        "top_float_ops": [{"op": r["op"], "ms": round(r["ms"], 3), "pct": round(100 * r["ms"] / total, 1),
                           "nodes": r.get("nodes")} for r in floats[:top] if r["ms"] > 0],
        "integer_ops": sorted({r["op"] for r in rows if r["op"] in INTEGER_KERNELS}),
    }

