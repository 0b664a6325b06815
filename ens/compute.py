"""Where and how ``ens`` trains: the device, mixed precision, memory layout, compilation and batch prefetch.

One :class:`Compute` value travels to every trainer (teacher, distillation, calibration, fine-tuning, QAT) and
to evaluation; ``--device``, ``--amp`` and ``--compile`` on ``ens zoo build``, ``ens search`` and
``ens finalize`` make it with :func:`make_compute`.

- ``--device auto`` is ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``. Inside a Ray trial that
  asked for GPUs (``--gpus-per-trial``), Ray has already narrowed ``CUDA_VISIBLE_DEVICES`` to the GPUs it
  assigned (and emptied it for trials without GPUs), so ``cuda`` there is the trial's own GPU.
- ``--amp auto`` is bf16 autocast on a CUDA device that supports bf16, fp16 (with a gradient scaler) on one
  that does not, and full precision on the CPU (this CPU has no bf16 units; autocast there is slower).
- Weights stay device-neutral: every checkpoint and zoo is written from CPU copies (``ens.training``), and
  loaded with ``load_state_dict`` into a model on any device.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ens.errors import EnsError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto|cpu|cuda|cuda:N`` as a torch device; a one-line :class:`EnsError` when CUDA is asked for and
    missing, or the index is past the last GPU."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "auto").strip().lower()
    if text == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        text = "cuda"
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index = text[5:]
        if text.startswith("cuda:") and not index.isdigit():
            raise EnsError(f"--device {spec}: expected {DEVICE_CHOICES}")
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA" if torch.version.cuda is None
                   else "no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)")
            raise EnsError(f"--device {spec}: CUDA is not available here: {why}; use --device cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise EnsError(f"--device {spec}: there are {torch.cuda.device_count()} CUDA device(s) "
                           f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
        return torch.device("cuda", int(index)) if index else torch.device("cuda", torch.cuda.current_device())
    raise EnsError(f"--device {spec}: expected {DEVICE_CHOICES}")


def resolve_amp(amp: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` on ``device`` (None: full precision)."""
    text = (amp or "auto").strip().lower()
    if text not in AMP_CHOICES:
        raise EnsError(f"--amp {amp}: expected one of {', '.join(AMP_CHOICES)}")
    if text == "off":
        return None
    if text == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if text == "fp16" and device.type != "cuda":
        raise EnsError("--amp fp16 needs a CUDA device (its gradient scaler is CUDA's); use --amp bf16 or off")
    return _AMP_DTYPES[text]


@dataclass(frozen=True)
class Compute:
    """How one process trains and evaluates: device, autocast dtype, layout, compilation, prefetch."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: torch.dtype | None = None
    # channels-last: PyTorch's CPU depthwise convs run several times faster in it (8x84x32x32 depthwise 3x3:
    # 6.0 ms NCHW vs 0.7 ms NHWC, measured in an earlier session); cuDNN's tensor-core convs want it too
    channels_last: bool = True
    compile: bool = False
    prefetch: bool | None = None  # build the next batch in a thread while this one trains (None: on CUDA only)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def prefetching(self) -> bool:
        return self.cuda if self.prefetch is None else self.prefetch

    def autocast(self):
        if self.amp is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def grad_scaler(self) -> Any:
        """A gradient scaler for fp16 autocast (bf16 and full precision need none)."""
        if self.amp is torch.float16:
            return torch.amp.GradScaler(self.device.type)
        return None

    def module(self, m: nn.Module) -> nn.Module:
        """``m`` moved to the device (in place), channels-last when the layout asks for it."""
        m.to(self.device)
        return m.to(memory_format=torch.channels_last) if self.channels_last else m

    def forward_of(self, m: nn.Module) -> Callable[..., Any]:
        """What to call for ``m``'s forward pass: ``torch.compile(m)`` with ``--compile``, else ``m``. The
        compiled wrapper shares ``m``'s parameters, so checkpoints and optimizers keep using ``m``."""
        return torch.compile(m) if self.compile else m

    def tensor(self, t: torch.Tensor) -> torch.Tensor:
        """A batch tensor on the device (4-D ones channels-last when the layout asks for it)."""
        t = t.to(self.device, non_blocking=self.cuda)
        if self.channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def batch(self, tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(self.tensor(t) for t in tensors)

    def describe(self) -> str:
        name = str(self.device)
        if self.cuda:
            name += f" ({torch.cuda.get_device_name(self.device)})"
        parts = [name, {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[self.amp]]
        if self.compile:
            parts.append("torch.compile")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"device": str(self.device), "amp": None if self.amp is None else str(self.amp).split(".")[-1],
                "channels_last": self.channels_last, "compile": self.compile}


CPU = Compute()


def make_compute(device: str | torch.device | None = "auto", amp: str | None = "auto", compile: bool = False,
                 prefetch: bool | None = None) -> Compute:
    dev = resolve_device(device)
    out = Compute(device=dev, amp=resolve_amp(amp, dev), compile=compile, prefetch=prefetch)
    if out.cuda:
        torch.backends.cudnn.benchmark = True  # training patches keep one shape: let cuDNN pick its fastest convs
    return out


def model_device(m: nn.Module | None) -> torch.device:
    """The device of ``m``'s first parameter or buffer (CPU for none)."""
    if m is None:
        return torch.device("cpu")
    for t in m.parameters():
        return t.device
    for t in m.buffers():
        return t.device
    return torch.device("cpu")


class Prefetcher:
    """Batches of steps ``start..total-1`` from ``make(step)`` (CPU tensors), each built in a worker thread while
    the step before it trains, pinned on CUDA, and handed over on the device.

    ``fence(step)`` says the batch of ``step`` must not be built before step ``step - 1`` has finished (a hook
    that changes the data, such as a pool resample, runs between them): such a batch is built when asked for.
    The batches are the ones ``make`` gives without prefetch, whatever the timing.
    """

    def __init__(self, make: Callable[[int], tuple[torch.Tensor, ...]], compute: Compute, start: int, total: int,
                 fence: Callable[[int], bool] = lambda step: False) -> None:
        self.make, self.compute, self.total, self.fence = make, compute, total, fence
        self._next: tuple[int, threading.Thread, dict[str, Any]] | None = None
        self._start = start

    def _build(self, step: int) -> tuple[torch.Tensor, ...]:
        out = self.make(step)
        if self.compute.cuda:
            out = tuple(t.pin_memory() for t in out)
        return out

    def _launch(self, step: int) -> None:
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["batch"] = self._build(step)
            except BaseException as exc:  # re-raised in the training thread
                box["error"] = exc

        th = threading.Thread(target=work, name=f"ens-prefetch-{step}", daemon=True)
        th.start()
        self._next = (step, th, box)

    def get(self, step: int) -> tuple[torch.Tensor, ...]:
        """The device batch of ``step``; starts building the one after it when that one may be built now."""
        if self._next is not None and self._next[0] == step:
            _, th, box = self._next
            th.join()
            self._next = None
            if "error" in box:
                raise box["error"]
            cpu = box["batch"]
        else:
            self.wait()
            cpu = self._build(step)
        if step + 1 < self.total and not self.fence(step + 1):
            self._launch(step + 1)
        return self.compute.batch(cpu)

    def wait(self) -> None:
        """Let a batch in flight finish (before the data changes, or when the loop ends)."""
        if self._next is not None:
            self._next[1].join()
            self._next = None

