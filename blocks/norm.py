"""Channel LayerNorm on [B, C, H, W] maps, in Restormer's two variants, or none (``channel_norm``)."""

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


#: the norms a block may be built with (``layernorm=`` of every block kind)
NORM_VARIANTS: tuple[str, ...] = ("withbias", "biasfree", "none")


def channel_norm(dim: int, variant: str = "withbias") -> nn.Module:
    """``LayerNorm2d(dim, variant)``, or for ``"none"`` no norm at all (an identity).

    ``none`` is for blocks whose norm only feeds 1x1 convolutions with a bias (EFM): a per-channel affine there
    is redundant with the convs' weights and bias, so dropping the norm loses only the per-pixel statistics, and
    the deployed graph loses its LayerNormalizations, float islands between INT8 convs (the tiny all-E network
    without them: INT8 65.7 -> 45.9 ms, FP32 101.3 -> 71.3 ms, ORT CPU, 256², 2 threads).
    """
    if variant == "none":
        return nn.Identity()
    if variant not in NORM_VARIANTS:
        raise ValueError(f"unknown norm {variant!r}: use one of {', '.join(NORM_VARIANTS)}")
    return LayerNorm2d(dim, variant)
