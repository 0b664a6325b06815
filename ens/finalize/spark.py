"""SPARK (arXiv 2606.15243): a spatial KD weight map from a small policy trained by REINFORCE during QAT.

Only used in training and discarded afterwards: it costs nothing at inference. Here:

1. Difficulty features on a ``G x G`` grid of cells (G = 8, so a 64x64 patch has 8x8-pixel cells),
   four channels per cell: Laplacian variance and pixel variance of the target (edges and texture,
   on luma), the student's error ``mean|S - y|`` and the teacher-student gap ``mean|S - T|``. Each
   channel is divided by its mean over the cells of the image and passed through ``log1p``, so the
   policy sees relative difficulty.
2. The policy: three 3x3 convolutions (4 -> 16 -> 16 -> 1, ReLU between) give a mean logit ``mu`` per
   cell; the action is ``z ~ N(mu, sigma^2)`` (sigma 0.5) and the weight map is
   ``w = G^2 * softmax(z over the cells)`` (mean 1 per image).
3. The student's extra loss is the output-level KD weighted by ``w`` (nearest-upsampled):
   ``L_spark = mean(w * mean_c|S(x) - T(x)|)``, ``w`` detached.
4. Reward: how much this step improved reconstruction on the same batch,
   ``r = L_rec(before the step) - L_rec(after the step)`` (one extra no-grad forward per step);
   advantage ``A = (r - b) / std`` with an EMA baseline ``b``; the policy minimises
   ``-A * log pi(z)`` with Adam.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

GRID = 8
SIGMA = 0.5
_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def _luma(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


def _cell_mean(x: torch.Tensor, grid: int) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, grid)


def _cell_var(x: torch.Tensor, grid: int) -> torch.Tensor:
    m = _cell_mean(x, grid)
    return (_cell_mean(x * x, grid) - m * m).clamp_min(0.0)


@torch.no_grad()
def difficulty_features(target: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor,
                        grid: int = GRID) -> torch.Tensor:
    """``[B, 4, grid, grid]``: Laplacian variance, pixel variance, student error, teacher-student gap."""
    y = _luma(target)
    lap = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), _LAPLACE.to(y).view(1, 1, 3, 3))
    feats = torch.cat([
        _cell_var(lap, grid),
        _cell_var(y, grid),
        _cell_mean((student - target).abs().mean(1, keepdim=True), grid),
        _cell_mean((student - teacher).abs().mean(1, keepdim=True), grid),
    ], dim=1)
    feats = feats / (feats.mean(dim=(2, 3), keepdim=True) + 1e-8)
    return torch.log1p(feats)


class SparkPolicy(nn.Module):
    def __init__(self, hidden: int = 16, grid: int = GRID, sigma: float = SIGMA) -> None:
        super().__init__()
        self.grid, self.sigma = grid, sigma
        self.net = nn.Sequential(
            nn.Conv2d(4, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, 1, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(feats)

    def act(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample an action: (weight map ``[B, 1, G, G]`` with mean 1, log-probability per image ``[B]``)."""
        mu = self(feats)
        z = (mu + self.sigma * torch.randn_like(mu)).detach()
        logp = -((z - mu) ** 2).flatten(1).sum(1) / (2 * self.sigma**2)
        b, _, g, h = z.shape
        w = torch.softmax(z.flatten(1), dim=1).view(b, 1, g, h) * (g * h)
        return w, logp


class SparkTrainer:
    """Holds the policy, its optimiser and the reward baseline; ``weights()`` then ``update()`` each step."""

    def __init__(self, lr: float = 1e-3, grid: int = GRID, momentum: float = 0.9, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.policy = SparkPolicy(grid=grid)
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=lr)
        self.momentum = momentum
        self.baseline: float | None = None
        self.var = 1e-12
        self.history: list[float] = []
        self._logp: torch.Tensor | None = None

    def weights(self, target: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        feats = difficulty_features(target, student.detach(), teacher.detach(), self.policy.grid)
        w, self._logp = self.policy.act(feats)
        return w.detach()

    def update(self, reward: float) -> None:
        if self._logp is None:
            return
        if self.baseline is None:
            self.baseline = reward
        adv = reward - self.baseline
        self.var = self.momentum * self.var + (1 - self.momentum) * adv * adv
        adv_n = adv / math.sqrt(self.var + 1e-12)
        loss = -(adv_n * self._logp).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.baseline = self.momentum * self.baseline + (1 - self.momentum) * reward
        self.history.append(reward)
        self._logp = None

    def summary(self) -> dict[str, float | int]:
        h = self.history
        return {"steps": len(h), "mean_reward": float(sum(h) / len(h)) if h else 0.0,
                "policy_params": sum(p.numel() for p in self.policy.parameters())}
