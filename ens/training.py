"""Pieces every training loop here shares: losses, schedule, safetensors checkpoints, progress."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from safetensors.torch import load_file, save_file
from torch import nn

from ens.errors import EnsError


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """mean(sqrt((pred - target)^2 + eps^2)), the restoration papers' robust L1."""
    return torch.sqrt((pred - target).pow(2) + eps * eps).mean()


def cosine_lr(step: int, total: int, base_lr: float, warmup: int = 0, min_ratio: float = 0.01) -> float:
    if warmup and step < warmup:
        return base_lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The dataset indices of batch ``step``: a pure function of (seed, step), so resumes replay exactly."""
    return np.random.default_rng([seed, step]).integers(0, n, size=batch_size)


def stack_batch(dataset: Any, idx: Sequence[int], step: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack dataset items; ``step`` re-draws the per-item flips/rotations of augmenting datasets."""
    if step is not None and hasattr(dataset, "set_epoch"):
        dataset.set_epoch(step)
    pairs = [dataset[int(i)] for i in idx]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


# -- checkpoints ---------------------------------------------------------------------------------
def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None):
    """safetensors written to a unique temporary file beside ``path``, fsynced, then renamed into place."""
    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_file(data, str(tmp), metadata=metadata))


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, lambda tmp: tmp.write_text(text))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` to a unique name in ``path``'s folder, fsync it, rename it to ``path``, fsync the folder:
    a crash leaves the old file or the new one, never half of one, and two writers never share a temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make shared zoos and reports unreadable
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(path: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                    step: int, extra: dict[str, Any] | None = None) -> None:
    """Model(s) and AdamW state as safetensors (never pickle); the rest as JSON metadata."""
    tensors: dict[str, torch.Tensor] = {}
    for prefix, m in modules.items():
        tensors.update({f"model.{prefix}.{k}": v for k, v in m.state_dict().items()})
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            tensors[f"optim.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    meta = {"step": step, "param_groups": opt["param_groups"], "extra": extra or {}}
    atomic_save_tensors(tensors, path, metadata={"ens": json.dumps(meta)})


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint was saved at (read from its metadata, no tensors loaded)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return int(json.loads(f.metadata()["ens"])["step"])


def load_checkpoint(path: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["ens"])
    tensors = load_file(str(path))
    for prefix, m in modules.items():
        p = f"model.{prefix}."
        m.load_state_dict({k[len(p):]: v for k, v in tensors.items() if k.startswith(p)})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


class PeriodicCheckpoint:
    """Calls ``save(step)`` when ``every_s`` seconds have passed since the last save, and once more if
    the loop inside :meth:`saving_on_interrupt` is stopped by Ctrl-C, so no finished step is lost."""

    def __init__(self, save: Callable[[int], None], every_s: float = 120.0, start: int = 0) -> None:
        self.save, self.every_s, self.last = save, every_s, time.monotonic()
        self.done = self.saved = start

    def maybe(self, step: int) -> None:
        self.done = step
        if time.monotonic() - self.last >= self.every_s:
            self.save(step)
            self.saved, self.last = step, time.monotonic()

    @contextmanager
    def saving_on_interrupt(self) -> Iterator[None]:
        try:
            yield
        except KeyboardInterrupt:
            if self.done > self.saved:
                self.save(self.done)  # atomic: a second Ctrl-C here leaves the previous checkpoint
                self.saved = self.done
            raise


PLAIN_PROGRESS_EVERY_S = 60.0  # a progress line at most this often when the output is not a terminal


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def plain_progress(description: str, total: int, completed: int = 0,
                   every_s: float | None = None) -> Callable[..., None]:
    """``advance(n=1, info="")`` that prints one line (done/total, info, elapsed, time left) at most every
    ``every_s`` seconds and at the end: the progress of a run whose output goes to a log file, where a live bar
    would show nothing until it finishes."""
    every = PLAIN_PROGRESS_EVERY_S if every_s is None else every_s
    start, first = time.monotonic(), completed
    state = {"done": completed, "last": start}

    def advance(n: int = 1, info: str = "") -> None:
        state["done"] += n
        now, done = time.monotonic(), state["done"]
        if now - state["last"] < every and done < total:
            return
        state["last"] = now
        elapsed = now - start
        rate = (done - first) / elapsed if elapsed > 0 else 0.0
        left = f", about {_clock((total - done) / rate)} left" if rate > 0 and done < total else ""
        print(f"{description} {done}/{total}{' ' + info if info else ''} ({_clock(elapsed)} elapsed{left})",
              flush=True)

    return advance


@contextmanager
def progress_bar(
    description: str, total: int, completed: int = 0, enabled: bool = True
) -> Iterator[Callable]:
    """A rich progress bar; yields ``advance(n=1, **fields)``; silent when not enabled; plain lines now and then
    (:func:`plain_progress`) when the output is not a terminal."""
    if not enabled:
        yield lambda *a, **k: None
        return
    if not Console().is_terminal:
        yield plain_progress(description, total, completed)
        return
    prog = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )
    with prog:
        tid = prog.add_task(description, total=total, completed=completed, info="")

        def advance(n: int = 1, info: str = "") -> None:
            prog.update(tid, advance=n, info=info)

        yield advance


def require_finite(loss: torch.Tensor, what: str) -> None:
    if not torch.isfinite(loss):
        raise EnsError(f"{what}: the loss became {float(loss.detach())}; lower the learning rate or check the data")
