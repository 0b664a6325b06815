"""A data-parallel teacher run for the Ctrl-C test: ``python -m tests.ddp_driver FOLDER STEPS``.

Two Gloo processes train the micro U-Net's teacher for STEPS steps, checkpointing every second into FOLDER;
the parent's grace period after Ctrl-C is 10 s.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from blocks import UNetConfig
from blocks.unet import HybridUNet
from ens.compute import CPU
from ens.zoo import parallel
from ens.zoo.teacher import TeacherRecipe

CFG = UNetConfig(dim=8, num_blocks=(1, 2, 1, 2), num_refinement_blocks=1, heads=(1, 1, 2, 2))


def pairs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    clean = torch.rand(12, 3, 16, 16, generator=g)
    return [(c.roll(1, -1) * 0.8 + 0.1, c) for c in clean]


def job(folder: Path, steps: int) -> parallel.TeacherJob:
    recipe = TeacherRecipe(steps=steps, batch_size=4, warmup=1, checkpoint_every_s=1.0)
    return parallel.TeacherJob(CFG, pairs(), recipe, 3, folder / "teacher.ckpt.safetensors", folder / "stats.json",
                               CPU, parallel.free_port(), show_progress=False)


def main(folder: str, steps: int) -> None:
    parallel.STOP_GRACE_S = 10.0
    torch.manual_seed(0)
    stats = parallel.train_teacher_parallel(HybridUNet(CFG), 2, job(Path(folder), steps))
    print("done", stats["train_loss"], flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
