"""Element-wise ops as parameter-free modules: the residual sums of every block.

``x + branch`` written as ``self.residual(x, branch)`` computes and exports exactly the same (one ONNX
``Add``), but is a module a quantization toolkit can wrap: ``ens finalize --export onnx_int8`` puts a fake
quantizer on each sum (an NVIDIA ModelOpt custom quant module), so that ONNX Runtime fuses it into a
``QLinearAdd`` instead of adding two dequantized tensors in float.
"""

from __future__ import annotations

import torch
from torch import nn


class Add(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b
