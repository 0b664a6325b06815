"""Element-wise ops as parameter-free modules: the residual sums, gate products, sigmoids and skip joins.

``x + branch`` written as ``self.residual(x, branch)`` computes and exports exactly the same (one ONNX
``Add``; likewise ``Mul``, ``Sigmoid`` and ``Concat``), but is a module a quantization toolkit can wrap: ``ens finalize
--export onnx_int8`` puts a fake quantizer on each one's output (an NVIDIA ModelOpt custom quant module), so
that ONNX Runtime fuses it into a ``QLinearAdd`` / ``QLinearMul`` / ``QLinearSigmoid`` / ``QLinearConcat``
instead of computing in float between a dequantize and a quantize. An instance stands for one tensor of the
graph: use one per call site (a shared instance would share one quantizer between tensors of different ranges).
"""

from __future__ import annotations

import torch
from torch import nn


class Add(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class Mul(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


class Concat(nn.Module):
    """``torch.cat([a, b], dim=1)``: the U-Net's skip joins (one ONNX ``Concat``; ``QLinearConcat`` in INT8)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], dim=1)


class Sigmoid(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


#: every element-wise module above, the types a quantization toolkit registers
ELEMENTWISE: tuple[type[nn.Module], ...] = (Add, Mul, Sigmoid, Concat)
