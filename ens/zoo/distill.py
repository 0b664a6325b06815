"""Step 2 of a zoo: feature-distil a surrogate of every kind for every block position.

For block position p with teacher block T_p, input x_p and output y_p = T_p(x_p) (captured from
the frozen teacher on training batches), each surrogate S_p^k minimises

    L_p^k = |S_p^k(x_p) - y_p|_1 + w_cos * (1 - cos_c(S_p^k(x_p) - x_p, y_p - x_p))
          + w_out * |R_p(S_p^k(x_p)) - R_p(y_p)|_1            (full-resolution positions only)

where cos_c is the cosine similarity over channels of the residual updates, averaged over
pixels (the residual is what the block adds; aligning its direction matters more than its size
where the update is small). All positions and kinds train together on each batch: their
parameters are disjoint, so the summed loss gives each surrogate its own gradient, and one
teacher forward pass serves every slot.

The third, *downstream* term is for the positions at full resolution (enc1, dec1, ref). R_p is the
frozen teacher's rest of the full-resolution path after position p (``HybridUNet.tail``: the
remaining blocks of the level, the skip connection for enc1 with the decoder's upsampled features
held at the teacher's, the output convolution), so the term is the error the surrogate causes in the
output image when it alone replaces the teacher's block. A feature error there reaches the image
through one or two blocks only, and which of its directions matter is decided by those blocks: on the
denoise tiny zoo (300 steps, lr 4e-3) the term took all-M / all-E from -2.09 / -2.33 dB to
-1.23 / -1.41 dB of the teacher (w_out 15; w_out 5 gave -1.29 / -1.39). The positions below full
resolution cost under 0.05 dB each when swapped and keep the feature loss only. The term uses the
first ``downstream_batch`` samples of each batch, for its cost.

An optional *in-context* term (``context_weight`` w_ctx) gives each surrogate the inputs it meets in a
hybrid: on each batch one random hybrid H of T and the distilled kinds runs forward (no gradient), and at
every position p each surrogate maps H's input there, x^H_p, to the teacher's output y_p:

    w_ctx * (|S_p^k(x^H_p) - y_p|_1 + w_cos * (1 - cos_c(S_p^k(x^H_p) - x^H_p, y_p - x^H_p)))

The gradient stays inside each block (x^H_p is detached), unlike the end-to-end calibration of step 3;
the surrogate learns to undo the drift its upstream neighbours leave, which the per-slot term never shows it.
Refining the shipped denoise zoo's M and E for 1000 steps with w_ctx 1 took all-M / all-E / mixed T-M-E from
-0.71 / -0.65 / -0.50 to -0.60 / -0.59 / -0.42 dB of the teacher; 2000 steps without it gave -0.70 / -0.59.

The distillation patch (``patch_size``, ``ens zoo build --distill-patch``) defaults to the zoo's training patch.
Restormer's transposed attention pools over the whole input, so a teacher can depend on context a 48-px patch
hides: the shipped derain teacher scores 31.04 dB on its whole held-out images and 29.59 dB on 48-px tiles of
them (``bench/bench_context.py``; denoise and deblur lose 0.12 and 0.09 dB), and its ref-slot swaps to M / E cost
1.00 / 0.94 dB whole but 0.41 / 0.35 dB on 48-px tiles. Refining that zoo's M and E 800 steps on 128-px
patches (batch 4) cut those two swaps to 0.75 / 0.72 dB, but all-M / all-E / mixed T-M-E fell from -0.68 / -0.57 /
-0.32 to -1.74 / -1.07 / -0.80 dB of the teacher, so the tiny recipe keeps 48 px
(record ``bench/records/distill_patch-derain-2026-12-04.json``).

The context matters at one slot only, so ``slots`` (``--distill-slots``) refines some positions and keeps the others:
the same 128-px refinement of ref.0 alone (lr 1e-3) took derain's all-M / all-E / mixed T-M-E to -0.45 / -0.42 /
-0.21 dB after 300 steps; 600-1500 steps kept E and mixed there but all-M drifted to -0.54..-0.62, and adding dec1.0
made all-M / all-E -1.04 / -1.18 at 600 steps (``bench/records/distill_slots-derain-2026-12-04.json``).

The figure recorded per slot and kind is the relative error on held-out batches,
``mean|S(x) - y| / mean|y - x|``: 0 is perfect, 1 is no better than skipping the block.

Step 3 (optional, ``calibrate``): a short in-context pass where random hybrids of the supernet
(teacher blocks frozen, surrogates trainable) are pulled towards the teacher's output image, so
that surrogates also learn to correct errors of their neighbours:

    L = (1 - w) * |H(x) - T(x)|_1 + w * |H(x) - y|_1

with H the hybrid, T the all-teacher network and y the clean target (``calib_clean_weight`` w; the
clean term lets the surrogates also correct what a briefly trained teacher still gets wrong).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from blocks.unet import FULL_RES_STAGES, HybridUNet, SlotBlock
from ens.compute import CPU, Compute, model_device
from ens.train_loop import Checkpointing, Loop, LoopResult, Schedule, resampling_hook
from ens.training import batch_indices, stack_batch


@dataclass(frozen=True)
class DistillRecipe:
    steps: int = 800
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.0
    cos_weight: float = 0.1
    downstream_weight: float = 15.0  # w_out; 0 turns the downstream term off
    downstream_batch: int = 4  # samples of each batch that take the downstream term (0: all)
    grad_clip: float = 1.0
    calib_steps: int = 300
    calib_lr: float = 5e-4
    calib_clean_weight: float = 0.0  # w in (1 - w) * |net - teacher| + w * |net - clean|
    checkpoint_every_s: float = 120.0
    resample_every: int = 0  # draw a fresh training pool every N steps (0: one fixed pool)
    context_weight: float = 0.0  # w_ctx of the in-context term (0: off)
    patch_size: int | None = None  # px a side of the distillation patches (None: the zoo's patch size)
    slots: tuple[str, ...] = ()  # the block positions to distil, "stage" or "stage.index" (empty: every one)


def in_slots(stage: str, index: int, slots: Sequence[str]) -> bool:
    """Whether position (stage, index) is one of ``slots`` ("ref" names every block of a stage, "ref.0" one)."""
    return not slots or stage in slots or f"{stage}.{index}" in slots


def distilled_blocks(supernet: HybridUNet, slots: Sequence[str] = ()) -> list[tuple[str, int, SlotBlock]]:
    return [(s, i, b) for s, i, b in supernet.slot_blocks() if in_slots(s, i, slots)]


def surrogate_params(supernet: HybridUNet, kinds: Sequence[str], slots: Sequence[str] = ()) -> list[torch.nn.Parameter]:
    return [p for _, _, blk in distilled_blocks(supernet, slots) for k in kinds for p in blk.choices[k].parameters()]


def trainable_kinds(supernet: HybridUNet, kinds: Sequence[str]) -> list[str]:
    """The kinds with parameters to distil (``I``, the skip, has none)."""
    _, _, blk = supernet.slot_blocks()[0]
    return [k for k in kinds if any(True for _ in blk.choices[k].parameters())]


def freeze_all_but(supernet: HybridUNet, kinds: Sequence[str], slots: Sequence[str] = ()) -> None:
    for p in supernet.parameters():
        p.requires_grad_(False)
    for p in surrogate_params(supernet, kinds, slots):
        p.requires_grad_(True)


@contextmanager
def capture_block_io(supernet: HybridUNet):
    """Records (input, output) of every block position during a forward pass."""
    records: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for stage, i, blk in supernet.slot_blocks():
        def hook(_m, inp, out, key=(stage, i)):
            records[key] = (inp[0].detach(), out.detach())

        hooks.append(blk.register_forward_hook(hook))
    try:
        yield records
    finally:
        for h in hooks:
            h.remove()


def feature_loss(pred: torch.Tensor, target: torch.Tensor, x: torch.Tensor, cos_weight: float) -> torch.Tensor:
    loss = (pred - target).abs().mean()
    if cos_weight:
        loss = loss + cos_weight * (1 - F.cosine_similarity(pred - x, target - x, dim=1, eps=1e-6).mean())
    return loss


def hybrid_block_inputs(supernet: HybridUNet, deg: torch.Tensor,
                        kinds: dict[str, list[str]]) -> dict[tuple[str, int], torch.Tensor]:
    """The input of every block position when the hybrid ``kinds`` runs on ``deg`` (no gradient)."""
    supernet.set_kinds(kinds)
    try:
        with torch.no_grad(), capture_block_io(supernet) as rec:
            supernet(deg)
    finally:
        supernet.set_kinds({s: ["T"] * len(seq) for s, seq in supernet.stages.items()})
    return {key: x for key, (x, _y) in rec.items()}


@dataclass
class TeacherPass:
    """What one frozen all-teacher forward pass gives the distillation."""

    blocks: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]]  # (input, output) per block position
    up: torch.Tensor  # the output of up2_1: the decoder's side of dec1's input
    residual: torch.Tensor  # the output convolution's output (the image residual)


def teacher_pass(supernet: HybridUNet, deg: torch.Tensor) -> TeacherPass:
    supernet.set_kinds({s: ["T"] * len(seq) for s, seq in supernet.stages.items()})
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, key=key: seen.__setitem__(key, out.detach()))
             for key, m in (("up", supernet.up2_1), ("residual", supernet.output))]
    try:
        with torch.no_grad(), capture_block_io(supernet) as rec:
            supernet(deg)
    finally:
        for h in hooks:
            h.remove()
    return TeacherPass(rec, seen["up"], seen["residual"])


def downstream_loss(supernet: HybridUNet, stage: str, index: int, outs: Sequence[torch.Tensor],
                    tp: TeacherPass, n: int) -> torch.Tensor:
    """``sum_k mean|R_p(S_k(x)) - R_p(y)|`` over the kinds' outputs ``outs`` at position (stage, index), on the
    first ``n`` samples; all kinds go through the teacher's tail in one batch."""
    k = len(outs)
    h = torch.cat([o[:n] for o in outs])
    up = tp.up[:n].repeat(k, 1, 1, 1) if stage == "enc1" else None
    return k * (supernet.tail(stage, index, h, up) - tp.residual[:n].repeat(k, 1, 1, 1)).abs().mean()


