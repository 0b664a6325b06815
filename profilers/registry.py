"""Profilers by name, and the spec strings users write.

Grammar: ``NAME[:ARG][?key=value&key=value]``. Examples::

    ort-cpu                      ort-cpu?threads=4&runs=50
    trt                          trt:ssh://nvidia@orin.local/tmp/ens?trtexec=/usr/src/tensorrt/bin/trtexec
    qaihub:Snapdragon 8 Elite QRD                qaihub:"Snapdragon 8 Elite QRD"?runtime=qnn_context_binary
    proxy
    lut:ort-cpu                  lut:trt:ssh://nvidia@orin.local          lut:qaihub:Snapdragon 8 Elite QRD

A spec string (typed by a user, or read back from a study's database) may carry only the keys its
profiler declares; any other key is an :class:`UnknownProfiler`. The keys, per profiler:

- ``ort-cpu``: threads, warmup, runs, rounds, breakdown, seed, clock, spin, max_sessions
- ``trt``: trtexec (with ``ssh://`` only), warmup (milliseconds), runs, use_cuda_graph, no_data_transfers,
  keep_remote_files, connect_timeout_s, check_timeout_s, copy_timeout_s, build_timeout_s
- ``qaihub``: runtime, compute_unit, connect_timeout_s, job_timeout_s
- ``proxy``: none
- ``lut``: none of its own: everything after ``lut:`` (options included) is the inner profiler's spec,
  and its keys are checked by the inner profiler

Options that run code or reach a shell are keyword arguments only, never spec keys: trt's ``runner``,
``ssh_options`` and ``trtexec_args``; qaihub's ``client``, ``config``, ``compile_options`` and
``profile_options``; lut's ``table`` and ``tables_dir``. Keyword arguments of :func:`get_profiler` go
to the profiler's constructor and win over spec options. Values are checked: integers, finite
numbers, and booleans written 1/0, true/false, yes/no or on/off. A new profiler is one
:func:`register_profiler` call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from profilers.base import Profiler
from profilers.errors import UnknownProfiler

Factory = Callable[[str | None, dict[str, Any]], Profiler]


@dataclass(frozen=True)
class _Entry:
    factory: Factory
    help: str
    spec_keys: tuple[str, ...]


_REGISTRY: dict[str, _Entry] = {}


def register_profiler(name: str, help: str = "", spec_keys: tuple[str, ...] = ()) -> Callable[[Factory], Factory]:
    """Register ``factory(arg, options)`` as ``name``; ``spec_keys`` are the options a spec string may carry."""

    def wrap(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise ValueError(f"profiler {name!r} is already registered")
        _REGISTRY[name] = _Entry(factory, help, tuple(spec_keys))
        return factory

    return wrap


def profiler_names() -> list[str]:
    return list(_REGISTRY)


def profiler_spec_keys(name: str) -> tuple[str, ...]:
    """The options a spec string of profiler ``name`` may carry."""
    return _REGISTRY[name].spec_keys


def profiler_help() -> dict[str, str]:
    """Each profiler's one-line help, with the options its spec string takes."""
    return {name: f"{e.help} [spec options: {', '.join(e.spec_keys) or 'none'}]" for name, e in _REGISTRY.items()}


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
    """Build the profiler a spec names; raises :class:`UnknownProfiler` for an unknown name or spec option."""
    name, arg, query = split_spec(spec)
    if name not in _REGISTRY:
        raise UnknownProfiler(f"unknown profiler {name!r} in {spec!r} (choose from {', '.join(_REGISTRY)})")
    entry = _REGISTRY[name]
    unknown = sorted(set(query) - set(entry.spec_keys))
    if unknown:
        raise UnknownProfiler(
            f"unknown option(s) for {name}: {', '.join(unknown)} "
            f"(a spec string takes: {', '.join(entry.spec_keys) or 'no options'})"
        )
    options: dict[str, Any] = {**query, **kwargs}
    return entry.factory(arg, options)


# -- option parsing helpers ---------------------------------------------------------------------
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _int(options: dict[str, Any], key: str, default: int, minimum: int | None = None) -> int:
    v = options.pop(key, default)
    try:
        n = int(v)
    except (TypeError, ValueError):
        raise UnknownProfiler(f"option {key}={v!r} is not an integer") from None
    if minimum is not None and n < minimum:
        raise UnknownProfiler(f"option {key}={v!r} must be at least {minimum}")
    return n


def _float(options: dict[str, Any], key: str, default: float, positive: bool = False) -> float:
    v = options.pop(key, default)
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise UnknownProfiler(f"option {key}={v!r} is not a number") from None
    if not math.isfinite(x) or (positive and x <= 0):
        raise UnknownProfiler(f"option {key}={v!r} must be a finite{' positive' if positive else ''} number")
    return x


