"""The profiler protocol, modelled on Optuna's samplers: one small base class, one file per device.

Every profiler answers two questions:

- ``measure(onnx_path, input_shape, precision) -> LatencyResult`` for one ONNX file at one static
  input shape;
- ``profile(network, precision) -> LatencyResult`` for a network given as block kinds, U-Net config and
  shape (:class:`~profilers.networks.NetworkSpec`): a measuring profiler exports it and measures the
  file (through the latency cache); a predicting one (the latency table, the proxy) answers from the
  spec alone.

It declares what it is, so that callers never ask for its name: ``predicts`` (no device is touched),
``unit`` (``"ms"``, or ``"count"`` for the proxy's transformer blocks), ``measurer`` (the profiler that
times files for it: itself, a table's inner profiler, or None for the proxy) and ``float_precision``
(the precision a float network is deployed in: fp16 for TensorRT). ``check()`` raises a typed
:class:`~profilers.errors.ProfilerError` quickly when its device or service cannot be used, so that a
study fails before it starts, not after an hour; ``prepare()`` makes what it needs first (a table).
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from profilers.errors import ProfilerError
from profilers.result import LatencyResult

if TYPE_CHECKING:
    from profilers.cache import LatencyCache
    from profilers.networks import NetworkSpec

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")


class InvalidShape(ProfilerError):
    """An input shape string or tuple that is not N positive integers."""


class Profiler(ABC):
    """A latency measurer for one device.

    Attributes:
        name: registry name (``ort-cpu``, ``trt``, ``qaihub``, ``proxy``, ``lut``).
        spec: the canonical spec string this instance answers to (``get_profiler(spec)``
            rebuilds an equivalent one); part of every cache key.
        device: a stable, human-readable description of the device (part of cache keys).
        precisions: the precisions ``measure`` accepts.
        default_precision: used when the caller gives none.
    """

    name: ClassVar[str] = ""
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    default_precision: ClassVar[str] = "fp32"
    predicts: ClassVar[bool] = False  # answers without timing anything on the device
    unit: ClassVar[str] = "ms"  # "ms", or "count" (not a time: the proxy)
    float_precision: ClassVar[str] = "fp32"  # the precision a float network runs in on this device

    @property
    def measurer(self) -> Profiler | None:
        """The profiler that times files for this one (latency tables are calibrated with it), or None."""
        return None if self.predicts else self

    @property
    def spec(self) -> str:
        return self.name

    @property
    @abstractmethod
    def device(self) -> str: ...

    def check(self) -> None:
        """Raise a typed ProfilerError now if ``measure`` cannot work (no device, token, tool)."""
        return None

    @abstractmethod
    def measure(
        self,
        onnx_path: str | os.PathLike[str],
        input_shape: Sequence[int],
        precision: str | None = None,
    ) -> LatencyResult:
        """Latency of ``onnx_path`` for inputs of ``input_shape`` at ``precision``."""

    def profile(
        self,
        net: NetworkSpec,
        precision: str | None = None,
        *,
        cache: LatencyCache | str | os.PathLike[str] | bool | None = True,
        onnx_path: str | os.PathLike[str] | None = None,
        seed: int = 0,
    ) -> LatencyResult:
        """Latency of the network ``net``: from the cache, else exported (``onnx_path`` keeps the file) and
        measured, and the measurement cached. ``cache``: True (the default cache), False/None, or a cache."""
        import tempfile
        from pathlib import Path

        from profilers.cache import CachedProfiler
        from profilers.networks import export_network

        prec = self.resolve_precision(precision)
        key = net.key
        if prec == "int8":  # which INT8 graph was timed is part of what was measured
            from profilers.int8_graphs import int8_graph_name

            key = f"{key}|int8:{int8_graph_name()}"
        cached = CachedProfiler(self, None if cache is True else cache) if cache not in (None, False) else None
        if cached is not None:
            hit = cached.lookup(key, net.shape, prec)
            if hit is not None:
                return hit.replace(details={**hit.details, "cache": "hit"})
        with tempfile.TemporaryDirectory(prefix="ens-profile-") as tmp:
            path = Path(onnx_path) if onnx_path else Path(tmp) / "network.onnx"
            export_network(net, path, precision=prec if prec == "int8" else "fp32", seed=seed)
            result = self.measure(path, net.shape, prec)
        if cached is not None:
            cached.store_for(key, net.shape, prec, result)
        return result

    def prepare(self, config: dict[str, Any], input_shape: Sequence[int], kinds: Sequence[str],
                log: Callable[[str], None] = print, preset: str | None = None, precision: str | None = None) -> None:
        """Make what ``profile`` needs for this network config and shape (a latency table); nothing by default."""
        return None

    def measure_many(
        self,
        onnx_paths: Sequence[str | os.PathLike[str]],
        input_shape: Sequence[int],
        precision: str | None = None,
    ) -> list[LatencyResult]:
        """Several files, in order. Profilers that can interleave (ort-cpu) override this."""
        return [self.measure(p, input_shape, precision) for p in onnx_paths]

    # -- helpers for implementations ------------------------------------------------------------
    def resolve_precision(self, precision: str | None) -> str:
        """``precision`` (or the default) if this profiler supports it, else a ProfilerError."""
        return self._precision(precision)

    def _precision(self, precision: str | None) -> str:
        p = (precision or self.default_precision).lower()
        if p not in self.precisions:
            raise ProfilerError(
                f"profiler {self.spec!r} does not support precision {p!r} (choose from {', '.join(self.precisions)})"
            )
        return p

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec!r}, device={self.device!r})"


class WrappingProfiler(Profiler):
    """A profiler in front of another (the cache, the latency table): it answers for the same device."""

    def __init__(self, inner: Profiler) -> None:
        self.inner = inner

    @property
    def spec(self) -> str:
        return self.inner.spec

    @property
    def device(self) -> str:
        return self.inner.device

    @property
    def precisions(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.inner.precisions

    @property
    def default_precision(self) -> str:  # type: ignore[override]
        return self.inner.default_precision

    @property
    def float_precision(self) -> str:  # type: ignore[override]
        return self.inner.float_precision

    def check(self) -> None:
        self.inner.check()


_SHAPE = re.compile(r"^\d+(x\d+)*$")


def parse_shape(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"1x3x256x256"`` (or a sequence of ints) -> ``(1, 3, 256, 256)``; every side positive."""
    if isinstance(text, str):
        s = text.strip().lower().replace("×", "x").replace(",", "x")
        if not _SHAPE.match(s):
            raise InvalidShape(f"bad shape {text!r}: write it as NxCxHxW, e.g. 1x3x256x256")
        dims = tuple(int(v) for v in s.split("x"))
    else:
        try:
            dims = tuple(int(v) for v in text)
        except (TypeError, ValueError):
            raise InvalidShape(f"bad shape {text!r}: expected a sequence of integers") from None
    if not dims or any(d <= 0 for d in dims):
        raise InvalidShape(f"bad shape {text!r}: every dimension must be a positive integer")
    return dims


def format_shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)
