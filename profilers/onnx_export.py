"""Export a torch module to ONNX at one fixed input shape, and check it against PyTorch.

One static shape per file: dynamic H/W silently bakes in the example shape on torch 2.13, and
every profiler measures one shape anyway.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

DEFAULT_OPSET = 17


def export_onnx(
    model: nn.Module,
    input_shape: Sequence[int],
    path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    dynamo: bool = False,
) -> Path:
    """Write ``model`` (in eval mode) to ``path`` for inputs of ``input_shape``; atomic.

    The TorchScript exporter (``dynamo=False``) is the default: it is ~7x faster here, supports
    opset 17, and is the path NVIDIA ModelOpt's Q/DQ export uses. Only the first output is named.
    Each ``conv -> pixel_unshuffle`` is written as one strided conv (:mod:`profilers.unshuffle_fusion`).
    """
    from profilers.unshuffle_fusion import fuse_unshuffles

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    x = torch.rand(*input_shape)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x,),
                tmp,
                input_names=["input"],
                output_names=["output"],
                opset_version=opset,
                dynamo=dynamo,
            )
        fuse_unshuffles(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        model.train(was_training)
    return path


def op_types(path: str | os.PathLike[str]) -> set[str]:
    """Every op type in the graph, including those inside sub-graphs."""
    model = onnx.load(str(path))
    found: set[str] = set()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            found.add(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return found


def run_onnx(path: str | os.PathLike[str], x: np.ndarray, threads: int = 1) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def max_abs_error(model: nn.Module, path: str | os.PathLike[str], x: torch.Tensor) -> float:
    """max |ORT(path)(x) - model(x)| over every element, model in eval mode."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        ref = model(x)
    model.train(was_training)
    if isinstance(ref, tuple):
        ref = ref[0]
    got = run_onnx(path, x.numpy())
    return float(np.abs(got - ref.numpy()).max())
