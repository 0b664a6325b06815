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

import os
import shlex
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
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
EXPORT_TARGETS = ("trt_int8", "onnx_int8", "qnn_int8", "onnx_fp32")
DEFAULT_QNN_DEVICE = "Snapdragon 8 Elite QRD"
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


def export_int8(qmodel: nn.Module, shape: Sequence[int], path: Path) -> None:
    """Export a ModelOpt fake-quant model to a Q/DQ ONNX (legacy TorchScript exporter, opset 17)."""
    export_onnx(qmodel, tuple(shape), path)
    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    if not {"QuantizeLinear", "DequantizeLinear"} <= ops:
        raise ExportError(f"{path.name} has no QuantizeLinear/DequantizeLinear nodes: the model was not quantized")


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
    """ONNX Runtime CPU latency of several files, interleaved in rounds (shuffled order each round, one
    untimed run per visit), so that the machine's load drifts hit every file alike.

    ``clock="wall"``: wall time with spin-waiting on (as ``ort-cpu``); ``"cpu"``: CPU time of the process
    (of the calling thread with one thread), spinning off, which is stable on a shared machine.

    Returns ``{name: {median_ms, p90_ms, runs, min_ms, cv}, "device": ..., "speedup": fp32/int8}``.
    """
    import random
    import time as _time

    from profilers.ort_cpu import cpu_model

    if clock not in ("wall", "cpu"):
        raise ExportError(f"unknown latency clock {clock!r} (wall or cpu)")
    timer = _time.perf_counter_ns if clock == "wall" else (_time.thread_time_ns if threads == 1
                                                           else _time.process_time_ns)
    sessions = {k: session(p, threads, spin=clock == "wall") for k, p in files.items()}
    x = np.random.default_rng(seed).random(tuple(shape), dtype=np.float32)
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(warmup):
            s.run(None, feeds[k])
    samples: dict[str, list[float]] = {k: [] for k in files}
    order = list(files)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for k in order:
            s = sessions[k]
            s.run(None, feeds[k])
            for _ in range(runs):
                t0 = timer()
                s.run(None, feeds[k])
                samples[k].append((timer() - t0) / 1e6)
    out: dict[str, Any] = {"device": f"{cpu_model()}, onnxruntime CPU, {threads} threads, {clock} clock"}
    for k, v in samples.items():
        a = np.asarray(v)
        out[k] = {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "runs": len(v),
                  "min_ms": float(a.min()), "cv": float(a.std() / a.mean()) if a.mean() > 0 else 0.0,
                  "details": {"source": "measured", "clock": clock, "interleaved_rounds": rounds}}
    if "fp32" in out and "int8" in out:
        out["speedup"] = round(out["fp32"]["median_ms"] / out["int8"]["median_ms"], 3)
    return out


def evaluate_onnx(path: Path, val: Any, task: Any, threads: int = 2, fuse_qdq: bool = True) -> Quality:
    """PSNR/SSIM of the model in ``path``, run by ONNX Runtime, on the held-out pairs."""
    return evaluate(OnnxModel(path, threads, fuse_qdq), val, task)


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
            quantize_static(str(pre), str(out), _Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                            reduce_range=reduce_range)
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


