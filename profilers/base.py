"""The profiler protocol, modelled on Optuna's samplers: one small base class, one file per device.

Every profiler answers ``measure(onnx_path, input_shape, precision) -> LatencyResult`` for one
ONNX file at one static input shape, and ``check()`` raises a typed
:class:`~profilers.errors.ProfilerError` quickly when its device or service cannot be used, so
that a study fails before it starts, not after an hour.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from profilers.errors import ProfilerError
from profilers.result import LatencyResult

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
