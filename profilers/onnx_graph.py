"""What the ONNX graph rewrites need: a graph's constants by name, each tensor's producer and readers, node
attributes, a conv's weight rewritten with its quantizer, and the removal of what no longer feeds an output."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass
class GraphIndex:
    """Name lookups over one graph, taken once before a rewrite (a rewrite that adds nodes re-indexes)."""

    inits: dict[str, onnx.TensorProto]
    consts: dict[str, onnx.NodeProto]  # output name -> Constant node
    producer: dict[str, onnx.NodeProto]  # tensor name -> the node that writes it
    readers: dict[str, list[onnx.NodeProto]]  # tensor name -> the nodes that read it

    @classmethod
    def of(cls, graph: onnx.GraphProto) -> GraphIndex:
        readers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for i in n.input:
                readers.setdefault(i, []).append(n)
        return cls(
            inits={i.name: i for i in graph.initializer},
            consts={n.output[0]: n for n in graph.node if n.op_type == "Constant"},
            producer={o: n for n in graph.node for o in n.output},
            readers=readers,
        )

    def sole_reader(self, name: str) -> onnx.NodeProto | None:
        """The one node that reads tensor ``name``, or None (no reader, or several)."""
        found = self.readers.get(name, [])
        return found[0] if len(found) == 1 else None

    def scalar_scale(self, q_or_dq: onnx.NodeProto) -> bool:
        """True for a QuantizeLinear/DequantizeLinear with one constant scale (per-tensor)."""
        scale = self.value(q_or_dq.input[1]) if len(q_or_dq.input) > 1 else None
        return scale is not None and scale.size == 1

    def behind_qdq(self, x: str) -> onnx.NodeProto | None:
        """The node that writes tensor ``x``, looking through one per-tensor ``Q -> DQ`` pair on the way (None when
        that pair's tensors have other readers). The node's own output may still have other readers."""
        node = self.producer.get(x)
        if node is None or node.op_type != "DequantizeLinear":
            return node
        q = self.producer.get(node.input[0])
        if not (self.scalar_scale(node) and q is not None and q.op_type == "QuantizeLinear"
                and self.scalar_scale(q) and self.sole_reader(q.output[0]) is node):
            return None
        node = self.producer.get(q.input[0])
        return node if node is not None and self.sole_reader(node.output[0]) is q else None

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


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """Attribute ``name`` of ``node`` (strings decoded), or ``default``."""
    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def set_attr(node: onnx.NodeProto, name: str, value: Any) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def _per_tensor(q_or_dq: onnx.NodeProto, index: GraphIndex) -> bool:
    """A Q/DQ whose scale and zero point are scalars (ModelOpt exports a 1-output conv's weight scale so)."""
    values = [index.value(n) for n in q_or_dq.input[1:] if n]
    return all(v is not None and v.ndim == 0 for v in values)


def rewrite_conv_weight(conv: onnx.NodeProto, index: GraphIndex, weight_fn: Callable[[np.ndarray], np.ndarray],
                        channel_fn: Callable[[np.ndarray], np.ndarray]) -> list[onnx.TensorProto] | None:
    """Give ``conv`` the weight ``weight_fn(w)`` and output-channel vectors (bias, per-channel weight scales and
    zero points) ``channel_fn(v)``, as new initializers (returned; the caller adds them to the graph).

    The weight is a constant, or ``[constant ->] QuantizeLinear -> DequantizeLinear(axis 0, or per-tensor)`` read
    by ``conv`` alone (a fake-quant export); the bias, if any, a constant. Returns None, changing nothing, for any other
    form."""
    new: list[onnx.TensorProto] = []

    def fresh(name: str, fn: Callable[[np.ndarray], np.ndarray]) -> str:
        value = index.value(name)
        if value.ndim == 0:  # a per-tensor scale or zero point (a 1-element vector is a 1-output conv's)
            return name
        new.append(numpy_helper.from_array(np.ascontiguousarray(fn(value)), f"{conv.name}/{name}/rewritten"))
        return new[-1].name

    if len(conv.input) > 2 and conv.input[2] and not index.is_constant(conv.input[2]):
        return None
    w = conv.input[1]
    if index.is_constant(w):
        conv.input[1] = fresh(w, weight_fn)
    else:
        dq = index.producer.get(w)
        if dq is None or dq.op_type != "DequantizeLinear" or index.sole_reader(w) is not conv \
                or not (attr(dq, "axis", 1) == 0 or _per_tensor(dq, index)):
            return None
        q = index.producer.get(dq.input[0])
        if q is None:
            if not index.is_constant(dq.input[0]):
                return None
        elif (q.op_type != "QuantizeLinear" or not index.is_constant(q.input[0])
              or not (attr(q, "axis", 1) == 0 or _per_tensor(q, index))
              or list(q.input[1:]) != list(dq.input[1:]) or index.sole_reader(dq.input[0]) is not dq):
            return None
        params = [fresh(n, channel_fn) for n in dq.input[1:]]
        if q is not None:
            q.input[:] = [fresh(q.input[0], weight_fn), *params]
        else:
            dq.input[0] = fresh(dq.input[0], weight_fn)
        dq.input[1:] = params
    if len(conv.input) > 2 and conv.input[2]:
        conv.input[2] = fresh(conv.input[2], channel_fn)
    return new