def ort_conv_kernels(path: Path) -> dict[str, int]:
    """How ONNX Runtime CPU runs the convolutions of ``path``: ``{"int8": QLinearConv count, "float": Conv
    count}``, read from the graph ORT optimizes for this machine (``optimized_model_filepath``)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    with tempfile.TemporaryDirectory(prefix="ens-ortopt-") as tmp:
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    return {"int8": ops["QLinearConv"], "float": ops["Conv"] + ops["FusedConv"]}


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
    """Build an INT8 engine: TensorRT's Python API, else a local trtexec, else trtexec on ``trt:ssh://``.

    Never raises for a missing TensorRT: returns ``built=False`` with the command to run elsewhere.
    """
    from profilers import trt as trtmod
    from profilers.errors import ProfilerError

    portable = shlex.join(trtexec_build_command(onnx_path.name, engine_path.name))
    reasons: list[str] = []
    if trtmod._tensorrt_importable() and trtmod._cuda_available():
        try:
            info = _build_with_python_api(onnx_path, engine_path)
            return EngineResult(True, "tensorrt-python", portable, details=info)
        except (EnsError, ProfilerError) as exc:
            reasons.append(f"TensorRT Python API: {exc}")
    else:
        reasons.append("`import tensorrt` fails or no CUDA GPU")
    local = shutil.which("trtexec")
    if local:
        cmd = trtexec_build_command(str(onnx_path.resolve()), str(engine_path.resolve()), local)
        log(f"building the engine with {shlex.join(cmd)}")
        try:
            proc = (runner or trtmod.run_command)(cmd, 3600.0)
        except subprocess.TimeoutExpired:
            reasons.append("local trtexec timed out")
        else:
            if proc.returncode == 0 and engine_path.is_file():
                return EngineResult(True, "trtexec", portable, details={"command": shlex.join(cmd)})
            reasons.append(f"local trtexec failed: {trtmod._error_tail((proc.stdout or '') + (proc.stderr or ''))}")
    else:
        reasons.append("no trtexec on PATH")
    if trt_spec and trt_spec.startswith("trt:ssh://"):
        try:
            return _build_over_ssh(onnx_path, engine_path, trt_spec[len("trt:"):], portable, log, runner)
        except ProfilerError as exc:
            reasons.append(f"{trt_spec}: {exc}")
    else:
        reasons.append("no trt:ssh:// host (--trt-host or the study's profiler)")
    return EngineResult(False, "none", portable, message="; ".join(reasons))


def _build_with_python_api(onnx_path: Path, engine_path: Path) -> dict[str, Any]:
    """The builder of ``profilers.trt.build_and_time_engine``, serialising the engine to a file."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path.name}: {errs}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.INT8)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT could not build an engine for {onnx_path.name}")
    engine_path.write_bytes(bytes(serialized))
    return {"trt_version": trt.__version__, "engine_bytes": engine_path.stat().st_size}


def _build_over_ssh(onnx_path: Path, engine_path: Path, url: str, portable: str,
                    log: Callable[[str], None], runner: Any) -> EngineResult:
    """scp the ONNX to the host, run trtexec there with --saveEngine, scp the engine back."""
    import hashlib

    from profilers.errors import MeasurementError
    from profilers.trt import SshTarget, TrtProfiler, scp_command

    target = SshTarget.parse(url)
    prof = TrtProfiler(target, runner=runner)
    trtexec = prof._find_trtexec()
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]
    r_onnx = f"{target.remote_dir}/ens-final-{digest}.onnx"
    r_engine = f"{target.remote_dir}/ens-final-{digest}-int8.engine"
    proc = prof._remote(["mkdir", "-p", target.remote_dir], prof.check_timeout_s, "creating the remote directory")
    if proc.returncode != 0:
        raise MeasurementError(f"cannot create {target.remote_dir} on {target.destination}: {proc.stderr.strip()}")
    proc = prof._run(scp_command(target, onnx_path, r_onnx, prof.connect_timeout_s), prof.copy_timeout_s,
                     "copying the ONNX file")
    if proc.returncode != 0:
        raise MeasurementError(f"scp to {target.destination} failed: {proc.stderr.strip()[-300:]}")
    cmd = trtexec_build_command(r_onnx, r_engine, trtexec)
    log(f"building the engine on {target.destination}: {shlex.join(cmd)}")
    proc = prof._remote(cmd, prof.build_timeout_s, "trtexec")
    if proc.returncode != 0:
        from profilers.trt import _error_tail

        raise MeasurementError(f"trtexec failed on {target.destination}: "
                               f"{_error_tail((proc.stdout or '') + (proc.stderr or ''))}")
    back = scp_back_command(target, r_engine, engine_path, prof.connect_timeout_s)
    proc = prof._run(back, prof.copy_timeout_s, "copying the engine back")
    if proc.returncode != 0 or not engine_path.is_file():
        raise MeasurementError(f"scp of the engine from {target.destination} failed: {(proc.stderr or '').strip()}")
    prof._remote(["rm", "-f", r_onnx, r_engine], prof.check_timeout_s, "cleaning up")
    return EngineResult(True, "trtexec-ssh", portable, details={"host": target.destination, "command": shlex.join(cmd)})


def scp_back_command(target: Any, remote_path: str, local_path: Path, connect_timeout: int = 10) -> list[str]:
    """``scp -q -o BatchMode=yes -o ConnectTimeout=N [-P PORT] -- DEST:remote /abs/local``."""
    argv = ["scp", "-q", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(connect_timeout)}"]
    if target.port:
        argv += ["-P", str(target.port)]
    return argv + ["--", f"{target.destination}:{remote_path}", str(Path(local_path).resolve())]


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
