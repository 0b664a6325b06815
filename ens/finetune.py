"""End-to-end fine-tuning of an assembled hybrid network (a search trial's, the zoo's rank check)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ens.compute import CPU, Compute
from ens.train_loop import Loop, Schedule
from ens.training import batch_indices, charbonnier, stack_batch


def finetune(net: nn.Module, train: Any, steps: int, seed: int, lr: float = 2e-4, batch_size: int = 8,
             show_progress: bool = False, name: str = "fine-tune", compute: Compute = CPU) -> float | None:
    """Charbonnier fine-tuning of every parameter of ``net`` (AdamW, constant ``lr``, no clipping) on
    ``compute``'s device (``net`` is moved there); leaves it in eval mode and returns the last loss."""
    if steps <= 0:
        return None
    for p in net.parameters():
        p.requires_grad_(True)
    compute.module(net).train()
    forward = compute.forward_of(net)
    loop = Loop(name=name, schedule=Schedule(steps, lr, min_ratio=1.0), grad_clip=None,
                optimizer=torch.optim.AdamW(net.parameters(), lr=lr), show_progress=show_progress, compute=compute)

    def batch(step: int) -> tuple[torch.Tensor, ...]:
        return stack_batch(train, batch_indices(len(train), batch_size, seed + 7, step), step)

    def step_fn(step: int, b: tuple[torch.Tensor, ...]) -> torch.Tensor:
        deg, clean = b
        return charbonnier(forward(deg), clean)

    res = loop.run(batch, step_fn)
    net.eval()
    return res.last_loss
