"""INT8 (Q/DQ) ONNX for latency measurement: ONNX Runtime static quantization on random data.

Latency does not depend on the values of weights or activations, only on the graph, so random
calibration data is enough to *time* an INT8 model; it is not a way to ship one (``ens finalize``
does QAT for that). ``quant_pre_process`` runs with ``skip_symbolic_shape=True``, which attention
graphs need with onnxruntime 1.31.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from profilers import onnx_info
from profilers.base import parse_shape
from profilers.errors import MeasurementError, ProfilerUnavailable


def quantize_int8(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    input_shape: Sequence[int],
    calibration_batches: int = 2,
    per_channel: bool = False,
    seed: int = 0,
) -> Path:
    """Write a QDQ INT8 copy of ``src`` to ``dst`` (atomically) and return ``dst``."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise ProfilerUnavailable(f"onnxruntime.quantization does not import: {exc}") from None
    shape = parse_shape(input_shape)
    src, dst = Path(src), Path(dst)
    name = onnx_info.input_name(src)
    rng = np.random.default_rng(seed)
    batches = [{name: rng.random(shape, dtype=np.float32)} for _ in range(max(1, calibration_batches))]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self):
            return next(self._it, None)

    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ens-quant-", dir=dst.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        out = Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre),
                str(out),
                _Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
            )
        except Exception as exc:  # onnxruntime raises many types here
            raise MeasurementError(f"INT8 quantization of {src.name} failed: {exc}") from None
        meta = onnx_info.read_metadata(src)
        if meta:
            onnx_info.annotate(out, **meta)
        os.replace(out, dst)
    return dst
