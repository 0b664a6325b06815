"""The empty choice: a block position that passes its input through (kind ``I``).

Dropping a block is the cheapest choice a slot can take; the U-Net's skeleton (stem, samplers, skip
joins, output conv) still runs. It has no parameters, so the zoo has nothing to distil for it and its
relative error is 1 by definition (``|x - y| / |y - x|``).
"""

from __future__ import annotations

import torch
from torch import nn


class SkipBlock(nn.Module):
    def __init__(self, dim: int, heads: int = 1, **_: object) -> None:
        super().__init__()
        del dim, heads  # interface symmetry with the other kinds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
