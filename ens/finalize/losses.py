"""Losses of QDR finalize: reconstruction, distillation, and Learnable Magnitude Reweighting (LMR).

Reconstruction (``reconstruction_loss``)::

    L_rec = Charbonnier(S(x), y; eps=1e-3) + w_dct * mean|DCT2(S(x)) - DCT2(y)|

``DCT2`` is the orthonormal 2-D DCT-II of each channel over the whole patch (``C_H X C_W^T``), as in
the INT8-SR paper's Stage 2 (``w_dct = 0.02`` there; 0 here by default, ``--dct-weight``).

Distillation, FP32 self-distillation (the teacher T is the fine-tuned FP32 model itself):

- decoder-free (QDR, the default): ``L_kd = mean|lat_S - lat_T|`` on the bottleneck feature map only
  (the output of stage ``lat``), so the decoder is left to the reconstruction loss;
- output-level (the ablation's "KD at the output"): ``L_kd = mean|S(x) - T(x)|``;
- confidence-weighted output KD (INT8-SR, optional): per pixel
  ``w = clip(exp(-10 * mean_c |T(x) - y|), 0.10, 0.75)`` and ``L_ckd = mean(w * mean_c |S(x) - T(x)|)``:
  the teacher is trusted where it is right;
- SPARK's spatially weighted output KD (optional, :mod:`ens.finalize.spark`).

LMR (:class:`MagnitudeReweighting`), with one learnable log-weight ``s_i`` per active term::

    L = sum_i exp(-s_i) * L_i + s_i

For fixed network weights the minimiser in ``s_i`` is ``s_i = log L_i``, where each weighted term is 1:
the network's gradient becomes ``sum_i grad(L_i) / L_i = grad(sum_i log L_i)``, so every term pulls
with its *relative* rate of improvement and neither the reconstruction nor the KD term drowns the
other, whatever their raw magnitudes (the "tug-of-war" QDR describes). ``s_i`` start at
``log L_i`` of the first batch (the balanced point), are trained by the same optimiser at their own
learning rate and are clamped to ``[-10, 10]``. (This is the homoscedastic-uncertainty form of Kendall
et al. 2018; QDR does not publish its formula.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import nn

from ens.training import charbonnier

LMR_CLAMP = 10.0


@lru_cache(maxsize=16)
def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``[n, n]``: ``X_k = sum_i M[k, i] x_i``."""
    i = torch.arange(n, dtype=torch.float64)
    k = i[:, None]
    m = torch.cos(math.pi * (2 * i[None, :] + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.float()


def dct2(x: torch.Tensor) -> torch.Tensor:
    """2-D orthonormal DCT-II over the last two axes of ``[..., H, W]``."""
    h, w = x.shape[-2:]
    ch = dct_matrix(h).to(x.device, x.dtype)
    cw = dct_matrix(w).to(x.device, x.dtype)
    return ch @ x @ cw.transpose(0, 1)


def dct_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (dct2(pred) - dct2(target)).abs().mean()


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, dct_weight: float = 0.0) -> torch.Tensor:
    loss = charbonnier(pred, target)
    if dct_weight:
        loss = loss + dct_weight * dct_l1(pred, target)
    return loss


def latent_kd(student_latent: torch.Tensor, teacher_latent: torch.Tensor) -> torch.Tensor:
    """Decoder-free distillation: L1 between bottleneck feature maps."""
    return (student_latent - teacher_latent.detach()).abs().mean()


def output_kd(student_out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
    return (student_out - teacher_out.detach()).abs().mean()


def confidence_weights(teacher_out: torch.Tensor, target: torch.Tensor, lo: float = 0.10,
                       hi: float = 0.75, sharpness: float = 10.0) -> torch.Tensor:
    """INT8-SR's per-pixel trust in the teacher: ``clip(exp(-10 mean_c|t - y|), 0.10, 0.75)``, [B, 1, H, W]."""
    err = (teacher_out.detach() - target).abs().mean(dim=1, keepdim=True)
    return torch.exp(-sharpness * err).clamp(lo, hi)


def confidence_kd(student_out: torch.Tensor, teacher_out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    w = confidence_weights(teacher_out, target)
    return (w * (student_out - teacher_out.detach()).abs().mean(dim=1, keepdim=True)).mean()


def weighted_output_kd(student_out: torch.Tensor, teacher_out: torch.Tensor, weight_map: torch.Tensor) -> torch.Tensor:
    """``mean(w * mean_c|S - T|)`` with ``weight_map`` [B, 1, h, w] upsampled (nearest) to the image."""
    gap = (student_out - teacher_out.detach()).abs().mean(dim=1, keepdim=True)
    w = torch.nn.functional.interpolate(weight_map.detach(), size=gap.shape[-2:], mode="nearest")
    return (w * gap).mean()


class MagnitudeReweighting(nn.Module):
    """LMR: ``L = sum_i exp(-s_i) L_i + s_i`` over named terms (see the module docstring)."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = list(names)
        self.log_weights = nn.Parameter(torch.zeros(len(self.names)))
        self.initialised = False

    @torch.no_grad()
    def initialise(self, losses: dict[str, torch.Tensor]) -> None:
        for i, n in enumerate(self.names):
            self.log_weights[i] = float(torch.log(losses[n].detach().clamp_min(1e-8)))
        self.log_weights.clamp_(-LMR_CLAMP, LMR_CLAMP)
        self.initialised = True

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.initialised:
            self.initialise(losses)
        s = self.log_weights.clamp(-LMR_CLAMP, LMR_CLAMP)
        total = torch.zeros((), dtype=s.dtype)
        for i, n in enumerate(self.names):
            total = total + torch.exp(-s[i]) * losses[n] + s[i]
        return total

    def weights(self) -> dict[str, float]:
        """The current multipliers ``exp(-s_i)`` by term."""
        s = self.log_weights.detach().clamp(-LMR_CLAMP, LMR_CLAMP)
        return {n: float(torch.exp(-s[i])) for i, n in enumerate(self.names)}
