"""Exports of a finalized model and their checks: FP32 / Q/DQ INT8 ONNX, post-training quantization
(the baseline), ONNX Runtime evaluation, a TensorRT engine, and a QNN model through Qualcomm AI Hub.

Every ONNX file has one static input shape (export one per use): the held-out split is evaluated with
a ``1x3xPxP`` file (P: the zoo's patch size) looped over the patches, and the deployed file has the
study's latency shape.

Checks: the FP32 ONNX must match PyTorch to ``FP32_TOLERANCE`` (1e-4, max abs); the INT8 ONNX, run by
ONNX Runtime, must match the fake-quant PyTorch model within ``INT8_TOLERANCE``: an RMSE of at most
two 8-bit steps (2/255) and a max abs error of at most 32 steps. Real and simulated quantization
differ by rounding ties and by integer vs float accumulation, and one flipped rounding in an early
layer moves a few output pixels by a few steps, so the max is loose and the RMSE is the real test.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from ens.errors import EnsError
from ens.evaluate import Quality, evaluate
from profilers.onnx_export import export_onnx

FP32_TOLERANCE = 1e-4
INT8_TOLERANCE = {"rmse": 2.0 / 255.0, "max_abs": 32.0 / 255.0}
# ops that only move or reshape data: not counted as INT8 or floating-point compute
_LAYOUT_OPS = {"Constant", "Reshape", "Transpose", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice",
               "Split", "Expand", "Identity", "Cast", "QuantizeLinear", "DequantizeLinear", "ConstantOfShape",
               "Pad", "DepthToSpace", "SpaceToDepth", "Flatten", "Tile", "Range", "Where", "Equal", "Greater",
               "Less", "Not", "And", "Or", "Neg", "Trilu"}


class ExportError(EnsError):
    """An export or its check failed."""


class EngineNotBuilt(EnsError):
    """The ONNX and the build command were written, but no TensorRT engine could be built here."""

    exit_code = 3


# -- ONNX files ---------------------------------------------------------------------------------
def export_fp32(model: nn.Module, shape: Sequence[int], path: Path, check_input: torch.Tensor | None = None) -> float:
    """Export ``model`` (FP32) and return max |ORT - torch| on ``check_input``; raises above 1e-4."""
    export_onnx(model, tuple(shape), path)
    x = check_input if check_input is not None else torch.rand(*shape)
    err = ort_vs_torch(model, path, x)["max_abs"]
    if not err <= FP32_TOLERANCE:
        raise ExportError(f"the FP32 ONNX export differs from PyTorch by {err:.3g} (> {FP32_TOLERANCE:g})")
    return err


def export_int8(qmodel: nn.Module, shape: Sequence[int], path: Path, uint8_activations: bool = False) -> None:
    """Export a ModelOpt fake-quant model to a Q/DQ ONNX (legacy TorchScript exporter, opset 17);
    ``uint8_activations``: rewrite the activations S8 -> U8 for ONNX Runtime's fused kernels
    (:mod:`ens.finalize.qdq_uint8`; without it no ``DQ -> Conv -> Q`` whose Q feeds two ops fuses), and move
    the dequantize after each pixel shuffle, which then runs on 8-bit data (:mod:`ens.finalize.qdq_movement`),
    channels-last like ORT's integer convs (:mod:`ens.finalize.shuffle_layout`), and give each EFM gate map as many
    channels as the features it gates, so the gate product is an element-wise QLinearMul
    (:mod:`profilers.gate_expansion`; in FP32 the broadcast is the faster form, so only here)."""
    from ens.finalize.qdq_movement import dequantize_after_movers
    from ens.finalize.qdq_uint8 import activations_to_uint8
    from ens.finalize.shuffle_layout import shuffles_channels_last
    from profilers.gate_expansion import expand_gate_maps

    export_onnx(qmodel, tuple(shape), path)
    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    if not {"QuantizeLinear", "DequantizeLinear"} <= ops:
        raise ExportError(f"{path.name} has no QuantizeLinear/DequantizeLinear nodes: the model was not quantized")
    if uint8_activations:
        activations_to_uint8(path)
        dequantize_after_movers(path)
        shuffles_channels_last(path)
        expand_gate_maps(path)


def check_int8(qmodel: nn.Module, path: Path, x: torch.Tensor, fuse_qdq: bool = True) -> dict[str, float]:
    """ORT INT8 output vs the fake-quant torch model on ``x``; raises outside ``INT8_TOLERANCE``."""
    err = ort_vs_torch(qmodel, path, x, fuse_qdq=fuse_qdq)
    if not (err["rmse"] <= INT8_TOLERANCE["rmse"] and err["max_abs"] <= INT8_TOLERANCE["max_abs"]):
        raise ExportError(
            f"the INT8 ONNX run by ONNX Runtime differs from the fake-quant model by rmse {err['rmse']:.4g}, "
            f"max {err['max_abs']:.4g} (allowed {INT8_TOLERANCE['rmse']:.4g} / {INT8_TOLERANCE['max_abs']:.4g})"
        )
    return err


def session(path: Path, threads: int = 2, spin: bool = False, fuse_qdq: bool = True):
    """An ONNX Runtime CPU session; no spin-waiting unless asked (it costs dearly on a shared machine).

    ``fuse_qdq=False`` stops at ORT's basic graph optimizations, below the level that fuses
    ``DQ -> op -> Q`` into integer kernels: every Q/DQ then runs as written, with float arithmetic in
    between, which is the arithmetic of an INT8 engine with 32-bit accumulation (TensorRT, QNN). The
    fused x86 kernels add pairs of products in 16 bits on CPUs without VNNI and can saturate
    (``profilers.ort_cpu.int8_pairs_saturate``), so they measure ONNX Runtime, not the Q/DQ model.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not fuse_qdq:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_vs_torch(model: nn.Module, path: Path, x: torch.Tensor, threads: int = 2,
                 fuse_qdq: bool = True) -> dict[str, float]:
    """Errors of ORT(path) against ``model`` on ``x`` (looped over the batch if the file takes batch 1)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        ref = model(x)
    model.train(was)
    got = OnnxModel(path, threads, fuse_qdq)(x)
    d = (got - ref).double()
    return {"max_abs": float(d.abs().max()), "mean_abs": float(d.abs().mean()), "rmse": float(d.pow(2).mean().sqrt())}


class OnnxModel(nn.Module):
    """An ONNX file as a module: ``forward(x)`` runs ONNX Runtime, one item at a time if it takes batch 1."""

    def __init__(self, path: Path, threads: int = 2, fuse_qdq: bool = True) -> None:
        super().__init__()
        self.path = Path(path)
        self.sess = session(self.path, threads, fuse_qdq=fuse_qdq)
        inp = self.sess.get_inputs()[0]
        self.name = inp.name
        self.batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().numpy().astype(np.float32)
        if self.batch is None or self.batch == arr.shape[0]:
            return torch.from_numpy(self.sess.run(None, {self.name: arr})[0])
        if self.batch != 1:
            raise ExportError(f"{self.path.name} takes batches of {self.batch}, got {arr.shape[0]}")
        outs = [self.sess.run(None, {self.name: arr[i : i + 1]})[0] for i in range(arr.shape[0])]
        return torch.from_numpy(np.concatenate(outs, 0))


def ort_cpu_latency(files: dict[str, Path], shape: Sequence[int], threads: int = 2, rounds: int = 5,
                    runs: int = 10, warmup: int = 2, seed: int = 0, clock: str = "wall") -> dict[str, Any]:
    """ONNX Runtime CPU latency of several files, interleaved in rounds by ``OrtCpuProfiler.measure_many``
    (shuffled order each round), so that the machine's load drifts hit every file alike; ``runs`` timed
    runs per file and round. ``clock``: ``wall`` (spin-waiting on) or ``cpu`` (CPU time, steady when shared).

    Returns ``{name: LatencyResult.to_dict(), "device": ..., "speedup": fp32/int8}``.
    """
    from profilers.errors import ProfilerError
    from profilers.ort_cpu import OrtCpuProfiler

    try:
        prof = OrtCpuProfiler(threads=threads, warmup=warmup, runs=runs * rounds, rounds=rounds, seed=seed, clock=clock)
    except ProfilerError as exc:
        raise ExportError(str(exc)) from None
    results = prof.measure_many(list(files.values()), shape, "auto")
    out: dict[str, Any] = {"device": f"{prof.device}, onnxruntime CPU, {clock} clock"}
    out.update({k: r.to_dict() for k, r in zip(files, results, strict=True)})
    if "fp32" in out and "int8" in out:
        out["speedup"] = round(out["fp32"]["median_ms"] / out["int8"]["median_ms"], 3)
    return out


def int8_time_shares(path: Path, shape: Sequence[int], threads: int = 2, runs: int = 5) -> dict[str, Any]:
    """The share of ``path``'s ONNX Runtime CPU kernel time in integer kernels, Q/DQ conversions and float ops
    (a separate pass with ORT's profiler; :func:`profilers.ort_cpu.precision_shares`)."""
    from profilers.errors import ProfilerError
    from profilers.ort_cpu import OrtCpuProfiler, precision_shares

    try:
        prof = OrtCpuProfiler(threads=threads, warmup=1, runs=1, breakdown_runs=runs)
        return precision_shares(prof.profile_ops(path, shape, top=40))
    except ProfilerError as exc:
        raise ExportError(str(exc)) from None


def evaluate_onnx(path: Path, val: Any, task: Any, threads: int = 2, fuse_qdq: bool = True) -> Quality:
    """PSNR/SSIM of the model in ``path``, run by ONNX Runtime, on the held-out pairs."""
    return evaluate(OnnxModel(path, threads, fuse_qdq), val, task)


@contextlib.contextmanager
def _root_log_quiet() -> Iterator[None]:
    """Silence the root logger's warnings: ``quantize_static(per_channel=True)`` logs one "Axis 1 is
    out-of-range for weight ... with rank 1" per LayerNormalization (it then quantizes that 1-D scale per
    tensor, which is what it should do) through the root logger, 32 lines for a tiny network."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def ptq_int8(src: Path, dst: Path, calibration: Sequence[np.ndarray], per_channel: bool = True,
             reduce_range: bool = False) -> Path:
    """Plain post-training quantization, ONNX Runtime ``quantize_static`` (QDQ, MinMax) on real data.

    The settings of ``profilers.quantize.quantize_int8`` (U8 activations, S8 weights,
    ``quant_pre_process(skip_symbolic_shape=True)``), but calibrated on training patches, not random
    inputs, because here the quality matters and not only the graph. ``reduce_range``: 7-bit weights,
    for CPUs whose u8 x s8 kernels saturate (``profilers.ort_cpu.int8_pairs_saturate``).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    feeds = [{name: np.ascontiguousarray(a, dtype=np.float32)} for a in calibration]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ens-ptq-", dir=dst.parent) as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "ptq.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            with _root_log_quiet():
                quantize_static(str(pre), str(out), _Reader(), quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                per_channel=per_channel, reduce_range=reduce_range)
        except Exception as exc:  # onnxruntime raises many types here
            raise ExportError(f"post-training quantization of {src.name} failed: {exc}") from None
        os.replace(out, dst)
    return dst


def precision_breakdown(path: Path) -> dict[str, dict[str, int]]:
    """Compute ops of a Q/DQ graph by precision: ``int8`` (fed by DequantizeLinear) or ``float``."""
    model = onnx.load(str(path), load_external_data=False)
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    int8: Counter[str] = Counter()
    flt: Counter[str] = Counter()
    for n in model.graph.node:
        if n.op_type in _LAYOUT_OPS:
            continue
        if any(producer.get(i) == "DequantizeLinear" for i in n.input if i):
            int8[n.op_type] += 1
        else:
            flt[n.op_type] += 1
    return {"int8": dict(int8.most_common()), "float": dict(flt.most_common())}


def ort_kernels(path: Path) -> Counter[str]:
    """Op types of the graph ONNX Runtime CPU runs for ``path`` after its fusions on this machine
    (``optimized_model_filepath``): ``QLinearConv``, ``QLinearAdd``... where Q/DQ groups fused."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    with tempfile.TemporaryDirectory(prefix="ens-ortopt-") as tmp:
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)


def integer_kernels(ops: Counter[str]) -> dict[str, int]:
    """The integer kernels among :func:`ort_kernels`'s ops and how many of each (``QLinearConv``,
    ``QLinearAdd``, ``QLinearMul``...)."""
    return {k: v for k, v in sorted(ops.items()) if k.startswith("QLinear") or k in ("QGemm", "MatMulInteger")}


def conv_kernels(ops: Counter[str]) -> dict[str, int]:
    """How ORT runs the convolutions among :func:`ort_kernels`'s ops: ``{"int8": QLinearConv, "float": Conv}``."""
    return {"int8": ops["QLinearConv"], "float": ops["Conv"] + ops["FusedConv"]}


