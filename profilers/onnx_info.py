"""What a profiler can read from an ONNX file without running it.

- its static input shape, and whether it is a Q/DQ (INT8) graph;
- the ``ens.*`` metadata that ``ens`` writes next to the graph (the architecture string and
  hash, one block kind per block position, the U-Net configuration), so that the cache and the
  latency table can key a file by architecture without importing ``ens`` or ``search_spaces``;
- multiply-accumulates of Conv/ConvTranspose/MatMul/Gemm nodes (from ONNX shape inference) and the
  number of attention softmaxes, for the proxy.

Metadata keys (``metadata_props`` of the model, all strings)::

    ens.arch         canonical architecture string, e.g. enc:T,M,E|lat:M|dec:E,M,T|ref:E
    ens.arch_hash    its stable hash
    ens.block_kinds  JSON {stage: [kind, ...]} in blocks.unet.STAGES order
    ens.config       JSON of blocks.UNetConfig.to_dict()
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

META_PREFIX = "ens."
QDQ_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
)
# TorchScript export names block nodes /<stage>/<stage>.<i>/<kind>/...
_NODE_SLOT = re.compile(r"^/(?P<stage>[a-z0-9]+)/(?P=stage)\.(?P<i>\d+)/(?:choices/)?(?P<kind>[A-Z])/")


def _load(path: str | os.PathLike[str], with_weights: bool = False) -> onnx.ModelProto:
    """The model at ``path``; ``ValueError`` (not protobuf's DecodeError) when it is not ONNX."""
    try:
        return onnx.load(str(path), load_external_data=with_weights)
    except OSError:
        raise
    except Exception as exc:
        raise ValueError(f"{Path(path).name} is not a readable ONNX file ({type(exc).__name__})") from None


def input_name(path: str | os.PathLike[str]) -> str:
    """Name of the first graph input that is not an initializer."""
    model = _load(path)
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name not in inits:
            return inp.name
    raise ValueError(f"{path}: the graph has no input")


def input_shape(path: str | os.PathLike[str]) -> tuple[int | str, ...]:
    """Shape of the first graph input that is not an initializer; symbolic dims stay strings."""
    model = _load(path)
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)
    raise ValueError(f"{path}: the graph has no input")


def check_input_shape(path: str | os.PathLike[str], shape: Sequence[int]) -> None:
    """Raise ``ValueError`` when a static input shape of ``path`` differs from ``shape``."""
    got = input_shape(path)
    want = tuple(int(d) for d in shape)
    if len(got) != len(want) or any(isinstance(g, int) and g != w for g, w in zip(got, want, strict=False)):
        raise ValueError(
            f"{Path(path).name} takes inputs of shape {'x'.join(map(str, got))}, not {'x'.join(map(str, want))}"
        )


def graph_precision(path: str | os.PathLike[str]) -> str:
    """``int8`` for a Q/DQ (or QLinear/Integer-op) graph, ``fp16`` for float16 inputs, else ``fp32``."""
    model = _load(path)
    if any(n.op_type in QDQ_OPS for n in model.graph.node):
        return "int8"
    for inp in model.graph.input:
        if inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
            return "fp16"
    return "fp32"


# -- ens metadata -------------------------------------------------------------------------------
def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``ens.*`` metadata of ``path`` (JSON values decoded), without the prefix."""
    model = _load(path)
    out: dict[str, Any] = {}
    for p in model.metadata_props:
        if p.key.startswith(META_PREFIX):
            key = p.key[len(META_PREFIX) :]
            try:
                out[key] = json.loads(p.value) if key in ("block_kinds", "config") else p.value
            except json.JSONDecodeError:
                out[key] = p.value
    return out


def annotate(path: str | os.PathLike[str], **meta: Any) -> Path:
    """Write ``ens.<key>`` metadata into ``path`` in place (atomically); dicts/lists go as JSON."""
    path = Path(path)
    model = onnx.load(str(path))
    keep = [p for p in model.metadata_props if p.key[len(META_PREFIX) :] not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in meta.items():
        if value is None:
            continue
        text = json.dumps(value, sort_keys=False) if isinstance(value, (Mapping, list, tuple)) else str(value)
        model.metadata_props.append(onnx.StringStringEntryProto(key=META_PREFIX + key, value=text))
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def block_kinds_from_graph(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Block kinds per stage recovered from node names of a TorchScript export (fallback for files
    without metadata). Empty when the names carry no slot information."""
    model = _load(path)
    found: dict[tuple[str, int], str] = {}
    for n in model.graph.node:
        m = _NODE_SLOT.match(n.name)
        if m:
            found[(m["stage"], int(m["i"]))] = m["kind"]
    out: dict[str, list[str]] = {}
    for (stage, i), kind in sorted(found.items()):
        out.setdefault(stage, [])
        while len(out[stage]) < i:
            out[stage].append("?")
        out[stage].append(kind)
    return out


