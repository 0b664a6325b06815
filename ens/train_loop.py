"""One training loop for every trainer in ``ens``: the teacher, the distillation, the in-context
calibration, a trial's fine-tune, FP32 fine-tuning and QAT.

A trainer gives a *batch function* (``step -> CPU tensors``), a *step function* (``(step, batch) -> loss`` or
``(step, batch) -> (loss, {term: value})``, the batch already on the device) and a :class:`Schedule`; the loop
owns the rest: the learning rate, autocast and the fp16 gradient scaler, backward, gradient clipping, the
finiteness check, the progress bar, periodic and Ctrl-C checkpoints (safetensors, resumable), hooks that run
every N steps (pool resampling, held-out curves), and the prefetch of the next batch in a thread (on CUDA).
The device and precision come from one :class:`ens.compute.Compute`, so that one place decides them for
every trainer. In data-parallel training only the main process (rank 0) saves and shows progress.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ens.compute import CPU, Compute, Prefetcher
from ens.training import (
    PeriodicCheckpoint,
    cosine_lr,
    load_checkpoint,
    progress_bar,
    require_finite,
    save_checkpoint,
)

StepOutput = torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]
Batch = tuple[torch.Tensor, ...]
BatchFn = Callable[[int], Batch]
StepFn = Callable[[int, Batch], StepOutput]


@dataclass(frozen=True)
class Schedule:
    """Cosine decay from ``lr`` to ``lr * min_ratio`` after a linear warm-up of ``warmup`` steps."""

    steps: int
    lr: float
    warmup: int = 0
    min_ratio: float = 0.01

    def lr_at(self, step: int) -> float:
        return cosine_lr(step, self.steps, self.lr, self.warmup, self.min_ratio)


@dataclass(frozen=True)
class Every:
    """A hook: ``fn(step)`` after every ``n``-th finished step (``step`` counts finished steps), and at
    the last step too when ``at_end``. ``changes_data``: it changes what the batch function returns (a pool
    resample), so the next batch is not prefetched across it."""

    n: int
    fn: Callable[[int], None]
    at_end: bool = False
    changes_data: bool = False

    def due(self, done: int, total: int) -> bool:
        return (self.n > 0 and done % self.n == 0) or (self.at_end and done == total)


@dataclass
class Checkpointing:
    """Where a loop keeps its resumable state: the modules and the optimizer, as safetensors."""

    path: Path
    modules: dict[str, nn.Module]
    every_s: float = 120.0


@dataclass
class LoopResult:
    steps: int
    seconds: float = 0.0
    first_loss: float | None = None
    last_loss: float | None = None
    ema_loss: float | None = None
    terms: dict[str, float] = field(default_factory=dict)  # each term's mean over the last 10% of steps
    state: dict[str, Any] = field(default_factory=dict)  # the loop's persistent state (see ``Loop.state``)


@dataclass
class Loop:
    """Runs ``step_fn`` for ``schedule.steps`` steps with ``optimizer`` (its first param group takes the
    schedule's learning rate; other groups keep their own).

    ``state`` is a JSON-able dict saved in every checkpoint and restored on resume (hooks keep their
    records there, such as a held-out curve). ``on_resume(step)`` runs once when a checkpoint was
    loaded, before the first new step; ``init()`` runs instead when there is none.
    """

    name: str
    schedule: Schedule
    optimizer: torch.optim.Optimizer
    clip_params: Sequence[torch.nn.Parameter] | None = None
    grad_clip: float | None = 1.0
    checkpoint: Checkpointing | None = None
    hooks: Sequence[Every] = ()
    after_step: Callable[[int], None] | None = None
    on_resume: Callable[[int], None] | None = None
    init: Callable[[], None] | None = None
    show_progress: bool = True
    ema: float = 0.98
    info: Callable[[float, dict[str, float]], str] | None = None
    compute: Compute = CPU
    main: bool = True  # False on the other ranks of data-parallel training: no checkpoint writes, no progress
    state: dict[str, Any] = field(default_factory=dict)

    def _start(self) -> int:
        ck = self.checkpoint
        if ck is not None and ck.path.is_file():
            meta = load_checkpoint(ck.path, ck.modules, self.optimizer)
            self.state.update(meta.get("extra", {}).get("loop_state", {}))
            start = int(meta["step"])
            if self.on_resume is not None:
                self.on_resume(start)
            return start
        if self.init is not None:
            self.init()
        return 0

    def _save(self, step: int) -> None:
        ck = self.checkpoint
        if ck is not None and self.main:
            save_checkpoint(ck.path, ck.modules, self.optimizer, step,
                            extra={"loop_state": json.loads(json.dumps(self.state))})

    def _fence(self, step: int) -> bool:
        """Whether a hook that changes the data runs between step ``step - 1`` and step ``step``."""
        return any(h.changes_data and h.due(step, self.schedule.steps) for h in self.hooks)

    def _backward_and_step(self, loss: torch.Tensor, clip: list, scaler: Any) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(clip, self.grad_clip)
            self.optimizer.step()
            return
        scaler.scale(loss).backward()
        if self.grad_clip:
            scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(clip, self.grad_clip)
        scaler.step(self.optimizer)  # skipped when fp16 gradients overflowed; the scale then shrinks
        scaler.update()

    def run(self, batches: BatchFn, step_fn: StepFn) -> LoopResult:
        """``batches(step)`` gives the CPU tensors of a step, ``step_fn(step, device_batch)`` its loss."""
        total = self.schedule.steps
        start = self._start()
        scaler = self.compute.grad_scaler()
        fetch = Prefetcher(batches, self.compute, start, total, self._fence) if self.compute.prefetching else None
        clip = list(self.clip_params) if self.clip_params is not None else [
            p for g in self.optimizer.param_groups for p in g["params"]]
        every_s = self.checkpoint.every_s if self.checkpoint is not None else float("inf")
        periodic = PeriodicCheckpoint(self._save, every_s, start)
        out = LoopResult(steps=total, state=self.state)
        tails: dict[str, list[float]] = {}
        t0 = time.monotonic()
        shown = self.show_progress and self.main
        with periodic.saving_on_interrupt(), progress_bar(self.name, total, start, shown) as advance:
            try:
                self._steps(start, total, batches, step_fn, fetch, scaler, clip, out, tails, advance, periodic)
            finally:
                if fetch is not None:
                    fetch.wait()
        if start < total or self.checkpoint is not None:
            self._save(total)
        out.seconds = round(time.monotonic() - t0, 1)
        out.terms = {k: sum(v) / len(v) for k, v in tails.items() if v}
        return out

    def _steps(self, start: int, total: int, batches: BatchFn, step_fn: StepFn, fetch: Prefetcher | None,
               scaler: Any, clip: list, out: LoopResult, tails: dict[str, list[float]], advance, periodic) -> None:
        tail_from = total - max(1, total // 10)
        for step in range(start, total):
            self.optimizer.param_groups[0]["lr"] = self.schedule.lr_at(step)
            batch = fetch.get(step) if fetch is not None else self.compute.batch(batches(step))
            with self.compute.autocast():
                res = step_fn(step, batch)
            loss, terms = res if isinstance(res, tuple) else (res, {})
            require_finite(loss, self.name)
            self._backward_and_step(loss, clip, scaler)
            if self.after_step is not None:
                self.after_step(step)
            v = float(loss.detach())
            out.first_loss = v if out.first_loss is None else out.first_loss
            out.last_loss = v
            out.ema_loss = v if out.ema_loss is None else self.ema * out.ema_loss + (1 - self.ema) * v
            if step >= tail_from:
                for k, t in {"loss": loss, **terms}.items():
                    tails.setdefault(k, []).append(float(t.detach()))
            done = step + 1
            for h in self.hooks:
                if h.due(done, total):
                    h.fn(done)
            fields = {k: float(t.detach()) for k, t in terms.items()}
            advance(info=self.info(out.ema_loss, fields) if self.info else f"loss {out.ema_loss:.4f}")
            periodic.maybe(done)


def resampling_hook(dataset: Any, every: int) -> tuple[Every | None, Callable[[int], None]]:
    """A hook that replaces ``dataset``'s pool by a fresh one every ``every`` steps (round ``step // every``),
    and the matching resume function (the pool of the round a resumed run is in). ``every`` 0: neither."""

    def at(step: int) -> None:
        if every and step // every > 0 and hasattr(dataset, "resample"):
            dataset.resample(step // every)

    return (Every(every, at, changes_data=True) if every else None), at
