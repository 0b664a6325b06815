"""``trt``: TensorRT latency, for Jetson Orin (or any NVIDIA GPU).

Specs::

    trt                                   this machine: the TensorRT Python API when ``import
                                          tensorrt`` works and a CUDA GPU is present, else a
                                          ``trtexec`` found on PATH
    trt:ssh://user@host[:port][/remote/dir][?trtexec=/usr/src/tensorrt/bin/trtexec]
                                          a Jetson over SSH: the ONNX is copied with scp, then
                                          ``trtexec --onnx=... --fp16|--int8 --saveEngine=...``
                                          runs there and its summary is parsed

Spec options (see :mod:`profilers.registry`): ``warmup`` (milliseconds of warm-up, trtexec's
``--warmUp`` unit; default 200) and ``runs`` (timed inferences, default 200) become ``--warmUp=MS
--iterations=N --avgRuns=N --duration=0`` (trtexec stops when both the iteration count and the
duration in seconds are reached, so ``--duration=0`` leaves the count in charge);
``use_cuda_graph=1`` and ``no_data_transfers=1`` add ``--useCudaGraph`` and ``--noDataTransfers``.
The Python API path warms up for the same time and times ``runs`` inferences; it moves no data and
builds no CUDA graph. Locally, the device (part of every cache key) is the GPU's name and the
TensorRT version, e.g. ``NVIDIA H200|trt-10.3.0``; what cannot be read is ``local-gpu`` /
``trt-unknown``.

Reported time: trtexec's **GPU Compute Time** (median and 90th percentile over its timed
queries), i.e. kernels only, as NVIDIA's benchmarking guide recommends for comparing engines;
``Latency`` (with H2D/D2H copies) and throughput go to ``details``. Precision ``fp16`` (the
default) builds with ``--fp16``; ``int8`` is meant for explicitly quantized (Q/DQ) graphs and
builds with ``--int8 --fp16`` so that layers left unquantized run in FP16, not FP32; ``fp32``
adds no flag.

Remote commands are argument lists run with ``subprocess.run(argv, timeout=...)``; nothing
goes through a local shell. ``ssh`` itself joins every word after the destination with spaces
and hands that line to the *remote* user's shell, so the remote command is passed as one word
built with :func:`shlex.join`: each argument is quoted for a POSIX shell and reaches trtexec
unchanged. ``--`` ends ssh/scp option parsing before the destination; the user and host, the
remote directory and the trtexec path are checked against conservative character sets when the
spec is parsed (legacy scp lets the remote shell expand the remote path), and remote file names
are generated here (a content hash). ``BatchMode=yes`` makes ssh fail instead of asking for a
password, ``ConnectTimeout`` bounds the connection, and every call has a timeout: an
unreachable host is a :class:`~profilers.errors.DeviceUnreachable` (ssh/scp exit status 255)
within seconds, a stuck one a :class:`~profilers.errors.ProfilerTimeout`.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from profilers import onnx_info
from profilers.base import Profiler, format_shape, parse_shape
from profilers.errors import (
    DeviceUnreachable,
    MeasurementError,
    ProfilerError,
    ProfilerTimeout,
    ProfilerUnavailable,
    UnknownProfiler,
)
from profilers.result import MEASURED, REPORTED, LatencyResult, summarize_ms

JETPACK_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
SSH_UNREACHABLE = 255  # ssh's exit status for its own errors (connection, authentication)

_USER = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]*$")
_HOST = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\])$")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9._/~+-]+$")

Runner = Callable[[Sequence[str], float], "subprocess.CompletedProcess[str]"]


def run_command(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """The default runner: an argument list, no shell, no stdin, output captured, a timeout."""
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


# -- SSH target ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str | None = None
    port: int | None = None
    remote_dir: str = "/tmp/ens-trt"
    trtexec: str | None = None  # None: look for trtexec on PATH, then at JetPack's location

    @classmethod
    def parse(cls, url: str) -> SshTarget:
        """``ssh://user@host[:port][/remote/dir][?trtexec=PATH]`` (also ``user@host`` alone)."""
        text = url.strip().strip("'\"")
        if not text.startswith("ssh://"):
            text = "ssh://" + text
        parts = urlsplit(text)
        try:
            port = parts.port
        except ValueError:
            raise UnknownProfiler(f"bad SSH port in {url!r}") from None
        host = parts.hostname or ""
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        user = parts.username
        if not host or not _HOST.match(host):
            raise UnknownProfiler(f"bad SSH host in {url!r}: expected ssh://user@host[:port][/dir]")
        if user is not None and not _USER.match(user):
            raise UnknownProfiler(f"bad SSH user in {url!r}")
        if parts.password:
            raise UnknownProfiler("do not put a password in the profiler spec; use SSH keys (BatchMode)")
        remote_dir = parts.path.rstrip("/") or "/tmp/ens-trt"
        if not _SAFE_PATH.match(remote_dir) or ".." in remote_dir.split("/"):
            raise UnknownProfiler(f"bad remote directory {remote_dir!r} (letters, digits, ._/~+- only)")
        query = parse_qs(parts.query)
        unknown = set(query) - {"trtexec"}
        if unknown:
            raise UnknownProfiler(f"unknown option(s) {sorted(unknown)} in {url!r} (known: trtexec)")
        trtexec = query.get("trtexec", [None])[-1]
        if trtexec is not None and (not _SAFE_PATH.match(trtexec) or trtexec.startswith("-")):
            raise UnknownProfiler(f"bad trtexec path {trtexec!r}")
        return cls(host=host, user=user, port=port, remote_dir=remote_dir, trtexec=trtexec)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def url(self) -> str:
        port = f":{self.port}" if self.port else ""
        d = "" if self.remote_dir == "/tmp/ens-trt" else self.remote_dir
        q = f"?trtexec={self.trtexec}" if self.trtexec else ""
        return f"ssh://{self.destination}{port}{d}{q}"