def _surrogate_loop(name: str, supernet: HybridUNet, kinds: Sequence[str], train_set, recipe: DistillRecipe,
                    schedule: Schedule, weight_decay: float, ckpt_path: Path, show_progress: bool,
                    compute: Compute) -> Loop:
    """The loop that trains the surrogates alone (teacher frozen), on fresh pools, resumable from ``ckpt_path``."""
    freeze_all_but(supernet, kinds, recipe.slots)
    params = surrogate_params(supernet, kinds, recipe.slots)
    resample, resume_pool = resampling_hook(train_set, recipe.resample_every)
    return Loop(name=name, schedule=schedule,
                optimizer=torch.optim.AdamW(params, lr=schedule.lr, weight_decay=weight_decay),
                clip_params=params, grad_clip=recipe.grad_clip,
                checkpoint=Checkpointing(ckpt_path, {"supernet": supernet}, recipe.checkpoint_every_s),
                hooks=[resample] if resample else [], on_resume=resume_pool, show_progress=show_progress, ema=0.95,
                compute=compute)


def distill_surrogates(
    supernet: HybridUNet,
    kinds: Sequence[str],
    train_set,
    recipe: DistillRecipe,
    seed: int,
    ckpt_path: Path,
    show_progress: bool = True,
    compute: Compute = CPU,
) -> LoopResult | None:
    kinds = trainable_kinds(supernet, kinds)
    if not kinds:  # only the skip, or nothing new
        return None
    compute.module(supernet).train()
    loop = _surrogate_loop("distil surrogates", supernet, kinds, train_set, recipe,
                           Schedule(recipe.steps, recipe.lr, warmup=20), recipe.weight_decay, ckpt_path, show_progress,
                           compute)

    def batch(step: int) -> tuple[torch.Tensor, ...]:
        return stack_batch(train_set, batch_indices(len(train_set), recipe.batch_size, seed + 1, step), step)[:1]

    def step_fn(step: int, b: tuple[torch.Tensor, ...]) -> torch.Tensor:
        (deg,) = b
        tp = teacher_pass(supernet, deg)
        n = recipe.downstream_batch or len(deg)
        context = (hybrid_block_inputs(supernet, deg, random_kinds(supernet, kinds, random.Random(seed * 7919 + step)))
                   if recipe.context_weight else {})
        loss = torch.zeros((), device=deg.device)
        for stage, i, blk in distilled_blocks(supernet, recipe.slots):
            x, y = tp.blocks[(stage, i)]
            outs = [blk.choices[k](x) for k in kinds]
            for o in outs:
                loss = loss + feature_loss(o, y, x, recipe.cos_weight)
            if recipe.downstream_weight and stage in FULL_RES_STAGES:
                loss = loss + recipe.downstream_weight * downstream_loss(supernet, stage, i, outs, tp, n)
            xh = context.get((stage, i))
            if xh is not None:
                for k in kinds:
                    loss = loss + recipe.context_weight * feature_loss(blk.choices[k](xh), y, xh, recipe.cos_weight)
        return loss

    return loop.run(batch, step_fn)


