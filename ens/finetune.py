"""End-to-end fine-tuning of an assembled hybrid network (a search trial's, the zoo's rank check)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ens.train_loop import Loop, Schedule
from ens.training import batch_indices, channels_last, charbonnier, stack_batch


def finetune(net: nn.Module, train: Any, steps: int, seed: int, lr: float = 2e-4, batch_size: int = 8,
             show_progress: bool = False, name: str = "fine-tune") -> float | None:
    """Charbonnier fine-tuning of every parameter of ``net`` (AdamW, constant ``lr``, no clipping); leaves
    it in eval mode and returns the last loss."""
    if steps <= 0:
        return None
    for p in net.parameters():
        p.requires_grad_(True)
    channels_last(net).train()
    loop = Loop(name=name, schedule=Schedule(steps, lr, min_ratio=1.0), grad_clip=None,
                optimizer=torch.optim.AdamW(net.parameters(), lr=lr), show_progress=show_progress)

    def step_fn(step: int) -> torch.Tensor:
        deg, clean = stack_batch(train, batch_indices(len(train), batch_size, seed + 7, step), step)
        return charbonnier(net(channels_last(deg)), clean)

    res = loop.run(step_fn)
    net.eval()
    return res.last_loss
