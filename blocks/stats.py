"""Parameter and multiply-accumulate counts of a module at one input shape."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """MACs of one forward pass: torch's FLOP counter (convs, matmuls, einsums) divided by 2.

    Element-wise ops, norms and activations are not counted, as is usual for MACs tables.
    """
    was_training = model.training
    model.eval()
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(*input_shape, device=device))
    model.train(was_training)
    return int(counter.get_total_flops()) // 2
