"""Restoration tasks, keyed by name; a new task is one :func:`register_task` call.

A :class:`Task` names:

- its synthetic degradation (a name in :mod:`ens.degradations`), used for the embedded default data
  and for ``--layout clean`` folders; ``task.degrade(clean, rng)`` applies it;
- its metric conventions, which :meth:`Task.metric_kwargs` hands to :func:`ens.metrics.psnr` /
  :func:`ens.metrics.ssim`: Y channel (BT.601, as Restormer/BasicSR) for deraining and for
  super-resolution (the SR literature's convention, with ``crop_border = scale``), RGB elsewhere;
- its default training patch size (small enough for CPU runs);
- the dataset layouts it accepts (see :mod:`ens.data.layouts`) and the public datasets they fit.

Built-in tasks:

================  ===================  =====================  =========================================
name              degradation          metric                 data as distributed
================  ===================  =====================  =========================================
``deblur``        motion_blur          RGB                    GoPro (train|test/<scene>/blur|sharp)
``derain``        rain_streaks         Y                      Rain13K, Rain100H/L (input|target)
``denoise``       gaussian_noise       RGB                    blind Gaussian, sigma 15/25/50
``denoise15``     gaussian_noise_15    RGB                    (likewise ``denoise25``, ``denoise50``)
``denoise_real``  poisson_gaussian     RGB                    SIDD (NOISY/GT pairs)
``sr_x2``         bicubic_x2           Y, crop 2              paired; ``sr_x3``: bicubic_x3, crop 3
================  ===================  =====================  =========================================

Super-resolution keeps input and output the same size (bicubic down then up; see
:mod:`ens.degradations.resize`), which is what a U-Net with a global residual needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ens.degradations import get_degradation
from ens.errors import EnsError


class UnknownTaskError(EnsError):
    """The user named a task that is not registered."""


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    degradation: str
    y_channel: bool = False
    crop_border: int = 0
    patch_size: int = 64
    scale: int = 1
    layouts: tuple[str, ...] = ("paired",)
    datasets: tuple[str, ...] = ()
    # tasks the whole held-out images are scored at, one each, where the degradation is synthesized (blind Gaussian
    # denoising at sigma 15, 25 and 50, as the papers report it); empty: this task
    eval_levels: tuple[str, ...] = ()

    def degrade(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Degrade a float32 ``[H, W, 3]`` image in [0, 1]; same shape out, in [0, 1], deterministic under rng."""
        return get_degradation(self.degradation)(clean, rng)

    @property
    def margin(self) -> int:
        """Pixels the degradation reads around a patch (the data pipeline crops this much extra)."""
        return get_degradation(self.degradation).margin

    def metric_kwargs(self) -> dict[str, object]:
        """Keyword arguments for :func:`ens.metrics.psnr` and :func:`ens.metrics.ssim`."""
        return {"y_channel": self.y_channel, "crop_border": self.crop_border}

    @property
    def metric_description(self) -> str:
        s = "PSNR/SSIM on Y (BT.601)" if self.y_channel else "PSNR/SSIM on RGB"
        return s + (f", border {self.crop_border} px cropped" if self.crop_border else "")


_TASKS: dict[str, Task] = {}


def register_task(task: Task, *, replace: bool = False) -> Task:
    """Add a task to the registry (``replace=True`` to redefine one). Returns the task."""
    if not task.name or task.name != task.name.strip().lower() or " " in task.name:
        raise ValueError(f"a task name is one lower-case word, got {task.name!r}")
    if task.name in _TASKS and not replace:
        raise ValueError(f"task {task.name!r} is already registered")
    get_degradation(task.degradation)  # KeyError for an unknown degradation
    if task.patch_size <= 0 or task.patch_size % task.scale:
        raise ValueError(f"task {task.name!r}: patch_size must be a positive multiple of scale {task.scale}")
    _TASKS[task.name] = task
    return task


def get_task(name: str | Task) -> Task:
    """The registered task of that name (a :class:`Task` is returned as is)."""
    if isinstance(name, Task):
        return name
    key = str(name).strip().lower()
    try:
        return _TASKS[key]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r} (choose from {', '.join(_TASKS)})") from None


def list_tasks() -> list[Task]:
    """Registered tasks, in registration order."""
    return list(_TASKS.values())


register_task(
    Task(
        name="deblur",
        description="motion deblurring (camera shake)",
        degradation="motion_blur",
        layouts=("gopro", "paired"),
        datasets=("GoPro",),
    )
)
register_task(
    Task(
        name="derain",
        description="rain-streak removal; Y-channel PSNR/SSIM as Restormer reports it",
        degradation="rain_streaks",
        y_channel=True,
        layouts=("paired",),
        datasets=("Rain13K", "Rain100H", "Rain100L", "Test100", "Test1200", "Test2800"),
    )
)
register_task(
    Task(
        name="denoise",
        description="blind Gaussian colour denoising, sigma 15/25/50",
        degradation="gaussian_noise",
        layouts=("sidd", "paired"),
        datasets=("CBSD68/Kodak24/McMaster/Urban100 with --layout clean", "SIDD"),
        eval_levels=("denoise15", "denoise25", "denoise50"),
    )
)
for _sigma in (15, 25, 50):
    register_task(
        Task(
            name=f"denoise{_sigma}",
            description=f"Gaussian colour denoising, sigma {_sigma}",
            degradation=f"gaussian_noise_{_sigma}",
            layouts=("sidd", "paired"),
            datasets=("CBSD68/Kodak24/McMaster/Urban100 with --layout clean",),
        )
    )
register_task(
    Task(
        name="denoise_real",
        description="real camera noise (Poisson-Gaussian, demosaicked, 8-bit sRGB)",
        degradation="poisson_gaussian",
        layouts=("sidd", "paired"),
        datasets=("SIDD",),
    )
)
for _scale, _patch in ((2, 64), (3, 48)):
    register_task(
        Task(
            name=f"sr_x{_scale}",
            description=f"x{_scale} super-resolution (bicubic LR upsampled to the HR size)",
            degradation=f"bicubic_x{_scale}",
            y_channel=True,
            crop_border=_scale,
            patch_size=_patch,
            scale=_scale,
            layouts=("paired",),
            datasets=("DIV2K", "Set5", "Set14", "B100", "Urban100"),
        )
    )

__all__ = ["Task", "UnknownTaskError", "get_task", "list_tasks", "register_task"]