def block_kinds(path: str | os.PathLike[str]) -> dict[str, list[str]] | None:
    """Block kinds of an ens network: metadata first, node names second, ``None`` if neither."""
    meta = read_metadata(path)
    if "block_kinds" in meta:
        return {k: list(v) for k, v in meta["block_kinds"].items()}
    kinds = block_kinds_from_graph(path)
    return kinds or None


# -- counts for the proxy -----------------------------------------------------------------------
def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """Static shapes of every tensor: ONNX Runtime's symbolic shape inference (it follows the
    Shape/Gather/Slice arithmetic of TorchScript's ``chunk`` exports), else ONNX's own."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        if inferred is not None:
            return inferred
    except Exception:  # an op it does not know: fall back
        pass
    return onnx.shape_inference.infer_shapes(model)


def _shape_map(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = _infer(model)
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(d.dim_value for d in dims)
    for init in inferred.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def graph_counts(path: str | os.PathLike[str]) -> dict[str, int]:
    """``{"macs", "softmax", "conv", "matmul", "nodes", "unknown_shapes"}`` of a static graph.

    MACs: Conv/ConvTranspose = out elements x (C_in / groups) x kernel area; MatMul = out
    elements x K; Gemm = M x N x K. Element-wise ops are not counted (as ``blocks.stats``).
    ``unknown_shapes`` counts Conv/MatMul nodes whose shapes inference could not resolve.
    """
    model = _load(path, with_weights=False)
    shapes = _shape_map(model)
    macs = softmax = conv = matmul = unknown = 0
    for n in model.graph.node:
        op = n.op_type
        if op == "Softmax":
            softmax += 1
        elif op in ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger"):
            conv += 1
            w_idx = 3 if op == "QLinearConv" else 1
            out = shapes.get(n.output[0])
            w = shapes.get(n.input[w_idx]) if len(n.input) > w_idx else None
            if out is None or w is None:
                unknown += 1
                continue
            if op == "ConvTranspose":  # weight [C_in, C_out/g, k...]: each input pixel feeds k... outputs
                inp = shapes.get(n.input[0])
                if inp is None:
                    unknown += 1
                    continue
                macs += int(np.prod(inp)) * int(np.prod(w[1:]))
            else:  # weight [C_out, C_in/g, k...]
                macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif op in ("MatMul", "QLinearMatMul", "MatMulInteger"):
            matmul += 1
            a_idx = 0
            out = shapes.get(n.output[0])
            a = shapes.get(n.input[a_idx])
            if out is None or a is None:
                unknown += 1
                continue
            macs += int(np.prod(out)) * int(a[-1])
        elif op == "Gemm":
            matmul += 1
            out = shapes.get(n.output[0])
            a = shapes.get(n.input[0])
            if out is None or a is None:
                unknown += 1
                continue
            trans_a = any(at.name == "transA" and at.i for at in n.attribute)
            k = a[0] if trans_a else a[-1]
            macs += int(np.prod(out)) * int(k)
    return {
        "macs": int(macs),
        "softmax": softmax,
        "conv": conv,
        "matmul": matmul,
        "nodes": len(model.graph.node),
        "unknown_shapes": unknown,
    }