def _bool(options: dict[str, Any], key: str, default: bool) -> bool:
    v = options.pop(key, default)
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in _TRUE or s in _FALSE:
        return s in _TRUE
    raise UnknownProfiler(f"option {key}={v!r} is not a boolean (write 1/0, true/false, yes/no or on/off)")


def _no_more(name: str, options: dict[str, Any]) -> None:
    if options:
        raise UnknownProfiler(f"unknown option(s) for {name}: {', '.join(sorted(options))}")


def _no_arg(name: str, arg: str | None) -> None:
    if arg:
        raise UnknownProfiler(f"profiler {name!r} takes no argument (got {arg!r})")


# -- built-in profilers -------------------------------------------------------------------------
_ORT_INTS = {"threads": (2, 1), "warmup": (3, 0), "runs": (20, 1), "rounds": (4, 1), "seed": (0, None),
             "max_sessions": (8, 1)}  # key: (default, minimum)


@register_profiler(
    "ort-cpu", "ONNX Runtime on this CPU, measured (fixed threads, warm-up, median/p90)",
    spec_keys=(*_ORT_INTS, "breakdown", "clock", "spin"),
)
def _ort_cpu(arg: str | None, options: dict[str, Any]) -> Profiler:
    from profilers.ort_cpu import OrtCpuProfiler

    _no_arg("ort-cpu", arg)
    ints = {key: _int(options, key, default, minimum) for key, (default, minimum) in _ORT_INTS.items()}
    p = OrtCpuProfiler(
        **ints,
        breakdown=_bool(options, "breakdown", False),
        clock=str(options.pop("clock", "wall")),
        spin=_bool(options, "spin", False) if "spin" in options else None,
    )
    _no_more("ort-cpu", options)
    return p


_TRT_TIMEOUTS = ("connect_timeout_s", "check_timeout_s", "copy_timeout_s", "build_timeout_s")
_TRT_FLAGS = ("use_cuda_graph", "no_data_transfers", "keep_remote_files")


@register_profiler(
    "trt", "TensorRT: local (Python API or trtexec) or trt:ssh://user@host (Jetson, trtexec)",
    spec_keys=("trtexec", "warmup", "runs", *_TRT_FLAGS, *_TRT_TIMEOUTS),
)
def _trt(arg: str | None, options: dict[str, Any]) -> Profiler:
    from profilers.trt import TrtProfiler

    target = _trt_target(arg, options)
    kwargs: dict[str, Any] = {key: _float(options, key, 0.0, positive=True) for key in _TRT_TIMEOUTS if key in options}
    kwargs |= {key: _bool(options, key, False) for key in _TRT_FLAGS if key in options}
    if "warmup" in options:
        kwargs["warmup"] = _int(options, "warmup", 0, minimum=0)
    if "runs" in options:
        kwargs["runs"] = _int(options, "runs", 0, minimum=1)
    kwargs |= {key: options.pop(key) for key in ("runner", "trtexec_args", "ssh_options") if key in options}
    _no_more("trt", options)
    return TrtProfiler(target, **kwargs)


def _trt_target(arg: str | None, options: dict[str, Any]) -> str | None:
    """The ``ssh://`` URL of a trt spec, with the ``trtexec`` option split_spec took off put back (None: local)."""
    trtexec = options.pop("trtexec", None)
    if not arg:
        if trtexec is not None:
            raise UnknownProfiler("trtexec= goes with trt:ssh://user@host; locally trtexec is looked up on PATH")
        return None
    if not arg.startswith("ssh://"):
        raise UnknownProfiler(f"trt takes no argument or ssh://user@host[:port][/dir], got {arg!r}")
    return f"{arg}?trtexec={trtexec}" if trtexec is not None else arg  # SshTarget.parse checks the path


@register_profiler(
    "qaihub", 'Qualcomm AI Hub: qaihub:"Snapdragon 8 Elite QRD" (needs qai-hub and an API token)',
    spec_keys=("runtime", "compute_unit", "connect_timeout_s", "job_timeout_s"),
)
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
            kwargs[key] = _float(options, key, 0.0, positive=True)
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
    inner = get_profiler(arg, **options)  # the inner spec's keys are checked there; other kwargs are the inner's
    if inner.measurer is not inner:
        raise UnknownProfiler(f"lut wraps a measured profiler (ort-cpu, trt, qaihub), not {inner.spec}")
    return LUTProfiler(inner, table=table, tables_dir=tables_dir)
