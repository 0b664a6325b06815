"""Restormer's transformer block: MDTA attention and GDFN feed-forward.

    x = x + MDTA(LN(x))
    x = x + GDFN(LN(x))

MDTA (multi-Dconv head transposed attention): ``q, k, v = DW3x3(1x1(x, 3C))``; q and k are
L2-normalised over the H*W axis; per head the attention is a (C/h) x (C/h) matrix
``softmax(q k^T * temperature)``, so its cost is linear in the number of pixels.
GDFN (gated-Dconv feed-forward): ``1x1(C, 2h) -> DW3x3 -> split -> gelu(x1) * x2 -> 1x1(h, C)``
with ``h = int(C * expansion)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from blocks.norm import LayerNorm2d
from blocks.ops import Add


class MDTA(nn.Module):
    def __init__(self, dim: int, heads: int = 1, bias: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"MDTA: dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        # [B, C, H, W] -> [B, heads, C/heads, H*W]
        q = F.normalize(q.reshape(b, self.heads, c // self.heads, h * w), dim=-1)
        k = F.normalize(k.reshape(b, self.heads, c // self.heads, h * w), dim=-1)
        v = v.reshape(b, self.heads, c // self.heads, h * w)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.temperature, dim=-1)
        out = (attn @ v).reshape(b, c, h, w)
        return self.project_out(out)


class GDFN(nn.Module):
    def __init__(self, dim: int, expansion: float = 2.66, bias: bool = False) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class TransformerBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        heads: int = 1,
        ffn_expansion: float = 2.66,
        bias: bool = False,
        layernorm: str = "withbias",
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim, layernorm)
        self.attn = MDTA(dim, heads, bias)
        self.norm2 = LayerNorm2d(dim, layernorm)
        self.ffn = GDFN(dim, ffn_expansion, bias)
        self.add1, self.add2 = Add(), Add()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.add1(x, self.attn(self.norm1(x)))
        return self.add2(x, self.ffn(self.norm2(x)))