def ssh_command(
    target: SshTarget,
    remote_argv: Sequence[str],
    connect_timeout: int = 10,
    options: Sequence[str] = (),
) -> list[str]:
    """``ssh -o BatchMode=yes -o ConnectTimeout=N [-p PORT] -- DEST 'quoted remote command'``."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(connect_timeout)}"]
    for opt in options:
        argv += ["-o", opt]
    if target.port:
        argv += ["-p", str(target.port)]
    argv += ["--", target.destination, shlex.join([str(a) for a in remote_argv])]
    return argv


def scp_command(
    target: SshTarget,
    local_path: str | os.PathLike[str],
    remote_path: str,
    connect_timeout: int = 10,
    options: Sequence[str] = (),
) -> list[str]:
    """``scp -q -o BatchMode=yes -o ConnectTimeout=N [-P PORT] -- /abs/local DEST:remote``."""
    # absolute: a relative local name with a ':' would read as a remote one
    return _scp(target, remote_path, connect_timeout, options) + [
        "--", str(Path(local_path).resolve()), f"{target.destination}:{remote_path}"]


def _scp(target: SshTarget, remote_path: str, connect_timeout: int, options: Sequence[str]) -> list[str]:
    """``scp -q -o BatchMode=yes -o ConnectTimeout=N [-o OPT...] [-P PORT]``, once the remote path is checked."""
    if not _SAFE_PATH.match(remote_path):
        raise ValueError(f"unsafe remote path {remote_path!r}")
    argv = ["scp", "-q", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(connect_timeout)}"]
    for opt in options:
        argv += ["-o", opt]
    return argv + (["-P", str(target.port)] if target.port else [])


def scp_from_command(
    target: SshTarget,
    remote_path: str,
    local_path: str | os.PathLike[str],
    connect_timeout: int = 10,
    options: Sequence[str] = (),
) -> list[str]:
    """``scp -q -o BatchMode=yes -o ConnectTimeout=N [-P PORT] -- DEST:remote /abs/local`` (copy back)."""
    return _scp(target, remote_path, connect_timeout, options) + [
        "--", f"{target.destination}:{remote_path}", str(Path(local_path).resolve())]


def trtexec_command(
    trtexec: str,
    onnx_path: str,
    engine_path: str,
    precision: str = "fp16",
    extra: Sequence[str] = (),
) -> list[str]:
    """``trtexec --onnx=M --fp16|--int8 --fp16|(fp32: nothing) --saveEngine=E [extra...]``."""
    flags = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", "--fp16"]}
    if precision not in flags:
        raise ValueError(f"trtexec: unknown precision {precision!r}")
    return [trtexec, f"--onnx={onnx_path}", *flags[precision], f"--saveEngine={engine_path}", *extra]


def trtexec_timing_args(
    warmup_ms: int, runs: int, use_cuda_graph: bool = False, no_data_transfers: bool = False
) -> list[str]:
    """``--warmUp=MS --iterations=N --avgRuns=N --duration=0 [--useCudaGraph] [--noDataTransfers]``."""
    argv = [f"--warmUp={int(warmup_ms)}", f"--iterations={int(runs)}", f"--avgRuns={int(runs)}", "--duration=0"]
    if use_cuda_graph:
        argv.append("--useCudaGraph")
    if no_data_transfers:
        argv.append("--noDataTransfers")
    return argv


# -- trtexec output -----------------------------------------------------------------------------
_PREFIX = r"^(?:\[[^\]\n]*\]\s*)*"  # "[07/25/2022-19:02:56] [I] "
_STAT = re.compile(r"(min|max|mean|median|percentile\(\s*([0-9.]+)\s*%\s*\))\s*=\s*([-+0-9.eE]+)\s*ms")
_TRT_VERSION = re.compile(r"TensorRT\.trtexec\s*\[TensorRT v(\d+)\]")
_TRT_VERSION_TXT = re.compile(r"TensorRT version:\s*([0-9.]+)")


def _stats_line(text: str, label: str) -> dict[str, float] | None:
    m = re.search(_PREFIX + re.escape(label) + r":\s*(.*)$", text, flags=re.MULTILINE)
    if not m:
        return None
    out: dict[str, float] = {}
    for key, pct, value in _STAT.findall(m.group(1)):
        name = f"p{pct.rstrip('0').rstrip('.') if '.' in pct else pct}" if pct else key
        out[name] = float(value)
    return out


def _scalar(text: str, label: str, unit: str) -> float | None:
    m = re.search(_PREFIX + re.escape(label) + r":\s*([-+0-9.eE]+)\s*" + unit, text, flags=re.MULTILINE)
    return float(m.group(1)) if m else None


def parse_trtexec_output(text: str) -> dict[str, Any]:
    """Parse trtexec's ``=== Performance summary ===`` (TensorRT 8.x and 10.x formats).

    Returns ``{"gpu_compute_ms": {...}, "latency_ms": {...}, "throughput_qps", "queries",
    "walltime_s", "trt_version", "gpu", "passed"}``; statistics dictionaries hold ``min``,
    ``max``, ``mean``, ``median`` and ``p<N>`` for each ``percentile(N%)`` printed. Raises
    :class:`MeasurementError` when there is no usable GPU Compute Time median.
    """
    passed = "&&&& PASSED" in text
    failed = "&&&& FAILED" in text
    gpu = _stats_line(text, "GPU Compute Time")
    if not gpu or "median" not in gpu:
        tail = _error_tail(text)
        why = "trtexec reported FAILED" if failed else "no 'GPU Compute Time ... median' line in trtexec output"
        raise MeasurementError(f"{why}{': ' + tail if tail else ''}")
    out: dict[str, Any] = {
        "gpu_compute_ms": gpu,
        "latency_ms": _stats_line(text, "Latency") or {},
        "enqueue_ms": _stats_line(text, "Enqueue Time") or {},
        "h2d_ms": _stats_line(text, "H2D Latency") or {},
        "d2h_ms": _stats_line(text, "D2H Latency") or {},
        "throughput_qps": _scalar(text, "Throughput", "qps"),
        "walltime_s": _scalar(text, "Total Host Walltime", "s"),
        "total_gpu_compute_s": _scalar(text, "Total GPU Compute Time", "s"),
        "passed": passed,
    }
    m = re.search(r"Timing trace has (\d+) queries", text)
    out["queries"] = int(m.group(1)) if m else None
    out["trt_version"] = parse_trtexec_output_version(text)
    m = re.search(_PREFIX + r"Selected Device:\s*(.+?)\s*$", text, flags=re.MULTILINE)
    out["gpu"] = m.group(1) if m else None
    return out


def parse_trtexec_output_version(text: str) -> str | None:
    """The TensorRT version trtexec's banner (or its ``TensorRT version:`` line) names, e.g. ``"10.3.0"``."""
    m = _TRT_VERSION.search(text)
    if m:
        v = int(m.group(1))  # 8401 -> 8.4.1, 100300 -> 10.3.0
        return f"{v // 1000}.{v // 100 % 10}.{v % 100}" if v < 10000 else f"{v // 10000}.{v // 100 % 100}.{v % 100}"
    m = _TRT_VERSION_TXT.search(text)
    return m.group(1) if m else None


