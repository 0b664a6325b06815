"""A network to profile, described without ``ens``: block kinds per stage, the U-Net config, an input shape.

:class:`NetworkSpec` is what :meth:`profilers.base.Profiler.profile` takes. A measuring profiler exports it
(:func:`export_network`, random weights: latency does not depend on them) and measures the file; the
latency table and the proxy answer from the spec alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profilers import onnx_info
from profilers.base import parse_shape


@dataclass(frozen=True)
class NetworkSpec:
    kinds: Mapping[str, Sequence[str]]  # block kinds per stage, e.g. {"enc1": ["T"], ...}
    config: Mapping[str, Any]  # the U-Net config (``UNetConfig.to_dict()``)
    shape: tuple[int, ...]  # the static input shape, NCHW
    label: str = ""  # a readable name, such as the arch string
    key: str = field(default="")  # a stable id for caches; default: a hash of kinds and config

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", parse_shape(self.shape))
        object.__setattr__(self, "kinds", {s: list(v) for s, v in self.kinds.items()})
        if not self.key:
            blob = json.dumps({"kinds": self.kinds, "config": dict(self.config)}, sort_keys=True)
            object.__setattr__(self, "key", "net:" + hashlib.sha256(blob.encode()).hexdigest()[:16])

    def count(self, kind: str) -> int:
        return sum(list(v).count(kind) for v in self.kinds.values())


def build_network(net: NetworkSpec, seed: int = 0):
    """The ``HybridUNet`` of ``net`` with seeded random weights, in eval mode."""
    import torch

    from blocks import HybridUNet, UNetConfig

    torch.manual_seed(seed)
    return HybridUNet(UNetConfig.from_dict(dict(net.config)), net.kinds).eval()


def export_network(net: NetworkSpec, path: str | os.PathLike[str], precision: str = "fp32", seed: int = 0) -> Path:
    """Export ``net`` to ``path`` at its static shape with ``ens.*`` metadata; ``int8`` is a Q/DQ graph."""
    from profilers.onnx_export import export_onnx

    path = Path(path)
    model = build_network(net, seed)
    if precision == "int8":
        from profilers.int8_graphs import build_int8

        build_int8(model, net.shape, path)
        _annotate(path, net)
        return path
    export_onnx(model, net.shape, path)
    _annotate(path, net)
    return path


def _annotate(path: Path, net: NetworkSpec) -> None:
    onnx_info.annotate(path, arch=net.label, arch_hash=net.key, block_kinds=net.kinds, config=dict(net.config))
