"""What the Q/DQ graph rewrites need to read an ONNX graph: its constants by name, each tensor's producer,
and the removal of what no longer feeds an output."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper


@dataclass
class GraphIndex:
    """Name lookups over one graph, taken once before a rewrite (a rewrite that adds nodes re-indexes)."""

    inits: dict[str, onnx.TensorProto]
    consts: dict[str, onnx.NodeProto]  # output name -> Constant node
    producer: dict[str, onnx.NodeProto]  # tensor name -> the node that writes it

    @classmethod
    def of(cls, graph: onnx.GraphProto) -> GraphIndex:
        return cls(
            inits={i.name: i for i in graph.initializer},
            consts={n.output[0]: n for n in graph.node if n.op_type == "Constant"},
            producer={o: n for n in graph.node for o in n.output},
        )

    def is_constant(self, name: str) -> bool:
        return name in self.inits or name in self.consts

    def value(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant node output ``name``, or None."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.consts.get(name)
        if node is None:
            return None
        for a in node.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
        return None


def prune_dead_nodes(model: onnx.ModelProto) -> tuple[int, int]:
    """Remove the nodes none of whose outputs reaches a graph output, then the initializers no node reads;
    returns (nodes, initializers) removed. Subgraphs (If/Loop bodies) count as readers of what they name."""
    g = model.graph
    outputs = {o.name for o in g.output}

    def sub_reads(n: onnx.NodeProto) -> set[str]:
        names: set[str] = set()
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                names |= {i for m in sub.node for i in m.input} | {sm for m in sub.node for sm in sub_reads(m)}
        return names

    nodes_before, inits_before = len(g.node), len(g.initializer)
    while True:
        read = outputs | {i for n in g.node for i in n.input} | {i for n in g.node for i in sub_reads(n)}
        keep = [n for n in g.node if any(o in read for o in n.output if o)]
        if len(keep) == len(g.node):
            break
        del g.node[:]
        g.node.extend(keep)
    inits = [i for i in g.initializer if i.name in read]
    del g.initializer[:]
    g.initializer.extend(inits)
    return nodes_before - len(g.node), inits_before - len(g.initializer)
