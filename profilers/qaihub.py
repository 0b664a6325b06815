"""``qaihub:DEVICE``: latency on a Snapdragon device through Qualcomm AI Hub (qai-hub >= 0.56).

Spec: ``qaihub:Snapdragon 8 Elite QRD`` (quotes around the name are allowed), with options
``?runtime=tflite|qnn_dlc|qnn_context_binary|onnx|precompiled_qnn_onnx`` (default ``tflite``,
AI Hub's own default) and ``&compute_unit=npu|gpu|cpu``.

What it does, with qai-hub 0.56's job API (``submit_profile_job`` is deprecated there):

1. ``check()``: the API token first, from the client config file
   (``$QAIHUB_CLIENT_INI`` or ``~/.qai_hub/client.ini``, section ``[api]``, key ``api_token``),
   before importing or calling anything, so a missing token is one clear
   :class:`~profilers.errors.MissingToken` at once instead of qai-hub's retries; the token is
   never printed or logged. Then ``get_devices()`` under a timeout (with a token but no network
   qai-hub retries for about 46 s) and the device name must be one of them
   (:class:`~profilers.errors.UnknownDevice`, with close matches).
2. ``measure()``: ``submit_compile_job(model=onnx, device=Device(name), input_specs={input:
   (shape, "float32")}, options="--target_runtime R [--compute_unit U]")``, ``wait(timeout)``,
   ``get_target_model()``; then ``submit_inference_job(model=target, device, inputs=None,
   profile=True)`` (random inputs, profiling on), ``wait(timeout)`` and ``download_profile()``.
3. The profile's ``execution_summary`` times are **microseconds** (qai-hub's own
   ``InferenceJobResult`` divides them by 1000 to print ms). ``median_ms``/``p90_ms`` come from
   ``all_inference_times`` when the profile has it, else ``median_ms`` is
   ``estimated_inference_time`` and ``p90_ms`` is NaN; ``details`` keeps the estimate, the peak
   memory and how many layers ran on NPU/GPU/CPU (from ``execution_detail[*].compute_unit``).

Every call that talks to AI Hub runs under a timeout in a daemon thread; a timeout is a
:class:`~profilers.errors.ProfilerTimeout` (jobs) or :class:`~profilers.errors.DeviceUnreachable`
(service). The client is injectable (``client=``: any object with ``get_devices``, ``Device``,
``submit_compile_job``, ``submit_inference_job``), which is how the tests run without qai-hub.
"""

from __future__ import annotations

import configparser
import difflib
import os
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from profilers import onnx_info
from profilers.base import Profiler, format_shape, parse_shape
from profilers.errors import (
    DeviceUnreachable,
    MeasurementError,
    MissingToken,
    ProfilerError,
    ProfilerTimeout,
    ProfilerUnavailable,
    UnknownDevice,
    UnknownProfiler,
)
from profilers.result import REPORTED, LatencyResult

CONFIG_ENV = "QAIHUB_CLIENT_INI"
DEFAULT_CONFIG = "~/.qai_hub/client.ini"
RUNTIMES = ("tflite", "qnn_dlc", "qnn_context_binary", "onnx", "precompiled_qnn_onnx")
COMPUTE_UNITS = ("npu", "gpu", "cpu")


def config_path() -> Path:
    return Path(os.path.expanduser(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG)))


