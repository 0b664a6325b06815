"""Fold each ``conv -> pixel_unshuffle`` of an exported graph into one strided conv.

The U-Net's down-sampler is ``conv3x3(c, c/2) + PixelUnshuffle(2)`` (Restormer's), which PyTorch exports as
``Conv -> Reshape -> Transpose -> Reshape``. The shuffle is a 6-D transpose that neither ONNX Runtime's
blocked float convs (NCHWc) nor its channels-last integer convs run in their own layout, so it costs layout
conversions around it. A conv of kernel k and padding p followed by unshuffle(r) is exactly one conv of kernel
``k + r - 1``, stride r, the same padding: output channel ``c*r*r + i*r + j`` is channel c's kernel shifted
by (i, j). It does 16/9 of the conv's multiply-adds (k=3, r=2) and drops the shuffle; measured on this CPU
(tiny preset, 256²): the all-E network 1.20x faster in FP32, the all-F network 1.35x in INT8, with the pixel
shuffles of :mod:`ens.finalize.shuffle_layout`.

A fake-quant export puts a per-tensor Q/DQ pair between the conv and the shuffle; the pair moves to the strided
conv's output unchanged (it acts on each element alike), and the conv's per-channel weight scales are repeated
for each of its r*r shifted copies, so an INT8 graph computes the same integers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from profilers.onnx_graph import GraphIndex, attr, prune_dead_nodes, rewrite_conv_weight, set_attr

#: PyTorch's pixel_unshuffle export: Reshape to (N, C, H/r, r, W/r, r), this permutation, Reshape to (N, C*r*r, ...)
UNSHUFFLE_PERM = (0, 1, 3, 5, 2, 4)


def unshuffle_chain(first: onnx.NodeProto, index: GraphIndex) -> tuple[list[onnx.NodeProto], int] | None:
    """The three nodes of a pixel_unshuffle export that starts at Reshape ``first``, and its factor r."""
    if first.op_type != "Reshape":
        return None
    s1 = index.value(first.input[1])
    tr = index.sole_reader(first.output[0])
    if s1 is None or s1.size != 6 or tr is None or tr.op_type != "Transpose" \
            or tuple(attr(tr, "perm", ())) != UNSHUFFLE_PERM:
        return None
    last = index.sole_reader(tr.output[0])
    s3 = index.value(last.input[1]) if last is not None and last.op_type == "Reshape" else None
    n, c, h, r, w, r2 = (int(v) for v in s1)
    if r != r2 or s3 is None or [int(v) for v in s3][1:] != [c * r * r, h, w]:
        return None
    return [first, tr, last], r


def strided_kernel(w: np.ndarray, r: int) -> np.ndarray:
    """The (C*r*r, Cin, k+r-1, k+r-1) kernel of ``conv(w) -> pixel_unshuffle(r)`` as one stride-r conv."""
    cout, cin, k, _ = w.shape
    out = np.zeros((cout * r * r, cin, k + r - 1, k + r - 1), w.dtype)
    for i in range(r):
        for j in range(r):
            out[i * r + j::r * r, :, i:i + k, j:j + k] = w
    return out


def _conv_feeding(x: str, index: GraphIndex) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """(conv, last node) when tensor ``x`` is a plain conv's output, directly or through a per-tensor Q/DQ pair,
    and read by nothing else on the way."""
    last = index.producer.get(x)
    node = index.behind_qdq(x)
    if node is None or node.op_type != "Conv" or attr(node, "group", 1) != 1 \
            or set(attr(node, "strides", [1])) != {1} or set(attr(node, "dilations", [1])) != {1} \
            or attr(node, "auto_pad", "NOTSET") != "NOTSET":
        return None
    k = attr(node, "kernel_shape")
    if k is None or len(k) != 2 or k[0] != k[1]:
        return None
    return node, last


def fuse_unshuffles(src: str | Path, dst: str | Path | None = None) -> int:
    """Rewrite ``src`` (in place unless ``dst``); returns how many down-samplers are now one strided conv."""
    model = onnx.load(str(src))
    g = model.graph
    index = GraphIndex.of(g)
    drop: set[tuple[str, str]] = set()  # (op type, output) of each shuffle node
    fused = 0
    for node in g.node:
        chain = unshuffle_chain(node, index)
        if chain is None or index.sole_reader(node.input[0]) is not node:
            continue
        nodes, r = chain
        found = _conv_feeding(node.input[0], index)
        if found is None:
            continue
        conv, last = found
        new = rewrite_conv_weight(conv, index, lambda w, r=r: strided_kernel(w, r), lambda v, r=r: np.repeat(v, r * r))
        if new is None:
            continue
        g.initializer.extend(new)
        set_attr(conv, "kernel_shape", [attr(conv, "kernel_shape")[0] + r - 1] * 2)
        set_attr(conv, "strides", [r, r])
        drop.update((n.op_type, n.output[0]) for n in nodes)
        last.output[0] = nodes[-1].output[0]
        fused += 1
    if fused:
        keep = [n for n in g.node if (n.op_type, n.output[0]) not in drop]
        del g.node[:]
        g.node.extend(keep)
        del g.value_info[:]  # shapes inside the fused region changed
        prune_dead_nodes(model)
    if fused or dst is not None:  # an export with no down-sampler is not written twice
        onnx.save(model, str(dst or src))
    return fused
