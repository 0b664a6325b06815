"""Which INT8 graph a profiler times: a registry of builders, keyed by name.

An INT8 latency is only worth as much as the graph it timed. ``ort-static`` (the fallback, here) is
ONNX Runtime's ``quantize_static`` placement on random data. A higher layer registers the graph it
ships (``ens`` registers ``onnx_int8``: the Q/DQ placement and weight range of ``ens finalize --export
onnx_int8``), and while one is registered it is the one timed. The active builder's name goes into
every INT8 cache key and latency-table name, so a latency of one graph is never served for another.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

# (fp32 model in eval mode, static NCHW shape, output path) -> writes a Q/DQ ONNX file
Int8Builder = Callable[[object, tuple[int, ...], Path], None]

FALLBACK = "ort-static"
_BUILDERS: dict[str, Int8Builder] = {}
_ACTIVE: list[str] = []


def register_int8_graph(name: str, builder: Int8Builder, activate: bool = True) -> None:
    """Register ``builder`` as ``name`` (replacing one of that name); ``activate``: time this graph from now on."""
    _BUILDERS[name] = builder
    if activate:
        if name in _ACTIVE:
            _ACTIVE.remove(name)
        _ACTIVE.append(name)


def int8_graph_name() -> str:
    """The graph INT8 latencies are measured on now."""
    return _ACTIVE[-1] if _ACTIVE else FALLBACK


def build_int8(model, shape: Sequence[int], path: str | os.PathLike[str], name: str | None = None) -> str:
    """Write the INT8 graph of ``model`` (the active builder's, or ``name``'s) to ``path``; returns its name."""
    name = name or int8_graph_name()
    builder = _BUILDERS.get(name, _ort_static if name == FALLBACK else None)
    if builder is None:
        raise KeyError(f"no INT8 graph {name!r} (registered: {', '.join([FALLBACK, *_BUILDERS])})")
    builder(model, tuple(shape), Path(path))
    return name


def _ort_static(model, shape: tuple[int, ...], path: Path) -> None:
    from profilers.onnx_export import export_onnx
    from profilers.quantize import quantize_int8

    with tempfile.TemporaryDirectory(prefix="ens-int8-") as tmp:
        fp32 = export_onnx(model, shape, Path(tmp) / "fp32.onnx")
        quantize_int8(fp32, path, shape)