@torch.no_grad()
def relative_errors(supernet: HybridUNet, kinds: Sequence[str], val_batches) -> dict[str, dict[str, float]]:
    """Per block position and kind: mean|S(x) - y| / mean|y - x| over held-out inputs."""
    supernet.eval()
    device = model_device(supernet)
    num: dict[tuple[str, int, str], float] = {}
    den: dict[tuple[str, int], float] = {}
    for deg in val_batches:
        rec = teacher_pass(supernet, deg.to(device)).blocks
        for stage, i, blk in supernet.slot_blocks():
            x, y = rec[(stage, i)]
            den[(stage, i)] = den.get((stage, i), 0.0) + float((y - x).abs().mean())
            for k in kinds:
                num[(stage, i, k)] = num.get((stage, i, k), 0.0) + float((blk.choices[k](x) - y).abs().mean())
    return {
        f"{s}.{i}": {k: round(num[(s, i, k)] / max(den[(s, i)], 1e-12), 5) for k in kinds}
        for (s, i) in den
    }


def random_kinds(supernet: HybridUNet, kinds: Sequence[str], rng: random.Random) -> dict[str, list[str]]:
    """A random hybrid: uniform per block, or (one time in four) one surrogate kind everywhere."""
    if rng.random() < 0.25:
        k = rng.choice(list(kinds))
        return {s: [k] * len(seq) for s, seq in supernet.stages.items()}
    pool = ["T", *kinds]
    return {s: [rng.choice(pool) for _ in seq] for s, seq in supernet.stages.items()}