def ort_conv_kernels(path: Path) -> dict[str, int]:
    """How ONNX Runtime CPU runs the convolutions of ``path`` (:func:`conv_kernels` of :func:`ort_kernels`)."""
    return conv_kernels(ort_kernels(path))


def file_info(path: Path) -> dict[str, Any]:
    from ens.zoo.store import file_sha256

    return {"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


# -- TensorRT -----------------------------------------------------------------------------------
@dataclass
class EngineResult:
    built: bool
    method: str  # tensorrt-python | trtexec | trtexec-ssh | none
    command: str  # the trtexec command that builds it (run where TensorRT is)
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def trtexec_build_command(onnx_name: str, engine_name: str, trtexec: str = "trtexec") -> list[str]:
    """``trtexec --onnx=M --int8 --fp16 --saveEngine=E``: explicit (Q/DQ) INT8, the rest in FP16."""
    from profilers.trt import trtexec_command

    return trtexec_command(trtexec, onnx_name, engine_name, "int8")


def build_trt_engine(onnx_path: Path, engine_path: Path, trt_spec: str | None = None,
                     log: Callable[[str], None] = lambda s: None, runner: Any = None) -> EngineResult:
    """Build an INT8 engine here (TensorRT's Python API, else a local trtexec), else on the study's TensorRT
    device (``trt_spec``, such as ``trt:ssh://user@jetson``): ``TrtProfiler.build_engine`` does each.

    Never raises for a missing TensorRT: returns ``built=False`` with the command to run elsewhere.
    """
    from profilers.errors import ProfilerError
    from profilers.trt import TrtProfiler

    portable = shlex.join(trtexec_build_command(onnx_path.name, engine_path.name))
    reasons: list[str] = []
    builders = [TrtProfiler(runner=runner)]
    remote = _remote_engine_builder(trt_spec, runner)
    for b in [*builders, *([remote] if remote is not None else [])]:
        try:
            info = b.build_engine(onnx_path, engine_path, "int8", log)
            return EngineResult(True, info.pop("method"), portable, details=info)
        except ProfilerError as exc:
            reasons.append(f"{b.spec}: {exc}")
    if remote is None:
        reasons.append("no trt:ssh:// host (--trt-host or the study's profiler)")
    return EngineResult(False, "none", portable, message="; ".join(reasons))


def _remote_engine_builder(trt_spec: str | None, runner: Any) -> Any:
    """The profiler of ``trt_spec`` (a table's own) if it builds engines on a remote device, else None."""
    from profilers.errors import ProfilerError
    from profilers.registry import get_profiler

    if not trt_spec:
        return None
    try:
        prof = get_profiler(trt_spec, runner=runner) if runner is not None else get_profiler(trt_spec)
    except ProfilerError:
        return None
    prof = prof.measurer
    return prof if getattr(prof, "target", None) is not None and hasattr(prof, "build_engine") else None


# -- Qualcomm AI Hub ----------------------------------------------------------------------------
def check_qnn(device: str, client: Any = None) -> Any:
    """Fail fast, before any training: the API token (and qai-hub) must be there."""
    from profilers.qaihub import QaiHubProfiler, require_token

    prof = QaiHubProfiler(device, runtime="qnn_context_binary", client=client)
    require_token(prof.config)
    prof.client()
    return prof


def compile_qnn(onnx_path: Path, out_path: Path, shape: Sequence[int], device: str,
                client: Any = None) -> dict[str, Any]:
    """Compile the Q/DQ ONNX to a QNN context binary with an AI Hub compile job; download it to ``out_path``."""
    from profilers.errors import MeasurementError

    prof = check_qnn(device, client)
    c = prof.client()
    name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name
    dev = c.Device(device)
    job = prof._service(lambda: c.submit_compile_job(
        model=str(onnx_path), device=dev, name=f"ens finalize {onnx_path.stem}",
        input_specs={name: (tuple(int(d) for d in shape), "float32")},
        options="--target_runtime qnn_context_binary"), "submitting the compile job", timeout=prof.job_timeout_s)
    prof._wait(job, "compile")
    target = prof._service(job.get_target_model, "fetching the compiled model", timeout=prof.job_timeout_s)
    if target is None:
        raise MeasurementError(f"AI Hub compile job {getattr(job, 'job_id', None)} produced no model")
    prof._service(lambda: target.download(str(out_path)), "downloading the compiled model", timeout=prof.job_timeout_s)
    return {"device": device, "compile_job": getattr(job, "job_id", None), "url": getattr(job, "url", None),
            "runtime": "qnn_context_binary"}
