"""End-to-end fine-tuning of an assembled hybrid network (a search trial's, the zoo's rank check).

It is the FP32 fine-tuning that ``ens finalize`` ships a network with (``ens.finalize.qat.finetune_fp32``:
AdamW, warm-up then cosine decay, gradient clipping, a fresh training pool every 64 steps), so that a
fine-tuned ranking is the ranking of what finalize would ship. Every network is fine-tuned on the same
batches for a given ``seed`` (common random numbers): differences between two networks are theirs, not
the batches'. The prebuilt zoos' rank checks (16 hybrids, 100 steps) measured Kendall tau 0.58 / 0.48 / 0.45
(denoise / derain / deblur) with the former recipe (constant learning rate, a batch order per network) and
0.70 / 0.47 / 0.23 with this one; the deblur hybrids lie within 0.7 dB, so its tau ranks noise either way.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ens.compute import CPU, Compute


def finetune(net: nn.Module, train: Any, steps: int, seed: int, lr: float = 2e-4, batch_size: int = 8,
             show_progress: bool = False, compute: Compute = CPU) -> float | None:
    """Fine-tune every parameter of ``net`` for ``steps`` on ``compute``'s device (``net`` stays there), in
    eval mode afterwards; the last loss (None when ``steps`` is 0)."""
    from ens.finalize.qat import QDRConfig, finetune_fp32

    if steps <= 0:
        return None
    for p in net.parameters():
        p.requires_grad_(True)
    log = finetune_fp32(net, train, QDRConfig(finetune_steps=steps, lr=lr, batch_size=batch_size, seed=seed),
                        show_progress=show_progress, compute=compute)
    compute.module(net).eval()
    return log.last_loss
