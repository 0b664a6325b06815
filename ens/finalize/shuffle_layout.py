"""Write each up-sampler's pixel shuffle channels-last, the layout of ONNX Runtime's x86 integer convs.

ORT's NhwcTransformer runs every QLinearConv channels-last and wraps it in a Transpose pair, which its
transpose optimizer cancels across layout-agnostic ops (QLinearAdd, QLinearMul, Q/DQ, Concat). DepthToSpace is
written for NCHW, so each one kept a Transpose to NCHW before it and one back after it, and those spread into
the skip joins and residual sums around it (measured, tiny all-F INT8 network before this rewrite and
:mod:`profilers.unshuffle_fusion`: 36 Transposes, 10 ms of 79 ms of kernel time).

Here ``DepthToSpace`` becomes ``Transpose(to NHWC) -> Reshape -> Transpose -> Reshape -> Transpose(to NCHW)``:
the outer two cancel against ORT's own, and one 6-D transpose of 8-bit data is left. In CRD order (PyTorch's
pixel_shuffle) that transpose moves single bytes (it was slower than before: 5.5 ms for the last up-sampler),
so the conv that writes the shuffle's input has its output channels permuted to DCR order, where each output
pixel's channels stay together and the transpose moves whole rows. Both rewrites are exact: elements move, and
the conv's per-channel weight scales move with its channels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from profilers.onnx_graph import GraphIndex, attr, prune_dead_nodes, rewrite_conv_weight, set_attr

TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)


def channels_last_steps(c: int, h: int, w: int, r: int, mode: str) -> tuple[list[int], list[int], list[int]]:
    """(first reshape, permutation, final reshape) of DepthToSpace(r, ``mode``) on NHWC data whose NCHW shape is
    (N, c, h, w); batch 0 means "as the input" (ONNX Reshape). Channel orders (ONNX): CRD reads input channel
    ``k*r*r + i*r + j`` for output channel k at offset (i, j), DCR ``(i*r + j)*C + k``."""
    out = c // (r * r)
    if mode == "CRD":
        return [0, h, w, out, r, r], [0, 1, 4, 2, 5, 3], [0, h * r, w * r, out]
    if mode == "DCR":
        return [0, h, w, r, r, out], [0, 1, 3, 2, 4, 5], [0, h * r, w * r, out]
    raise ValueError(f"unknown DepthToSpace mode {mode!r}")


def crd_to_dcr_order(c: int, r: int) -> np.ndarray:
    """``order[n]``: the CRD channel that DCR channel n holds (C = c / r² output channels)."""
    return np.arange(c).reshape(c // (r * r), r * r).T.reshape(-1)


def _conv_writing(x: str, index: GraphIndex) -> onnx.NodeProto | None:
    """The group-1 conv whose output, through a per-tensor QuantizeLinear read by nothing else, is ``x``."""
    q = index.producer.get(x)
    if q is None or q.op_type != "QuantizeLinear" or not index.scalar_scale(q):
        return None
    conv = index.producer.get(q.input[0])
    if conv is None or conv.op_type != "Conv" or attr(conv, "group", 1) != 1 \
            or index.sole_reader(conv.output[0]) is not q:
        return None
    return conv


def shuffles_channels_last(src: str | Path, dst: str | Path | None = None) -> tuple[int, int]:
    """Rewrite ``src`` (in place unless ``dst``); returns (shuffles now channels-last, of them in DCR order)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
    g = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*g.value_info, *g.input]}
    index = GraphIndex.of(g)
    replace: dict[str, list[onnx.NodeProto]] = {}  # output of a DepthToSpace -> the nodes that replace it
    inits: list[onnx.TensorProto] = []
    dcr = 0
    for node in g.node:
        if node.op_type != "DepthToSpace":
            continue
        shape, mode, r = shapes.get(node.input[0], []), attr(node, "mode", "DCR"), attr(node, "blocksize")
        if len(shape) != 4 or not all(shape[1:]) or mode not in ("CRD", "DCR"):
            continue
        _, c, h, w = shape
        conv = _conv_writing(node.input[0], index) if mode == "CRD" else None
        if conv is not None and index.sole_reader(node.input[0]) is node:
            order = crd_to_dcr_order(c, r)
            new = rewrite_conv_weight(conv, index, lambda v, o=order: v[o], lambda v, o=order: v[o])
            if new is not None:
                inits.extend(new)
                set_attr(node, "mode", "DCR")
                mode = "DCR"
        dcr += mode == "DCR"
        first, perm, last = channels_last_steps(c, h, w, r, mode)
        tag = node.name or node.output[0]
        inits += [numpy_helper.from_array(np.array(first, np.int64), f"{tag}/nhwc_shape0"),
                  numpy_helper.from_array(np.array(last, np.int64), f"{tag}/nhwc_shape1")]
        replace[node.output[0]] = [
            helper.make_node("Transpose", [node.input[0]], [f"{tag}/nhwc"], name=f"{tag}/to_nhwc", perm=TO_NHWC),
            helper.make_node("Reshape", [f"{tag}/nhwc", f"{tag}/nhwc_shape0"], [f"{tag}/6d"], name=f"{tag}/split"),
            helper.make_node("Transpose", [f"{tag}/6d"], [f"{tag}/6d_moved"], name=f"{tag}/shuffle", perm=perm),
            helper.make_node("Reshape", [f"{tag}/6d_moved", f"{tag}/nhwc_shape1"], [f"{tag}/nhwc_out"],
                             name=f"{tag}/merge"),
            helper.make_node("Transpose", [f"{tag}/nhwc_out"], [node.output[0]], name=f"{tag}/to_nchw", perm=TO_NCHW),
        ]
    if replace:
        nodes: list[onnx.NodeProto] = []
        for n in g.node:
            nodes.extend(replace[n.output[0]] if n.op_type == "DepthToSpace" and n.output[0] in replace else [n])
        del g.node[:]
        g.node.extend(nodes)
        g.initializer.extend(inits)
        del g.value_info[:]
        prune_dead_nodes(model)
    if replace or dst is not None:
        onnx.save(model, str(dst or src))
    return len(replace), dcr
