"""Rewrite the activation Q/DQ pairs of a Q/DQ ONNX from signed to unsigned 8-bit, for ONNX Runtime CPU.

ModelOpt (TensorRT's convention) exports activations as INT8 with zero point 0. ONNX Runtime's x86
kernels want UINT8 activations: its own S8-to-U8 rewrite only touches a QuantizeLinear with a single
DequantizeLinear consumer, so a conv output that feeds several ops keeps an S8 Q next to U8 input DQs,
and the QLinearConv fusion rejects the mismatch (the conv stays DQ -> float Conv -> Q).

The rewrite is exact: with ``q_s8 = clamp(round(x / s) + z, -128, 127)``,
``q_u8 = clamp(round(x / s) + z + 128, 0, 255) = q_s8 + 128``, and ``(q_u8 - (z + 128)) * s`` is the
same dequantized value. Weights (a DequantizeLinear of a constant) stay S8, which is what the
U8 x S8 kernels take.

The signed zero points the rewrite replaces are removed with whatever else no longer feeds the graph
(:func:`prune_dead_nodes`): left in, ONNX Runtime turned each such Constant into an initializer at load and
printed a warning ("Removing initializer ... It is not used by any node") for every one of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from profilers.onnx_graph import GraphIndex, prune_dead_nodes


def activations_to_uint8(src: Path, dst: Path | None = None) -> int:
    """Rewrite ``src`` (in place unless ``dst``); returns how many Q/DQ nodes were changed."""
    model = onnx.load(str(src))
    g = model.graph
    index = GraphIndex.of(g)
    renamed: dict[str, str] = {}
    u8_outputs: set[str] = set()
    changed = 0
    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) < 3:
            continue
        if n.op_type == "QuantizeLinear":
            if index.is_constant(n.input[0]):
                continue
        else:
            p = index.producer.get(n.input[0])
            if p is None or p.op_type != "QuantizeLinear" or index.is_constant(p.input[0]):
                continue  # a weight DQ (constant input) stays signed
        zp = index.value(n.input[2])
        if zp is None or zp.dtype != np.int8:
            continue
        if n.input[2] not in renamed:
            name = f"{n.input[2]}_u8"
            g.initializer.append(numpy_helper.from_array((zp.astype(np.int16) + 128).astype(np.uint8), name))
            renamed[n.input[2]] = name
        n.input[2] = renamed[n.input[2]]
        if n.op_type == "QuantizeLinear":
            u8_outputs.add(n.output[0])
        changed += 1
    for vi in g.value_info:
        if vi.name in u8_outputs:
            vi.type.tensor_type.elem_type = TensorProto.UINT8
    prune_dead_nodes(model)
    onnx.save(model, str(dst or src))
    return changed

