"""Move each DequantizeLinear after the pixel shuffles it feeds, so that they run on 8-bit data.

A fake-quant export puts the conv output's Q/DQ right after the conv, so an up-sampler reads
``QLinearConv -> DequantizeLinear -> DepthToSpace`` and shuffles float data; ONNX Runtime's own Q/DQ
propagation does not move a DQ past DepthToSpace (measured: tiny all-E network, 3 float DepthToSpace nodes,
4% of the INT8 graph's kernel time). The skip join after it then sees one float input, and stays a float
Concat instead of a QLinearConcat.

A pixel shuffle (DepthToSpace, SpaceToDepth) only moves elements, and a per-tensor dequantize acts on each
element alike, so ``DepthToSpace(DQ(q)) == DQ(DepthToSpace(q))`` exactly: the rewrite changes no value.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper

from profilers.onnx_graph import GraphIndex, prune_dead_nodes

#: element-moving ops a per-tensor DequantizeLinear commutes with
MOVERS = ("DepthToSpace", "SpaceToDepth")


def dequantize_after_movers(src: Path, dst: Path | None = None) -> int:
    """Rewrite ``src`` (in place unless ``dst``); returns how many ops now run on quantized data."""
    model = onnx.load(str(src))
    g = model.graph
    index = GraphIndex.of(g)
    moved = 0
    nodes: list[onnx.NodeProto] = []
    for n in g.node:
        nodes.append(n)
        dq = index.producer.get(n.input[0]) if n.op_type in MOVERS else None
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        scale = index.value(dq.input[1])
        if scale is None or scale.size != 1:  # per-channel: the scales would have to move too
            continue
        out = n.output[0]
        n.input[0] = dq.input[0]
        n.output[0] = f"{out}_q"
        nodes.append(helper.make_node("DequantizeLinear", [n.output[0], *dq.input[1:]], [out],
                                      name=f"{n.name}/DequantizeLinear_moved",
                                      **{a.name: helper.get_attribute_value(a) for a in dq.attribute}))
        moved += 1
    if moved:  # each mover's output name is now made by its new DQ (same float tensor); an old DQ may be dead
        del g.node[:]
        g.node.extend(nodes)
        prune_dead_nodes(model)
    onnx.save(model, str(dst or src))
    return moved
