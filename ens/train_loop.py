"""One training loop for every trainer in ``ens``: the teacher, the distillation, the in-context
calibration, a trial's fine-tune, FP32 fine-tuning and QAT.

A trainer gives a *step function* (``step -> loss`` or ``step -> (loss, {term: value})``) and a
:class:`Schedule`; the loop owns the rest: the learning rate, backward, gradient clipping, the
finiteness check, the progress bar, periodic and Ctrl-C checkpoints (safetensors, resumable), and
hooks that run every N steps (pool resampling, held-out curves). Device and autocast live here too,
in :meth:`Loop.autocast`, so that one place decides them for every trainer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ens.training import (
    PeriodicCheckpoint,
    cosine_lr,
    load_checkpoint,
    progress_bar,
    require_finite,
    save_checkpoint,
)

StepOutput = torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]
StepFn = Callable[[int], StepOutput]


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
    the last step too when ``at_end``."""

    n: int
    fn: Callable[[int], None]
    at_end: bool = False

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
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None  # None: full precision
    state: dict[str, Any] = field(default_factory=dict)

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

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
        if ck is not None:
            save_checkpoint(ck.path, ck.modules, self.optimizer, step,
                            extra={"loop_state": json.loads(json.dumps(self.state))})

    def run(self, step_fn: StepFn) -> LoopResult:
        total = self.schedule.steps
        start = self._start()
        clip = list(self.clip_params) if self.clip_params is not None else [
            p for g in self.optimizer.param_groups for p in g["params"]]
        every_s = self.checkpoint.every_s if self.checkpoint is not None else float("inf")
        periodic = PeriodicCheckpoint(self._save, every_s, start)
        out = LoopResult(steps=total, state=self.state)
        tail_from = total - max(1, total // 10)
        tails: dict[str, list[float]] = {}
        t0 = time.monotonic()
        with periodic.saving_on_interrupt(), progress_bar(self.name, total, start, self.show_progress) as advance:
            for step in range(start, total):
                self.optimizer.param_groups[0]["lr"] = self.schedule.lr_at(step)
                with self.autocast():
                    res = step_fn(step)
                loss, terms = res if isinstance(res, tuple) else (res, {})
                require_finite(loss, self.name)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.grad_clip:
                    torch.nn.utils.clip_grad_norm_(clip, self.grad_clip)
                self.optimizer.step()
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
        if start < total or self.checkpoint is not None:
            self._save(total)
        out.seconds = round(time.monotonic() - t0, 1)
        out.terms = {k: sum(v) / len(v) for k, v in tails.items() if v}
        return out


def resampling_hook(dataset: Any, every: int) -> tuple[Every | None, Callable[[int], None]]:
    """A hook that replaces ``dataset``'s pool by a fresh one every ``every`` steps (round ``step // every``),
    and the matching resume function (the pool of the round a resumed run is in). ``every`` 0: neither."""

    def at(step: int) -> None:
        if every and step // every > 0 and hasattr(dataset, "resample"):
            dataset.resample(step // every)

    return (Every(every, at) if every else None), at