def calibrate_in_context(
    supernet: HybridUNet,
    kinds: Sequence[str],
    train_set,
    recipe: DistillRecipe,
    seed: int,
    ckpt_path: Path,
    show_progress: bool = True,
    compute: Compute = CPU,
) -> LoopResult | None:
    if recipe.calib_steps <= 0 or not trainable_kinds(supernet, kinds):
        return None
    compute.module(supernet)
    loop = _surrogate_loop("in-context calibration", supernet, kinds, train_set, recipe,
                           Schedule(recipe.calib_steps, recipe.calib_lr, warmup=10), 0.0, ckpt_path, show_progress,
                           compute)
    w = recipe.calib_clean_weight

    def batch(step: int) -> tuple[torch.Tensor, ...]:
        return stack_batch(train_set, batch_indices(len(train_set), recipe.batch_size, seed + 2, step), step)

    def step_fn(step: int, b: tuple[torch.Tensor, ...]) -> torch.Tensor:
        deg, clean = b
        supernet.set_kinds({s: ["T"] * len(seq) for s, seq in supernet.stages.items()})
        supernet.eval()
        with torch.no_grad():
            target = supernet(deg)
        supernet.set_kinds(random_kinds(supernet, kinds, random.Random(seed * 100003 + step)))
        supernet.train()
        out = supernet(deg)
        loss = (1 - w) * (out - target).abs().mean()
        if w:
            loss = loss + w * (out - clean).abs().mean()
        return loss

    return loop.run(batch, step_fn)
