"""Give each one-channel gate map of an exported graph as many channels as the features it gates.

EFM's degradation gate (QDR's LDG) is ``f * sigmoid(conv1x1(h, 1))``: a [N, 1, H, W] map broadcast over f's C
channels. ONNX Runtime runs that broadcast ``QLinearMul`` far slower than an element-wise one (per-node profile
of the tiny all-F INT8 network at 256²: the ref block's gate product 2.9 ms against 0.5 ms for its SimpleGate
product of the same size), and the one-output conv before it is a poor fit for its 1x1 kernels too. The conv
with its single weight row repeated C times computes the same map on every channel: ``f * m`` element-wise,
the same values. In a fake-quant export the per-tensor Q/DQ pairs on the map act on each element alike, and
the conv's per-channel weight scale is repeated with its row, so an INT8 graph computes the same integers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from profilers.onnx_graph import GraphIndex, attr, prune_dead_nodes, rewrite_conv_weight


def gate_conv(x: str, index: GraphIndex) -> onnx.NodeProto | None:
    """The one-output-channel 1x1 conv behind ``x = sigmoid(conv(h))``, Q/DQ pairs allowed on either side, when
    every tensor on the way has that chain's next node as its only reader."""
    if index.sole_reader(x) is None:
        return None
    sig = index.behind_qdq(x)
    if sig is None or sig.op_type != "Sigmoid" or index.sole_reader(sig.input[0]) is not sig:
        return None
    conv = index.behind_qdq(sig.input[0])
    if conv is None or conv.op_type != "Conv" or attr(conv, "group", 1) != 1:
        return None
    w, dq = index.value(conv.input[1]), index.producer.get(conv.input[1])
    if w is None and dq is not None:  # a fake-quant weight: the constant behind its Q/DQ pair
        q = index.producer.get(dq.input[0])
        w = index.value(q.input[0] if q is not None else dq.input[0])
    if w is None or w.ndim != 4 or w.shape[0] != 1 or w.shape[2:] != (1, 1):
        return None
    return conv


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Every tensor's static dims. ONNX's own inference loses the channel count at the chunk's Slice (its bounds
    are computed from Shape), so this uses ONNX Runtime's symbolic inference."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    return {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}


def _channels(name: str, shapes: dict[str, list[int | None]]) -> int | None:
    dims = shapes.get(name)
    return dims[1] if dims is not None and len(dims) == 4 else None


def expand_gate_maps(src: str | Path, dst: str | Path | None = None) -> int:
    """Rewrite ``src`` (in place unless ``dst``); returns how many gate products are now element-wise."""
    model = onnx.load(str(src))
    g = model.graph
    index = GraphIndex.of(g)
    found = [(node, j, conv) for node in g.node if node.op_type == "Mul" and len(node.input) == 2
             for j in (0, 1) if (conv := gate_conv(node.input[j], index)) is not None]
    shapes = _shapes(model) if found else {}
    expanded = 0
    for node, j, conv in found:
        gate, other = node.input[j], node.input[1 - j]
        c = _channels(other, shapes)
        if not c or c == 1 or _channels(gate, shapes) != 1 or shapes[gate][2:] != shapes[other][2:]:
            continue
        new = rewrite_conv_weight(conv, index, lambda w, c=c: np.repeat(w, c, axis=0), lambda v, c=c: np.repeat(v, c))
        if new is None:
            continue
        g.initializer.extend(new)
        expanded += 1
    if expanded:
        del g.value_info[:]  # the map's shapes changed
        prune_dead_nodes(model)
    if expanded or dst is not None:
        onnx.save(model, str(dst or src))
    return expanded
