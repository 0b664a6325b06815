"""The INT8 graph that ``ens finalize --export onnx_int8`` ships, built for timing from any network.

Same ModelOpt Q/DQ placement (``placement_for("onnx_int8")``: conv inputs and outputs, residual sums, layer
scales folded), the same S8 -> U8 activation rewrite (without it 20 of the tiny all-E network's 74 convs
stayed float in ONNX Runtime: every conv whose output feeds two ops), and the same weight range (7 bits where
this CPU's ONNX Runtime saturates INT8 pairs) as finalize, with ranges max-calibrated on two random images:
latency depends on the graph, not on the values. ``ens`` registers it with :mod:`profilers.int8_graphs`, so
``--precision int8`` times this graph.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch

TARGET = "onnx_int8"


def export_deployed_int8(model: torch.nn.Module, shape: tuple[int, ...], path: Path) -> None:
    from ens.finalize.export import export_int8
    from ens.finalize.qat import placement_for, quantize_model, weight_bits_for
    from ens.finalize.targets import get_target

    placement = placement_for(TARGET)
    g = torch.Generator().manual_seed(0)
    calib = [torch.rand(shape, generator=g) for _ in range(2)]
    with warnings.catch_warnings():  # ModelOpt's note that transformers (for HF models) is not installed
        warnings.filterwarnings("ignore", message=".*transformers package.*")
        qmodel = quantize_model(copy.deepcopy(model).eval(), calib, placement=placement,
                                weight_bits=weight_bits_for(TARGET, placement))
    export_int8(qmodel, shape, path, uint8_activations=get_target(TARGET).uint8_activations(placement))
