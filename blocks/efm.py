"""Edge-friendly block (EFM) with Learnable Degradation Gating (LDG), after QDR (arXiv 2603.09624).

Only 1x1 / depthwise 3x3 convolutions, element-wise products and one sigmoid: ops that INT8
tool-chains (TensorRT, QNN, ONNX Runtime) fuse and quantize well. No attention, no softmax.

With ``u = LN(x)`` and SG the simple gate ``SG([a, b]) = a * b`` (split over channels):

    f  = SG(DW3x3(PW_in(u)))                              # C channels, receptive field 3x3
    m  = sigmoid(PW_m2(relu(DW3x3_m(PW_m1(u)))))          # LDG: degradation map, [B, G, H, W]
    f' = f + f * m_g  (= f * (1 + m_g))                   # each gate g modulates its C/G channels
    x  = x + beta * PW_out(f')
    x  = x + gamma * PW_f2(SG(PW_f1(LN(x))))             # gated feed-forward

``m`` is a per-pixel estimate of how degraded a location is (blur, streak, noise); the gate
amplifies the restoration branch there and leaves clean regions near the identity path.
``beta`` and ``gamma`` are per-channel residual scales initialised to zero (NAFNet), so the block
starts as the identity, which is what a residual surrogate of a transformer block should be.
With ``layernorm="none"`` (kinds F and G) both LNs are dropped: every op of the block is then one that
INT8 runtimes run in integer arithmetic (see :func:`blocks.norm.channel_norm`). With ``ldg=False`` the gate
is dropped (``f' = f``) and with ``ffn_expansion=0`` the feed-forward: kind D keeps the first line alone,
``x = x + beta * PW_out(SG(DW3x3(PW_in(x))))``, three convolutions and one product.
With ``sca=True`` (kind C) the branch also gets NAFNet's simplified channel attention (arXiv 2204.04676),
``f = f * PW_a(GAP(f))``: one scale per channel from the whole input, the global context that a transformer's
channel attention (MDTA) pools over the image and that 3x3 convolutions alone never see.
"""

from __future__ import annotations

import torch
from torch import nn

from blocks.norm import channel_norm
from blocks.ops import Add, Mul, Sigmoid


def _scaled(scale: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return x if scale is None else scale * x


class SimpleGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mul = Mul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return self.mul(a, b)


class SimplifiedChannelAttention(nn.Module):
    """NAFNet's SCA: ``f * PW(GAP(f))``, a per-channel scale from the global average of the features."""

    def __init__(self, dim: int, bias: bool = True) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.proj = nn.Conv2d(dim, dim, 1, bias=bias)
        self.mul = Mul()

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.mul(f, self.proj(self.pool(f)))


class LearnableDegradationGate(nn.Module):
    """Predicts ``gates`` per-pixel degradation maps in [0, 1] from the features."""

    def __init__(self, dim: int, gates: int = 1, reduction: int = 4, bias: bool = True) -> None:
        super().__init__()
        hidden = max(dim // reduction, 4)
        self.reduce = nn.Conv2d(dim, hidden, 1, bias=bias)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=bias)
        self.act = nn.ReLU()
        self.to_map = nn.Conv2d(hidden, gates, 1, bias=True)
        self.sigmoid = Sigmoid()

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.sigmoid(self.to_map(self.act(self.dw(self.reduce(u)))))


class EFMBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        heads: int = 1,
        expansion: float = 2.0,
        ffn_expansion: float = 2.0,
        gates: int = 1,
        bias: bool = True,
        layernorm: str = "withbias",
        ldg: bool = True,
        sca: bool = False,
    ) -> None:
        super().__init__()
        del heads  # an EFM block has no heads; the argument keeps every block's signature alike
        if dim % gates:
            raise ValueError(f"EFM: dim {dim} is not divisible by gates {gates}")
        hidden = int(dim * expansion) // 2 * 2
        ffn_hidden = int(dim * ffn_expansion) // 2 * 2
        self.gates = gates
        self.norm1 = channel_norm(dim, layernorm)
        self.pw_in = nn.Conv2d(dim, hidden, 1, bias=bias)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=bias)
        self.sg, self.ffn_sg = SimpleGate(), SimpleGate()
        self.pw_out = nn.Conv2d(hidden // 2, dim, 1, bias=bias)
        self.sca = SimplifiedChannelAttention(hidden // 2, bias=True) if sca else None
        self.ldg = LearnableDegradationGate(dim, gates) if ldg else None
        self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.has_ffn = ffn_hidden > 0
        if self.has_ffn:
            self.norm2 = channel_norm(dim, layernorm)
            self.pw_f1 = nn.Conv2d(dim, ffn_hidden, 1, bias=bias)
            self.pw_f2 = nn.Conv2d(ffn_hidden // 2, dim, 1, bias=bias)
            self.gamma = nn.Parameter(torch.zeros(1, dim, 1, 1))
        else:
            self.gamma = None
        # f * (1 + m) written as f + f * m: the same value, but each op has quantized inputs, so an INT8 runtime
        # runs the gate as QLinearMul + QLinearAdd (``1 + m`` adds a float constant, which no QLinearAdd takes)
        self.gate_mul, self.gate_add = Mul(), Add()
        self.add1, self.add2 = Add(), Add()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.norm1(x)
        f = self.sg(self.dw(self.pw_in(u)))
        if self.sca is not None:
            f = self.sca(f)
        if self.ldg is not None:
            m = self.ldg(u)
            if self.gates > 1:
                m = m.repeat_interleave(f.shape[1] // self.gates, dim=1)
            f = self.gate_add(f, self.gate_mul(f, m))
        x = self.add1(x, _scaled(self.beta, self.pw_out(f)))
        if not self.has_ffn:
            return x
        return self.add2(x, _scaled(self.gamma, self.pw_f2(self.ffn_sg(self.pw_f1(self.norm2(x))))))

    @torch.no_grad()
    def fold_layer_scales(self) -> None:
        """Fold ``beta`` into PW_out and ``gamma`` into PW_f2 (exact: both are per-output-channel). A deployed
        graph then has no float Mul between those convs and the residual sums, so an INT8 runtime runs
        conv -> sum as QLinearConv -> QLinearAdd. The block keeps no ``beta``/``gamma`` parameters after it."""
        for scale, conv in (("beta", self.pw_out), ("gamma", getattr(self, "pw_f2", None))):
            s = getattr(self, scale)
            if s is None:
                continue
            conv.weight.mul_(s.reshape(-1, 1, 1, 1))
            if conv.bias is not None:
                conv.bias.mul_(s.reshape(-1))
            setattr(self, scale, None)

    def degradation_map(self, x: torch.Tensor) -> torch.Tensor:
        """The LDG map for inspection: [B, gates, H, W] in [0, 1]."""
        if self.ldg is None:
            raise ValueError("this EFM block has no degradation gate (ldg=False)")
        return self.ldg(self.norm1(x))