def require_token(path: str | os.PathLike[str] | None = None) -> Path:
    """Raise :class:`MissingToken` unless the AI Hub config file holds a non-empty api_token."""
    p = Path(os.path.expanduser(str(path))) if path else config_path()
    how = "run `qai-hub configure --api_token <TOKEN>` (token from aihub.qualcomm.com, account settings)"
    if not p.is_file():
        raise MissingToken(f"no Qualcomm AI Hub API token: {p} does not exist; {how}")
    cp = configparser.ConfigParser()
    try:
        cp.read(p, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        raise MissingToken(f"no Qualcomm AI Hub API token: {p} is not a valid INI file; {how}") from None
    if not cp.has_section("api") or not cp.get("api", "api_token", fallback="").strip():
        raise MissingToken(f"no Qualcomm AI Hub API token in {p} (section [api], key api_token); {how}")
    return p


def call_with_timeout(fn: Callable[[], Any], timeout: float, on_timeout: Callable[[], ProfilerError]) -> Any:
    """Run ``fn`` in a daemon thread; raise ``on_timeout()`` if it has not returned in time.

    A daemon thread, because qai-hub's HTTP retries cannot be interrupted: the thread is left to
    finish on its own and never holds the interpreter open.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name="qaihub-call", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise on_timeout()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def parse_profile(profile: Mapping[str, Any]) -> dict[str, Any]:
    """Numbers from an inference job's ``download_profile()`` dict (times in microseconds)."""
    summary = profile.get("execution_summary") or {}
    est = summary.get("estimated_inference_time")
    if not est:
        raise MeasurementError("AI Hub profile has no estimated_inference_time")
    all_us = [float(t) for t in (summary.get("all_inference_times") or []) if t is not None]
    layers = profile.get("execution_detail") or []
    units = Counter(str(layer.get("compute_unit", "?")).upper() for layer in layers)
    out: dict[str, Any] = {
        "estimated_inference_ms": float(est) / 1000.0,
        "compute_units": {u: int(units.get(u, 0)) for u in ("NPU", "GPU", "CPU")},
        "layers": len(layers),
        "all_inference_times_ms": [t / 1000.0 for t in all_us],
    }
    other = {u: n for u, n in units.items() if u not in ("NPU", "GPU", "CPU")}
    if other:
        out["compute_units"].update(other)
    peak = summary.get("estimated_inference_peak_memory")
    if peak is not None:
        out["peak_memory_mb"] = float(peak) / 2**20
    rng = summary.get("inference_memory_peak_range")
    if rng:
        out["peak_memory_range_mb"] = [float(v) / 2**20 for v in rng]
    for key in ("first_load_time", "warm_load_time", "compile_time"):
        if summary.get(key) is not None:
            out[key.replace("_time", "_ms")] = float(summary[key]) / 1000.0
    return out


class QaiHubProfiler(Profiler):
    name = "qaihub"
    precisions = ("fp32", "fp16", "int8")
    default_precision = "fp32"

    def __init__(
        self,
        device_name: str,
        runtime: str = "tflite",
        compute_unit: str | None = None,
        client: Any = None,
        config: str | os.PathLike[str] | None = None,
        connect_timeout_s: float = 30.0,
        job_timeout_s: float = 1800.0,
        compile_options: str = "",
        profile_options: str = "",
    ) -> None:
        name = (device_name or "").strip().strip("'\"").strip()
        if not name:
            raise UnknownProfiler('qaihub needs a device: --profiler qaihub:"Snapdragon 8 Elite QRD"')
        if runtime not in RUNTIMES:
            raise UnknownProfiler(f"unknown AI Hub runtime {runtime!r} (choose from {', '.join(RUNTIMES)})")
        if compute_unit is not None and compute_unit.lower() not in COMPUTE_UNITS:
            raise UnknownProfiler(f"unknown compute unit {compute_unit!r} (choose from {', '.join(COMPUTE_UNITS)})")
        self.device_name = name
        self.runtime = runtime
        self.compute_unit = compute_unit.lower() if compute_unit else None
        self._client = client
        self.config = config
        self.connect_timeout_s = float(connect_timeout_s)
        self.job_timeout_s = float(job_timeout_s)
        self.compile_options = compile_options
        self.profile_options = profile_options
        self._checked = False

    @property
    def spec(self) -> str:
        opts = []
        if self.runtime != "tflite":
            opts.append(f"runtime={self.runtime}")
        if self.compute_unit:
            opts.append(f"compute_unit={self.compute_unit}")
        return f"qaihub:{self.device_name}" + ("?" + "&".join(opts) if opts else "")

    @property
    def device(self) -> str:
        return f"{self.device_name} ({self.runtime}{'/' + self.compute_unit if self.compute_unit else ''})"

    # -- the client -----------------------------------------------------------------------------
    def client(self) -> Any:
        if self._client is None:
            try:
                import qai_hub
            except ImportError:
                raise ProfilerUnavailable(
                    "qai-hub is not installed: pip install 'ens[qaihub]' (or pip install qai-hub)"
                ) from None
            self._client = qai_hub
        return self._client

    def _service(self, fn: Callable[[], Any], what: str, timeout: float | None = None) -> Any:
        t = self.connect_timeout_s if timeout is None else timeout
        try:
            return call_with_timeout(
                fn,
                t,
                lambda: DeviceUnreachable(f"Qualcomm AI Hub did not answer within {t:g} s ({what})"),
            )
        except ProfilerError:
            raise
        except TimeoutError:
            raise ProfilerTimeout(f"AI Hub {what} did not finish within {t:g} s") from None
        except Exception as exc:  # qai_hub.UserError / InternalError / requests errors
            kind = type(exc).__name__
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else kind
            if kind == "UserError" and "configuration" in str(exc).lower():
                raise MissingToken(f"Qualcomm AI Hub: {first}") from None
            if kind in ("InternalError", "ConnectionError", "Timeout"):
                raise DeviceUnreachable(f"Qualcomm AI Hub ({what}): {first}") from None
            raise MeasurementError(f"Qualcomm AI Hub ({what}): {kind}: {first}") from None

    # -- protocol -------------------------------------------------------------------------------
    def check(self) -> None:
        require_token(self.config)
        client = self.client()
        devices = self._service(lambda: list(client.get_devices()), "listing devices")
        names = sorted({str(getattr(d, "name", d)) for d in devices})
        if self.device_name not in names:
            close = difflib.get_close_matches(self.device_name, names, n=5, cutoff=0.4)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownDevice(f"AI Hub has no device named {self.device_name!r}{hint}")
        self._checked = True

    def measure(
        self,
        onnx_path: str | os.PathLike[str],
        input_shape: Sequence[int],
        precision: str | None = None,
    ) -> LatencyResult:
        shape = parse_shape(input_shape)
        precision = self._precision(precision)
        path = Path(onnx_path)
        require_token(self.config)  # before any work, every time
        if not path.is_file():
            raise MeasurementError(f"no ONNX file at {onnx_path}")
        try:
            onnx_info.check_input_shape(path, shape)
            input_name = onnx_info.input_name(path)
        except ValueError as exc:
            raise MeasurementError(str(exc)) from None
        if precision == "int8" and onnx_info.graph_precision(path) != "int8":
            raise MeasurementError(f"{path.name} has no Q/DQ nodes: quantize it before profiling INT8")
        if not self._checked:
            self.check()
        client = self.client()
        device = client.Device(self.device_name)
        options = f"--target_runtime {self.runtime}"
        if self.compute_unit:
            options += f" --compute_unit {self.compute_unit}"
        if self.compile_options:
            options += " " + self.compile_options.strip()
        t = self.job_timeout_s
        compile_job = self._service(
            lambda: client.submit_compile_job(
                model=str(path),
                device=device,
                name=f"ens {path.stem}",
                input_specs={input_name: (tuple(shape), "float16" if precision == "fp16" else "float32")},
                options=options,
            ),
            "submitting the compile job",
            timeout=t,
        )
        self._wait(compile_job, "compile")
        target = self._service(compile_job.get_target_model, "fetching the compiled model", timeout=t)
        if target is None:
            raise MeasurementError(f"AI Hub compile job {_job_id(compile_job)} produced no model")
        prof_opts = self.profile_options.strip()
        if self.compute_unit and "--compute_unit" not in prof_opts:
            prof_opts = f"--compute_unit {self.compute_unit} {prof_opts}".strip()
        job = self._service(
            lambda: client.submit_inference_job(
                model=target, device=device, inputs=None, profile=True, options=prof_opts
            ),
            "submitting the inference job",
            timeout=t,
        )
        self._wait(job, "inference")
        profile = self._service(job.download_profile, "downloading the profile", timeout=t)
        parsed = parse_profile(profile or {})
        times = parsed["all_inference_times_ms"]
        if times:
            med, p90 = float(np.median(times)), float(np.percentile(times, 90))
            runs, median_from = len(times), "all_inference_times"
        else:
            med, p90 = parsed["estimated_inference_ms"], float("nan")
            runs, median_from = 1, "estimated_inference_time"
        details = {
            "source": REPORTED,
            "tool": "qai-hub",
            "device_name": self.device_name,
            "runtime": self.runtime,
            "median_from": median_from,
            "compile_job": _job_id(compile_job),
            "inference_job": _job_id(job),
            "url": getattr(job, "url", None),
            "input_shape": format_shape(shape),
            **{k: v for k, v in parsed.items() if k != "all_inference_times_ms"},
        }
        return LatencyResult(
            median_ms=med,
            p90_ms=p90,
            runs=runs,
            device=self.device,
            details=details,
            profiler=self.spec,
            input_shape=shape,
            precision=precision,
        )

    def _wait(self, job: Any, what: str) -> None:
        t = self.job_timeout_s

        def wait() -> Any:
            return job.wait(int(t))

        status = self._service(wait, f"waiting for the {what} job", timeout=t + 30)
        if status is not None and not getattr(status, "success", True):
            msg = getattr(status, "message", None) or getattr(status, "code", "failed")
            raise MeasurementError(f"AI Hub {what} job {_job_id(job)} failed: {msg}")


def _job_id(job: Any) -> str | None:
    return getattr(job, "job_id", None)

