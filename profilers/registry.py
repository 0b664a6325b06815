"""Profilers by name, and the spec strings users write.

Grammar: ``NAME[:ARG][?key=value&key=value]``. Examples::

    ort-cpu                      ort-cpu?threads=4&runs=50
    trt                          trt:ssh://nvidia@orin.local/tmp/ens?trtexec=/usr/src/tensorrt/bin/trtexec
    qaihub:Snapdragon 8 Elite QRD                qaihub:"Snapdragon 8 Elite QRD"?runtime=qnn_context_binary
    proxy
    lut:ort-cpu                  lut:trt:ssh://nvidia@orin.local          lut:qaihub:Snapdragon 8 Elite QRD

For ``lut:INNER`` everything after ``lut:`` (options included) is the inner profiler's spec.
Keyword arguments of :func:`get_profiler` go to the profiler's constructor and win over spec
options. A new profiler is one :func:`register_profiler` call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from profilers.base import Profiler
from profilers.errors import UnknownProfiler

Factory = Callable[[str | None, dict[str, Any]], Profiler]
_REGISTRY: dict[str, Factory] = {}
_HELP: dict[str, str] = {}


def register_profiler(name: str, help: str = "") -> Callable[[Factory], Factory]:
    def wrap(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise ValueError(f"profiler {name!r} is already registered")
        _REGISTRY[name] = factory
        _HELP[name] = help
        return factory

    return wrap


def profiler_names() -> list[str]:
    return list(_REGISTRY)


def profiler_help() -> dict[str, str]:
    return dict(_HELP)


def split_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """``"name:arg?k=v"`` -> ``("name", "arg", {"k": "v"})``; ``lut`` keeps its query in the arg."""
    s = (spec or "").strip()
    if not s:
        raise UnknownProfiler(f"empty profiler spec (choose from {', '.join(_REGISTRY)})")
    name, sep, rest = s.partition(":")
    name = name.strip().lower()
    if name == "lut":
        return name, rest.strip() or None, {}
    query: dict[str, str] = {}
    if "?" in (rest if sep else name):
        if sep:
            rest, _, q = rest.partition("?")
        else:
            name, _, q = name.partition("?")
        query = dict(parse_qsl(q, keep_blank_values=True))
    arg = rest.strip().strip("'\"").strip() if sep else None
    return name, (arg or None), query


def get_profiler(spec: str, **kwargs: Any) -> Profiler:
    """Build the profiler a spec names; raises :class:`UnknownProfiler` for an unknown name."""
    name, arg, query = split_spec(spec)
    if name not in _REGISTRY:
        raise UnknownProfiler(f"unknown profiler {name!r} in {spec!r} (choose from {', '.join(_REGISTRY)})")
    options: dict[str, Any] = {**query, **kwargs}
    return _REGISTRY[name](arg, options)


# -- option parsing helpers ---------------------------------------------------------------------
def _int(options: dict[str, Any], key: str, default: int) -> int:
    v = options.pop(key, default)
    try:
        return int(v)
    except (TypeError, ValueError):
        raise UnknownProfiler(f"option {key}={v!r} is not an integer") from None


def _float(options: dict[str, Any], key: str, default: float) -> float:
    v = options.pop(key, default)
    try:
        return float(v)
    except (TypeError, ValueError):
        raise UnknownProfiler(f"option {key}={v!r} is not a number") from None


def _bool(options: dict[str, Any], key: str, default: bool) -> bool:
    v = options.pop(key, default)
    if isinstance(v, bool):
        return v
    return str(v).lower() in ("1", "true", "yes", "on")


def _no_more(name: str, options: dict[str, Any]) -> None:
    if options:
        raise UnknownProfiler(f"unknown option(s) for {name}: {', '.join(sorted(options))}")


def _no_arg(name: str, arg: str | None) -> None:
    if arg:
        raise UnknownProfiler(f"profiler {name!r} takes no argument (got {arg!r})")


# -- built-in profilers -------------------------------------------------------------------------
@register_profiler("ort-cpu", "ONNX Runtime on this CPU, measured (fixed threads, warm-up, median/p90)")
def _ort_cpu(arg: str | None, options: dict[str, Any]) -> Profiler:
    from profilers.ort_cpu import OrtCpuProfiler

    _no_arg("ort-cpu", arg)
    p = OrtCpuProfiler(
        threads=_int(options, "threads", 2),
        warmup=_int(options, "warmup", 3),
        runs=_int(options, "runs", 20),
        rounds=_int(options, "rounds", 4),
        breakdown=_bool(options, "breakdown", False),
        seed=_int(options, "seed", 0),
        clock=str(options.pop("clock", "wall")),
        spin=_bool(options, "spin", False) if "spin" in options else None,
        max_sessions=_int(options, "max_sessions", 8),
    )
    _no_more("ort-cpu", options)
    return p


@register_profiler("trt", "TensorRT: local (Python API or trtexec) or trt:ssh://user@host (Jetson, trtexec)")
def _trt(arg: str | None, options: dict[str, Any]) -> Profiler:
    from profilers.trt import TrtProfiler

    target = None
    if arg:
        if not arg.startswith("ssh://"):
            raise UnknownProfiler(f"trt takes no argument or ssh://user@host[:port][/dir], got {arg!r}")
        if "trtexec" in options:  # trt:ssh://h?trtexec=... was split off by split_spec
            arg = f"{arg}?trtexec={options.pop('trtexec')}"
        target = arg
    kwargs: dict[str, Any] = {}
    for key in ("connect_timeout_s", "check_timeout_s", "copy_timeout_s", "build_timeout_s"):
        if key in options:
            kwargs[key] = _float(options, key, 0.0)
    for key in ("runner", "trtexec_args", "ssh_options", "keep_remote_files"):
        if key in options:
            kwargs[key] = options.pop(key)
    _no_more("trt", options)
    return TrtProfiler(target, **kwargs)


@register_profiler("qaihub", 'Qualcomm AI Hub: qaihub:"Snapdragon 8 Elite QRD" (needs qai-hub and an API token)')
def _qaihub(arg: str | None, options: dict[str, Any]) -> Profiler:
    from profilers.qaihub import QaiHubProfiler

    if not arg:
        raise UnknownProfiler('qaihub needs a device name: --profiler qaihub:"Snapdragon 8 Elite QRD"')
    kwargs: dict[str, Any] = {}
    for key in ("runtime", "compute_unit", "compile_options", "profile_options"):
        if key in options:
            kwargs[key] = str(options.pop(key))
    for key in ("connect_timeout_s", "job_timeout_s"):
        if key in options:
            kwargs[key] = _float(options, key, 0.0)
    for key in ("client", "config"):
        if key in options:
            kwargs[key] = options.pop(key)
    _no_more("qaihub", options)
    return QaiHubProfiler(arg, **kwargs)


@register_profiler("proxy", "the ENS paper's proxy: transformer-block count and MACs (a count, not a time)")
def _proxy(arg: str | None, options: dict[str, Any]) -> Profiler:
    from profilers.proxy import ProxyProfiler

    _no_arg("proxy", arg)
    _no_more("proxy", options)
    return ProxyProfiler()


@register_profiler("lut", "a per-device latency table calibrated with any measured profiler: lut:ort-cpu")
def _lut(arg: str | None, options: dict[str, Any]) -> Profiler:
    from profilers.lut import LUTProfiler

    if not arg:
        raise UnknownProfiler("lut needs the profiler it was calibrated with, e.g. lut:ort-cpu")
    if arg.split(":", 1)[0].strip().lower() == "lut":
        raise UnknownProfiler("a latency table cannot wrap another latency table")
    table = options.pop("table", None)
    tables_dir = options.pop("tables_dir", None)
    inner = get_profiler(arg, **options)  # the other keyword options are the inner profiler's
    if inner.measurer is not inner:
        raise UnknownProfiler(f"lut wraps a measured profiler (ort-cpu, trt, qaihub), not {inner.spec}")
    return LUTProfiler(inner, table=table, tables_dir=tables_dir)
