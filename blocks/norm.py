"""Channel LayerNorm on [B, C, H, W] maps, in Restormer's two variants."""

from __future__ import annotations

import torch
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
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, dim, 1, 1)) if variant == "withbias" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(dim=1, keepdim=True)
        var = (x - mu).pow(2).mean(dim=1, keepdim=True)
        if self.bias is None:
            return x * torch.rsqrt(var + self.eps) * self.weight
        return (x - mu) * torch.rsqrt(var + self.eps) * self.weight + self.bias
