"""Channel LayerNorm on [B, C, H, W] maps, in Restormer's two variants."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of each pixel.

    ``withbias``: ``(x - mu) / sqrt(var + eps) * w + b`` (Restormer ``WithBias_LayerNorm``).
    ``biasfree``: ``x / sqrt(var + eps) * w`` (Restormer ``BiasFree_LayerNorm``; the mean is not removed).
    """

    def __init__(self, dim: int, variant: str = "withbias", eps: float = 1e-5) -> None:
        super().__init__()
        if variant not in ("withbias", "biasfree"):
            raise ValueError(f"unknown LayerNorm variant {variant!r}: use 'withbias' or 'biasfree'")
        self.variant = variant
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, dim, 1, 1)) if variant == "withbias" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            # NHWC F.layer_norm: ONNX LayerNormalization over the last axis, one fused kernel in ONNX Runtime,
            # TensorRT and QNN. Written out over axis 1 it exported as 9 ops whose two strided ReduceMeans
            # alone took 21% of the shipped INT8 graph's kernel time (tiny all-E deblur, 256², 2 threads);
            # in the Q/DQ graph ORT cancels the permutes against its NHWC QLinearConv transposes.
            y = F.layer_norm(x.permute(0, 2, 3, 1), (self.dim,), self.weight.view(-1), self.bias.view(-1), self.eps)
            return y.permute(0, 3, 1, 2)
        mu = x.mean(dim=1, keepdim=True)
        var = (x - mu).pow(2).mean(dim=1, keepdim=True)
        return x * torch.rsqrt(var + self.eps) * self.weight