def _error_tail(text: str, lines: int = 3) -> str:
    """The first few ``[E]`` messages (timestamps stripped, TensorRT's own [TRT] noise last)."""
    errs = []
    for ln in text.splitlines():
        if "[E]" not in ln:
            continue
        msg = re.sub(_PREFIX, "", ln.strip()).strip()
        if msg and "---" not in msg:
            errs.append(msg)
    errs = [e for e in errs if not e.startswith("[TRT]")] + [e for e in errs if e.startswith("[TRT]")]
    if not errs:
        errs = [ln.strip() for ln in text.strip().splitlines()[-lines:] if not ln.startswith("&&&&")]
    return " | ".join(errs[:lines])[:500]


def result_from_trtexec(
    text: str, device: str, spec: str, shape: tuple[int, ...], precision: str, extra: dict[str, Any]
) -> LatencyResult:
    parsed = parse_trtexec_output(text)
    gpu = parsed["gpu_compute_ms"]
    p90 = gpu.get("p90", math.nan)
    details = {
        "source": REPORTED,
        "tool": "trtexec",
        "metric": "GPU Compute Time",
        **{k: v for k, v in parsed.items() if k != "passed"},
        **extra,
    }
    if "p90" not in gpu:
        details["note"] = "this trtexec version prints no percentile(90%); p90_ms is NaN"
    return LatencyResult(
        median_ms=float(gpu["median"]),
        p90_ms=float(p90),
        runs=int(parsed["queries"] or 0),
        device=device,
        details=details,
        profiler=spec,
        input_shape=shape,
        precision=precision,
    )


