"""Vision state-space block (Mamba-2 SSD form), a drop-in surrogate for a TransformerBlock of the same width.

``MambaBlock`` maps [B, C, H, W] -> [B, C, H, W]. It is the cheaper, *parallel* variant of MambaIR's
VSSBlock (LN -> in-proj -> DW conv -> SiLU -> multi-direction scan -> gate -> out-proj, then an FFN):
one LayerNorm and one in-projection feed both the scan branch and a gated-GELU MLP branch, and one
out-projection reads both, with a single residual::

    z, u, f1, f2 = 1x1(LN(x))                                       # C -> inner, inner, hidden, hidden
    u = silu(DW3x3(u));   B_k, C_k, dt_k = 1x1(u)                    # per scan direction k
    y_k = SSD_k(u_k) + D u_k                                          # heads of u split over directions
    x = x + 1x1(cat[ y * silu(z),  gelu(f1) * f2 ])                   # inner + hidden -> C

The heads (one scalar decay each, ``head_dim`` channels) are split evenly over the scan directions, so
every direction scans only its own heads and the scan costs what a single direction would:
``directions=2`` scans rows forwards and backwards (a bidirectional raster scan, as in Vision Mamba),
``directions=4`` adds the two column orders (MambaIR's four). dt, B and C come from the convolved
features (as in Mamba-1 / VMamba's x_proj), with B and C per direction. The scan is
``blocks.ssm.ssd_chunked``: chunked matrix products with no loop, so the block exports to ONNX with
static shapes and no Loop/Scan op; under autocast or in float16/bfloat16 the scan itself runs in float32.
The out-projection starts at 1% of its default init (``init_scale``), so the block starts as a
near-identity residual, ready to be distilled.

Chosen defaults (``MambaBlock(dim)``): ``d_state=8, expand=1, directions=2, head_dim=None`` (one head
per direction, head_dim = C/2), ``chunk=None`` (``auto_chunk``: 16 at 64x64, 32 at 128x128),
``ffn_expansion=1``, ``out_norm=False``. Chosen by measurement on this 2-core CPU, batch 1: latency
relative to TransformerBlock at the same width and input, as PyTorch eager / ONNX Runtime, single-thread
CPU time (robust on a shared machine), 15 interleaved rounds, median of the per-round ratios:

    variant                                C=48 64x64    C=96 64x64    C=48 128x128    params at C=48
    default (parallel, 2 directions, N=8)  0.60 / 0.68   0.64 / 0.60   0.77 / 0.73     16.0k
    directions=4                           0.73 / 0.95   0.67 / 0.67   0.97 / 0.94     17.7k
    d_state=16                             0.63 / 0.83   0.67 / 0.68   0.99 / 0.93     17.6k
    out_norm=True                          0.58 / 0.73   0.64 / 0.65   0.83 / 0.81     16.1k
    ffn_expansion=0 (scan branch only)     0.42 / 0.56   0.43 / 0.44   0.62 / 0.60      9.1k
    expand=2, directions=4                 1.21 / 1.50   1.04 / 1.02   1.45 / 1.43     28.3k
    sequential mixer + FFN (2 LNs)         0.64 / 0.83   0.74 / 0.66   1.01 / 0.97     16.1k
    TransformerBlock (ms)                  15.1 / 10.1   26.3 / 24.4   37.6 / 44.9     31.3k

(The sequential row is the VSSBlock-like layout, mixer then a gated FFN each with its own LN and
residual; it was measured on a design prototype and is not an option here.) Two-thread wall-clock
latencies come from ``python bench/bench_mamba_block.py``. Also measured and rejected: B, C, dt taken
from the in-projection and convolved with u (Mamba-2 style, 5-10% slower than the x_proj used here),
chunk 64 (slower at both sizes), exact segment sums by a masked cumsum (2x slower than the selection
matmul in ``decay_matrix``).
``heads`` is accepted for interface symmetry with ``TransformerBlock`` and ignored.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from blocks.norm import LayerNorm2d
from blocks.ops import Add
from blocks.ssm import auto_chunk, ssd_chunked, static_shape

DIRECTION_ORDER = ("row", "row_reversed", "column", "column_reversed")


def to_sequence(x: torch.Tensor, direction: str) -> torch.Tensor:
    """[B, C, H, W] -> [B, L, C] in the scan order of ``direction`` (L = H * W)."""
    if direction.startswith("column"):
        x = x.transpose(-1, -2)
    x = x.flatten(2).transpose(1, 2)
    return x.flip(1) if direction.endswith("reversed") else x


def from_sequence(y: torch.Tensor, direction: str, h: int, w: int) -> torch.Tensor:
    """Inverse of ``to_sequence``: [B, L, C] -> [B, C, H, W] (a view where possible)."""
    if direction.endswith("reversed"):
        y = y.flip(1)
    y = y.transpose(1, 2)
    b, c, _ = static_shape(y)
    if direction.startswith("column"):
        return y.reshape(b, c, w, h).transpose(-1, -2)
    return y.reshape(b, c, h, w)


class DirectionalSSD(nn.Module):
    """``u [B, inner, H, W] -> y [B, inner, H, W]``: DW3x3 + SiLU, then an SSD scan per direction.

    Channel group k (of ``directions`` equal groups, ``heads_per_direction`` heads of ``head_dim``) is
    scanned in direction k's order with its own ``B_k, C_k [d_state]`` and ``dt_k`` (one per head),
    all projected from the convolved features: ``y = SSD(u; dt, A, B, C) + D u``.
    """

    def __init__(self, inner: int, d_state: int, head_dim: int, directions: int, chunk: int | None) -> None:
        super().__init__()
        if directions not in (1, 2, 4):
            raise ValueError(f"MambaBlock: directions must be 1, 2 or 4, got {directions}")
        if head_dim <= 0 or inner % (head_dim * directions):
            raise ValueError(
                f"MambaBlock: expand * dim = {inner} must be a multiple of head_dim * directions "
                f"= {head_dim} * {directions}"
            )
        self.d_state, self.head_dim, self.chunk = d_state, head_dim, chunk
        self.heads = inner // head_dim
        self.directions = DIRECTION_ORDER[:directions]
        self.group = 2 * d_state + self.heads // directions  # B_k, C_k, dt_k channels of one direction
        self.conv = nn.Conv2d(inner, inner, 3, padding=1, groups=inner, bias=True)
        self.x_proj = nn.Conv2d(inner, directions * self.group, 1, bias=False)
        # Mamba-2 initialisation: A = -U(1, 16); dt = softplus(dt_bias) log-uniform in [1e-3, 1e-1].
        self.A_log = nn.Parameter(torch.log(torch.empty(self.heads).uniform_(1.0, 16.0)))
        dt = torch.exp(torch.empty(self.heads).uniform_(math.log(1e-3), math.log(1e-1)))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.D = nn.Parameter(torch.ones(self.heads))

    def _sequences(self, t: torch.Tensor) -> torch.Tensor:
        """[B, nd * c, H, W] -> [B, nd, L, c]: channel group k in direction k's scan order."""
        parts = t.chunk(len(self.directions), 1)
        return torch.stack([to_sequence(part, d) for part, d in zip(parts, self.directions, strict=True)], 1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        b, _, h, w = static_shape(u)
        n, nd, p, length = self.d_state, len(self.directions), self.head_dim, h * w
        hpd = self.heads // nd
        u = F.silu(self.conv(u))
        bcdt = self.x_proj(u)
        u = self._sequences(u)
        bcdt = self._sequences(bcdt)
        bm, cm, dt = bcdt.split([n, n, hpd], dim=-1)  # [B, nd, L, .]
        dt = F.softplus(dt + self.dt_bias.reshape(nd, 1, hpd))
        args = (
            u.reshape(b, nd, length, hpd, p).transpose(2, 3).reshape(b, self.heads, length, p),
            dt.transpose(2, 3).reshape(b, self.heads, length),
            -torch.exp(self.A_log),
            bm,
            cm,
        )
        chunk = self.chunk or auto_chunk(length)
        if torch.is_autocast_enabled(u.device.type) or u.dtype in (torch.float16, torch.bfloat16):
            # the segment sums and decays need float32: scan outside autocast, in float32
            with torch.autocast(u.device.type, enabled=False):
                y, _ = ssd_chunked(*(a.float() for a in args), chunk)
            y = y.to(u.dtype)
        else:
            y, _ = ssd_chunked(*args, chunk)
        y = y.reshape(b, nd, hpd, length, p).transpose(2, 3).reshape(b, nd, length, hpd * p)
        y = y + u * self.D.repeat_interleave(p).reshape(nd, 1, hpd * p)
        return torch.cat([from_sequence(y[:, k], d, h, w) for k, d in enumerate(self.directions)], 1)


class MambaBlock(nn.Module):
    """Parallel vision SSD block: ``x + 1x1(cat[scan(u) * silu(z), gelu(f1) * f2])`` from ``1x1(LN(x))``.

    dim: channels C. d_state: N of B and C. expand: scan width ``inner = expand * C``. head_dim: channels
    per head (default: one head per direction). directions: 1, 2 or 4 scan orders. chunk: SSD chunk
    (default: ``auto_chunk(H * W)``). ffn_expansion: width of the gated-GELU branch, ``hidden = C * e``
    (0 drops it). out_norm: LayerNorm on the scan output before the gate. init_scale: multiplier on the
    out-projection's default init, so the block starts close to the identity.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 1,
        d_state: int = 8,
        expand: float = 1.0,
        head_dim: int | None = None,
        directions: int = 2,
        chunk: int | None = None,
        ffn_expansion: float = 1.0,
        bias: bool = False,
        layernorm: str = "withbias",
        out_norm: bool = False,
        init_scale: float = 1e-2,
    ) -> None:
        super().__init__()
        del heads  # interface symmetry with TransformerBlock
        self.inner = int(round(expand * dim))
        self.hidden = int(dim * ffn_expansion)
        self.norm = LayerNorm2d(dim, layernorm)
        self.in_proj = nn.Conv2d(dim, 2 * self.inner + 2 * self.hidden, 1, bias=bias)
        head_dim = head_dim or self.inner // directions
        self.scan = DirectionalSSD(self.inner, d_state, head_dim, directions, chunk)
        self.out_norm = LayerNorm2d(self.inner, layernorm) if out_norm else nn.Identity()
        self.out_proj = nn.Conv2d(self.inner + self.hidden, dim, 1, bias=bias)
        self.residual = Add()
        with torch.no_grad():
            self.out_proj.weight.mul_(init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.in_proj(self.norm(x))
        if not self.hidden:
            z, u = h.chunk(2, 1)
            return self.residual(x, self.out_proj(self.out_norm(self.scan(u)) * F.silu(z)))
        z, u, f1, f2 = h.split([self.inner, self.inner, self.hidden, self.hidden], 1)
        y = self.out_norm(self.scan(u)) * F.silu(z)
        return self.residual(x, self.out_proj(torch.cat([y, F.gelu(f1) * f2], 1)))
