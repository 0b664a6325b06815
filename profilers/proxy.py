"""``proxy``: the ENS paper's latency proxy (how many transformer blocks) and MACs. Instant.

It is not a time and never pretends to be one: ``device="proxy"``, ``details["source"] ==
"proxy"``, ``details["unit"] == "transformer blocks"``, and ``median_ms``/``p90_ms`` both hold
that count (so a study can minimise it like a latency), with ``runs == 0``.

Both numbers are read from the ONNX file itself, so the proxy keeps the profiler protocol:

- transformer blocks: from the ``ens.block_kinds`` metadata when ``ens`` exported the file
  (exact); otherwise the number of ``Softmax`` nodes, since each MDTA attention has exactly one
  softmax and neither the EFM nor the Mamba block has any (``details["count_from"]`` says which);
- MACs: Conv/ConvTranspose/MatMul/Gemm from ONNX shape inference
  (:func:`profilers.onnx_info.graph_counts`), the convention of ``blocks.stats.count_macs``.

``profile(network)`` gives the same numbers from the network's block kinds (exact) and a torch MAC count,
without exporting anything.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from profilers import onnx_info
from profilers.base import Profiler, format_shape, parse_shape
from profilers.errors import MeasurementError
from profilers.result import PROXY, LatencyResult

UNIT = "transformer blocks"


class ProxyProfiler(Profiler):
    name = "proxy"
    precisions = ("fp32", "fp16", "int8")
    default_precision = "fp32"
    predicts = True
    unit = "count"

    def __init__(self, kind: str = "T") -> None:
        self.kind = kind

    @property
    def device(self) -> str:
        return "proxy"

    def profile(self, net, precision: str | None = None, **_: Any) -> LatencyResult:
        from blocks.stats import count_macs, count_params
        from profilers.networks import build_network

        precision = self._precision(precision)
        model = build_network(net)
        n = net.count(self.kind)
        macs = count_macs(model, net.shape)
        return self._result(n, {"count_from": "block kinds", "macs": int(macs), "gmacs": macs / 1e9,
                                "params": count_params(model), **({"arch": net.label} if net.label else {})},
                            net.shape, precision)

    def _result(self, n: int, details: dict[str, Any], shape: tuple[int, ...], precision: str) -> LatencyResult:
        return LatencyResult(
            median_ms=float(n),
            p90_ms=float(n),
            runs=0,
            device=self.device,
            details={"source": PROXY, "unit": UNIT, "note": "a count, not a time", "transformer_blocks": int(n),
                     **details, "input_shape": format_shape(shape)},
            profiler=self.spec,
            input_shape=shape,
            precision=precision,
        )

    def measure(
        self,
        onnx_path: str | os.PathLike[str],
        input_shape: Sequence[int],
        precision: str | None = None,
    ) -> LatencyResult:
        shape = parse_shape(input_shape)
        precision = self._precision(precision)
        try:
            onnx_info.check_input_shape(onnx_path, shape)
            counts = onnx_info.graph_counts(onnx_path)
        except (OSError, ValueError) as exc:
            raise MeasurementError(f"proxy: cannot read {onnx_path}: {exc}") from None
        kinds = onnx_info.read_metadata(onnx_path).get("block_kinds")
        if kinds:
            n = sum(list(v).count(self.kind) for v in kinds.values())
            count_from = "ens.block_kinds metadata"
        else:
            n = counts["softmax"]
            count_from = "Softmax nodes (one per MDTA attention)"
        return self._result(n, {"count_from": count_from, "macs": counts["macs"], "gmacs": counts["macs"] / 1e9,
                                "softmax_nodes": counts["softmax"], "conv_nodes": counts["conv"],
                                "matmul_nodes": counts["matmul"], "unresolved_shapes": counts["unknown_shapes"]},
                            shape, precision)