# -- the profiler -------------------------------------------------------------------------------
class TrtProfiler(Profiler):
    name = "trt"
    float_precision = "fp16"  # TensorRT builds a float network as an FP16 engine
    precisions = ("fp32", "fp16", "int8")
    default_precision = "fp16"

    def __init__(
        self,
        target: SshTarget | str | None = None,
        runner: Runner | None = None,
        connect_timeout_s: float = 10,
        check_timeout_s: float = 30.0,
        copy_timeout_s: float = 300.0,
        build_timeout_s: float = 1800.0,
        trtexec_args: Sequence[str] = (),
        ssh_options: Sequence[str] = (),
        warmup: int = 200,
        runs: int = 200,
        keep_remote_files: bool = False,
        use_cuda_graph: bool = False,
        no_data_transfers: bool = False,
    ) -> None:
        if int(warmup) < 0 or int(runs) < 1:
            raise UnknownProfiler(f"trt: warmup must be >= 0 ms and runs >= 1 (got {warmup}, {runs})")
        self.target = SshTarget.parse(target) if isinstance(target, str) else target
        self.runner = runner or run_command
        self.connect_timeout_s = max(1, math.ceil(connect_timeout_s))  # ssh: whole seconds, 0 would mean none
        self.check_timeout_s = float(check_timeout_s)
        self.copy_timeout_s = float(copy_timeout_s)
        self.build_timeout_s = float(build_timeout_s)
        self.trtexec_args = tuple(trtexec_args)
        self.ssh_options = tuple(ssh_options)
        self.warmup = int(warmup)  # milliseconds
        self.runs = int(runs)
        self.keep_remote_files = keep_remote_files
        self.use_cuda_graph = bool(use_cuda_graph)
        self.no_data_transfers = bool(no_data_transfers)
        self._trtexec: str | None = None  # resolved by check() / first use
        self._local_mode: str | None = None  # "python" | "trtexec" once checked
        self._local_device: str | None = None  # read once: the key must not change between lookup and store

    @property
    def spec(self) -> str:
        base = f"trt:{self.target.url}" if self.target else "trt"
        flags = [f"{k}=1" for k in ("use_cuda_graph", "no_data_transfers") if getattr(self, k)]
        return (base + ("&" if "?" in base else "?") + "&".join(flags)) if flags else base

    @property
    def device(self) -> str:
        if self.target:
            port = f":{self.target.port}" if self.target.port else ""
            return f"ssh:{self.target.destination}{port}"
        if self._local_device is None:
            self._local_device = local_device_key(local_gpu_name(self.runner), local_trt_version(self.runner))
        return self._local_device

    # -- running commands -----------------------------------------------------------------------
    def _run(self, argv: list[str], timeout: float, what: str) -> subprocess.CompletedProcess[str]:
        try:
            proc = self.runner(argv, timeout)
        except subprocess.TimeoutExpired:
            raise ProfilerTimeout(f"{what} on {self.device} did not finish within {timeout:g} s") from None
        except FileNotFoundError:
            raise ProfilerUnavailable(f"{argv[0]!r} is not installed on this machine (needed for {what})") from None
        if self.target and argv[0] in ("ssh", "scp") and proc.returncode == SSH_UNREACHABLE:
            msg = (proc.stderr or "").strip().splitlines()
            raise DeviceUnreachable(
                f"cannot reach {self.target.destination} over SSH ({what}): {msg[-1] if msg else 'exit 255'}"
            )
        return proc

    def _remote(self, remote_argv: Sequence[str], timeout: float, what: str) -> subprocess.CompletedProcess[str]:
        assert self.target is not None
        argv = ssh_command(self.target, remote_argv, self.connect_timeout_s, self.ssh_options)
        return self._run(argv, timeout, what)

    def _find_trtexec(self) -> str:
        """The trtexec to run: the one given in the spec, else on PATH, else JetPack's; checked once."""
        if self._trtexec:
            return self._trtexec
        given = self.target.trtexec if self.target else None
        candidates = [given] if given else ["trtexec", JETPACK_TRTEXEC]
        for cand in candidates:
            if self.target:
                proc = self._remote(["command", "-v", cand], self.check_timeout_s, "looking for trtexec")
                found = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else None
            else:
                found = shutil.which(cand)
            if found:
                self._trtexec = found
                return found
        where = self.target.destination if self.target else "this machine"
        raise ProfilerUnavailable(
            f"trtexec not found on {where} (tried {', '.join(candidates)}); "
            "give its path: trt:ssh://user@host?trtexec=/usr/src/tensorrt/bin/trtexec"
        )

    def check(self) -> None:
        """Remote: SSH reaches the host and trtexec is there. Local: tensorrt + a GPU, or trtexec."""
        self._trtexec = None
        if self.target:
            self._find_trtexec()
            return
        if _tensorrt_importable() and _cuda_available():
            self._local_mode = "python"
            return
        try:
            self._find_trtexec()
        except ProfilerUnavailable:
            raise ProfilerUnavailable(
                "local TensorRT is not usable here: `import tensorrt` fails or there is no CUDA GPU, and no "
                "trtexec is on PATH; measure on a Jetson with --profiler trt:ssh://user@host"
            ) from None
        self._local_mode = "trtexec"

    # -- building an engine to ship ------------------------------------------------------------
    def build_engine(self, onnx_path: str | os.PathLike[str], engine_path: str | os.PathLike[str],
                     precision: str = "int8", log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
        """Build the engine of ``onnx_path`` where this profiler runs and save it at ``engine_path``: over SSH
        (copy there, ``trtexec --saveEngine``, copy back; the remote files are removed whatever happens), or
        here (the Python API with a GPU, else a local trtexec). Returns ``{"method", "command", ...}``;
        raises :class:`ProfilerError` saying why when it cannot."""
        path, engine = Path(onnx_path), Path(engine_path)
        if self.target:
            return self._build_remote(path, engine, precision, log)
        if _tensorrt_importable() and _cuda_available():
            data, version = serialize_engine(path, precision)
            engine.write_bytes(data)
            return {"method": "tensorrt-python", "trt_version": version, "engine_bytes": len(data)}
        try:
            trtexec = self._find_trtexec()
        except ProfilerUnavailable:
            raise ProfilerUnavailable("`import tensorrt` fails or no CUDA GPU, and no trtexec on PATH") from None
        cmd = trtexec_command(trtexec, str(path.resolve()), str(engine.resolve()), precision)
        log(f"building the engine with {shlex.join(cmd)}")
        proc = self._run(cmd, self.build_timeout_s, "trtexec")
        if proc.returncode != 0 or not engine.is_file():
            raise MeasurementError(f"local trtexec failed: {_error_tail((proc.stdout or '') + (proc.stderr or ''))}")
        return {"method": "trtexec", "command": shlex.join(cmd)}

    def _build_remote(self, path: Path, engine: Path, precision: str, log: Callable[[str], None]) -> dict[str, Any]:
        assert self.target is not None
        trtexec = self._find_trtexec()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        rdir = self.target.remote_dir
        r_onnx, r_engine = f"{rdir}/ens-final-{digest}.onnx", f"{rdir}/ens-final-{digest}-{precision}.engine"
        proc = self._remote(["mkdir", "-p", rdir], self.check_timeout_s, "creating the remote directory")
        if proc.returncode != 0:
            raise MeasurementError(f"cannot create {rdir} on {self.target.destination}: {proc.stderr.strip()}")
        try:
            proc = self._run(scp_command(self.target, path, r_onnx, self.connect_timeout_s, self.ssh_options),
                             self.copy_timeout_s, "copying the ONNX file")
            if proc.returncode != 0:
                raise MeasurementError(f"scp to {self.target.destination} failed: {proc.stderr.strip()[-300:]}")
            cmd = trtexec_command(trtexec, r_onnx, r_engine, precision)
            log(f"building the engine on {self.target.destination}: {shlex.join(cmd)}")
            proc = self._remote(cmd, self.build_timeout_s, "trtexec")
            if proc.returncode != 0:
                raise MeasurementError(f"trtexec failed on {self.target.destination}: "
                                       f"{_error_tail((proc.stdout or '') + (proc.stderr or ''))}")
            back = scp_from_command(self.target, r_engine, engine, self.connect_timeout_s, self.ssh_options)
            proc = self._run(back, self.copy_timeout_s, "copying the engine back")
            if proc.returncode != 0 or not engine.is_file():
                raise MeasurementError(f"scp of the engine from {self.target.destination} failed: "
                                       f"{(proc.stderr or '').strip()}")
        finally:
            self._clean_remote(r_onnx, r_engine)
        return {"method": "trtexec-ssh", "host": self.target.destination, "command": shlex.join(cmd)}

    def _clean_remote(self, *paths: str) -> None:
        """Remove this run's files on the device (unless kept); a failure to clean never hides the real error."""
        if not self.keep_remote_files:
            try:
                self._remote(["rm", "-f", *paths], self.check_timeout_s, "cleaning up")
            except ProfilerError:
                pass

    # -- measuring ------------------------------------------------------------------------------
    def measure(
        self,
        onnx_path: str | os.PathLike[str],
        input_shape: Sequence[int],
        precision: str | None = None,
    ) -> LatencyResult:
        shape = parse_shape(input_shape)
        precision = self._precision(precision)
        path = Path(onnx_path)
        if not path.is_file():
            raise MeasurementError(f"no ONNX file at {onnx_path}")
        try:
            onnx_info.check_input_shape(path, shape)
        except ValueError as exc:
            raise MeasurementError(str(exc)) from None
        if precision == "int8" and onnx_info.graph_precision(path) != "int8":
            raise MeasurementError(
                f"{path.name} has no Q/DQ nodes: TensorRT INT8 here needs an explicitly quantized graph"
            )
        if self.target:
            return self._measure_remote(path, shape, precision)
        if self._local_mode is None:
            self.check()
        if self._local_mode == "python":
            return self._measure_python(path, shape, precision)
        return self._measure_local_trtexec(path, shape, precision)

    def _measure_remote(self, path: Path, shape: tuple[int, ...], precision: str) -> LatencyResult:
        assert self.target is not None
        trtexec = self._find_trtexec()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        rdir = self.target.remote_dir
        r_onnx = f"{rdir}/ens-{digest}.onnx"
        r_engine = f"{rdir}/ens-{digest}-{precision}.engine"
        proc = self._remote(["mkdir", "-p", rdir], self.check_timeout_s, "creating the remote directory")
        if proc.returncode != 0:
            raise MeasurementError(f"cannot create {rdir} on {self.target.destination}: {proc.stderr.strip()}")
        argv = scp_command(self.target, path, r_onnx, self.connect_timeout_s, self.ssh_options)
        proc = self._run(argv, self.copy_timeout_s, "copying the ONNX file")
        if proc.returncode != 0:
            raise MeasurementError(f"scp to {self.target.destination} failed: {proc.stderr.strip()[-300:]}")
        cmd = trtexec_command(trtexec, r_onnx, r_engine, precision, self._timing_args())
        try:
            proc = self._remote(cmd, self.build_timeout_s, "trtexec")
        finally:
            self._clean_remote(r_onnx, r_engine)
        return self._parse(proc, shape, precision, {"command": shlex.join(cmd)})

    def _measure_local_trtexec(self, path: Path, shape: tuple[int, ...], precision: str) -> LatencyResult:
        trtexec = self._find_trtexec()
        with tempfile.TemporaryDirectory(prefix="ens-trt-") as tmp:
            engine = str(Path(tmp) / f"model-{precision}.engine")
            cmd = trtexec_command(trtexec, str(path.resolve()), engine, precision, self._timing_args())
            proc = self._run(cmd, self.build_timeout_s, "trtexec")
        return self._parse(proc, shape, precision, {"command": shlex.join(cmd)})

    def _timing_args(self) -> list[str]:
        """The timing flags of every measuring trtexec run, then the caller's ``trtexec_args``."""
        timing = trtexec_timing_args(self.warmup, self.runs, self.use_cuda_graph, self.no_data_transfers)
        return timing + list(self.trtexec_args)

    def _parse(
        self, proc: subprocess.CompletedProcess[str], shape: tuple[int, ...], precision: str, extra: dict
    ) -> LatencyResult:
        text = (proc.stdout or "") + "\n" + (proc.stderr or "")
        if proc.returncode != 0:
            raise MeasurementError(f"trtexec exited with status {proc.returncode}: {_error_tail(text)}")
        return result_from_trtexec(text, self.device, self.spec, shape, precision, extra)

    def _measure_python(self, path: Path, shape: tuple[int, ...], precision: str) -> LatencyResult:
        samples, info = build_and_time_engine(path, precision, warmup_ms=self.warmup, runs=self.runs)
        med, p90 = summarize_ms(samples)
        return LatencyResult(
            median_ms=med,
            p90_ms=p90,
            runs=len(samples),
            device=self.device,
            details={"source": MEASURED, "tool": "tensorrt-python", "metric": "CUDA events around execute_async_v3",
                     "input_shape": format_shape(shape), **info},
            profiler=self.spec,
            input_shape=shape,
            precision=precision,
        )


# -- the local device ---------------------------------------------------------------------------
def local_device_key(gpu: str | None, trt_version: str | None) -> str:
    """``"NVIDIA H200|trt-10.3.0"``; ``local-gpu`` / ``trt-unknown`` for what could not be read."""
    return f"{gpu or 'local-gpu'}|trt-{trt_version or 'unknown'}"


def local_gpu_name(runner: Runner = run_command) -> str | None:
    """The name of the GPU TensorRT runs on (CUDA device 0): nvidia-smi, else torch, else None."""
    return _nvidia_smi_gpu_name(runner) or _torch_gpu_name()


def _nvidia_smi_gpu_name(runner: Runner) -> str | None:
    # nvidia-smi ignores CUDA_VISIBLE_DEVICES, so ask for its first entry; asking nvidia-smi (not torch)
    # first keeps this process free of a CUDA context (a forked worker could not use CUDA after one)
    exe = shutil.which("nvidia-smi")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    first = (visible or "0").split(",")[0].strip()
    if exe is None or not first:
        return None
    try:
        proc = runner([exe, "--query-gpu=name", "--format=csv,noheader", "-i", first], 15.0)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (proc.stdout or "").strip().splitlines() if proc.returncode == 0 else []
    return (lines[0].strip() or None) if lines else None


def _torch_gpu_name() -> str | None:
    try:
        import torch

        return str(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None
    except Exception:
        return None


def local_trt_version(runner: Runner = run_command) -> str | None:
    """TensorRT's version here: the Python package's, else the banner of the trtexec on PATH, else None."""
    return _tensorrt_version() or _trtexec_version(runner)


def _tensorrt_version() -> str | None:
    try:
        import tensorrt
    except Exception:
        return None
    return str(getattr(tensorrt, "__version__", "")) or None


def _trtexec_version(runner: Runner) -> str | None:
    exe = shutil.which("trtexec") or shutil.which(JETPACK_TRTEXEC)
    if exe is None:
        return None
    try:  # trtexec prints "&&&& RUNNING TensorRT.trtexec [TensorRT v100300]" before anything else
        proc = runner([exe, "--help"], 30.0)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (proc.stdout or "") + (proc.stderr or "")
    return parse_trtexec_output_version(text)


def _tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def serialize_engine(onnx_path: str | os.PathLike[str], precision: str) -> tuple[bytes, str]:
    """Build a TensorRT engine from ``onnx_path`` with the Python API; (serialized engine, TensorRT version).

    FP16 sets ``BuilderFlag.FP16``; INT8 (a Q/DQ graph) sets ``INT8`` and ``FP16``.
    """
    try:
        import tensorrt as trt
    except Exception as exc:
        raise ProfilerUnavailable(f"`import tensorrt` fails here ({exc}); use trt:ssh://user@host") from None
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise MeasurementError(f"TensorRT cannot parse {Path(onnx_path).name}: {errs}")
    config = builder.create_builder_config()
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise MeasurementError(f"TensorRT could not build an engine for {Path(onnx_path).name}")
    return bytes(serialized), trt.__version__


def build_and_time_engine(
    onnx_path: str | os.PathLike[str], precision: str, warmup_ms: float = 200.0, runs: int = 200
) -> tuple[list[float], dict[str, Any]]:
    """Build a TensorRT engine from ``onnx_path`` with the Python API and time it with CUDA events.

    FP16 sets ``BuilderFlag.FP16``; INT8 (a Q/DQ graph) sets ``INT8`` and ``FP16``. Buffers are
    torch CUDA tensors (no pycuda needed); inputs are random. Warm-up: at least one inference, then
    until ``warmup_ms`` have passed; then ``runs`` timed inferences.
    """
    import torch

    if not torch.cuda.is_available():
        raise ProfilerUnavailable("TensorRT needs a CUDA GPU and torch sees none")
    serialized, version = serialize_engine(onnx_path, precision)
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    context = engine.create_execution_context()
    buffers = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dims = tuple(engine.get_tensor_shape(name))
        dtype = torch.from_numpy(__import__("numpy").zeros(1, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
        t = torch.rand(dims, device="cuda").to(dtype) if dtype.is_floating_point else torch.zeros(
            dims, dtype=dtype, device="cuda"
        )
        buffers.append(t)
        context.set_tensor_address(name, t.data_ptr())
    stream = torch.cuda.Stream()
    warm_until = time.perf_counter() + warmup_ms / 1000.0
    while True:  # at least one inference, then until warmup_ms have passed (trtexec's --warmUp)
        context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        if time.perf_counter() >= warm_until:
            break
    samples = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        context.execute_async_v3(stream.cuda_stream)
        end.record(stream)
        end.synchronize()
        samples.append(float(start.elapsed_time(end)))
    info = {"gpu": torch.cuda.get_device_name(), "trt_version": version, "engine_bytes": len(serialized)}
    return samples, info
