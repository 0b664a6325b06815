"""Latency: measured or predicted, for one ONNX file at one input shape.

Every profiler is ``measure(onnx_path, input_shape, precision=None) -> LatencyResult(median_ms,
p90_ms, runs, device, details)`` and ``check()`` (a typed error, fast, when its device cannot be
used). Build one from a spec with :func:`get_profiler`::

    ort-cpu                          ONNX Runtime on this CPU (measured)
    trt | trt:ssh://user@host        TensorRT locally, or trtexec on a Jetson over SSH
    qaihub:"Snapdragon 8 Elite QRD"  Qualcomm AI Hub (compile + profiled inference job)
    proxy                            transformer-block count and MACs (a count, not a time)
    lut:PROFILER                     a calibrated per-device latency table (predicted)

This package may import ``blocks`` and nothing else of the project.
"""

from profilers.base import Profiler, format_shape, parse_shape
from profilers.cache import CachedProfiler, CacheKey, LatencyCache
from profilers.errors import (
    DeviceUnreachable,
    MeasurementError,
    MissingToken,
    ProfilerError,
    ProfilerTimeout,
    ProfilerUnavailable,
    TableMismatch,
    TableNotFound,
    UnknownDevice,
    UnknownProfiler,
)
from profilers.lut import LatencyTable, LUTProfiler
from profilers.registry import get_profiler, profiler_names, register_profiler
from profilers.result import LatencyResult

__all__ = [
    "CacheKey",
    "CachedProfiler",
    "DeviceUnreachable",
    "LUTProfiler",
    "LatencyCache",
    "LatencyResult",
    "LatencyTable",
    "MeasurementError",
    "MissingToken",
    "Profiler",
    "ProfilerError",
    "ProfilerTimeout",
    "ProfilerUnavailable",
    "TableMismatch",
    "TableNotFound",
    "UnknownDevice",
    "UnknownProfiler",
    "format_shape",
    "get_profiler",
    "parse_shape",
    "profiler_names",
    "register_profiler",
]
