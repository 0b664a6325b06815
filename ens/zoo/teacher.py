"""Step 1 of a zoo: train the all-transformer U-Net teacher on the task.

Charbonnier loss, AdamW (betas 0.9/0.999, weight decay 1e-4 as Restormer), cosine schedule with a
short warm-up, gradient-norm clipping at 1.0, seeded batches, channels-last layout (faster on CPU);
the output convolution starts at zero, so the untrained teacher is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from blocks.unet import HybridUNet
from ens.training import (
    PeriodicCheckpoint,
    batch_indices,
    channels_last,
    charbonnier,
    cosine_lr,
    load_checkpoint,
    progress_bar,
    require_finite,
    save_checkpoint,
    set_lr,
    stack_batch,
)


@dataclass(frozen=True)
class TeacherRecipe:
    steps: int = 1500
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    grad_clip: float = 1.0
    checkpoint_every_s: float = 120.0


def start_at_identity(net: HybridUNet) -> None:
    """Zero the output convolution: with the global residual the untrained teacher returns its input, so
    training starts from the degraded input's PSNR instead of below it (measured on deblur-tiny, 600
    steps: +0.08 dB over the input against -0.07 dB with the default initialisation)."""
    with torch.no_grad():
        net.output.weight.zero_()
        if net.output.bias is not None:
            net.output.bias.zero_()


def train_teacher(
    net: HybridUNet,
    train_set,
    recipe: TeacherRecipe,
    seed: int,
    ckpt_path: Path,
    show_progress: bool = True,
) -> dict[str, float]:
    """Trains ``net`` in place; resumes from ``ckpt_path`` if it exists. Returns final train loss."""
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, betas=(0.9, 0.999),
                            weight_decay=recipe.weight_decay)
    start = 0
    if ckpt_path.is_file():
        start = int(load_checkpoint(ckpt_path, {"teacher": net}, opt)["step"])
    else:
        start_at_identity(net)

    def save(step: int) -> None:
        save_checkpoint(ckpt_path, {"teacher": net}, opt, step)

    periodic = PeriodicCheckpoint(save, recipe.checkpoint_every_s, start)
    channels_last(net).train()
    ema = None
    with periodic.saving_on_interrupt(), progress_bar("teacher", recipe.steps, start, show_progress) as advance:
        for step in range(start, recipe.steps):
            set_lr(opt, cosine_lr(step, recipe.steps, recipe.lr, recipe.warmup))
            deg, clean = stack_batch(train_set, batch_indices(len(train_set), recipe.batch_size, seed, step), step)
            loss = charbonnier(net(channels_last(deg)), clean)
            require_finite(loss, "teacher training")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), recipe.grad_clip)
            opt.step()
            lv = loss.item()
            ema = lv if ema is None else 0.98 * ema + 0.02 * lv
            advance(info=f"loss {ema:.4f}")
            periodic.maybe(step + 1)
    save(recipe.steps)
    return {"train_loss": round(ema, 6) if ema is not None else float("nan")}
