"""``ens zoo build``: teacher, distilled surrogates, in-context calibration, quality report.

Everything is written into a work folder with safetensors checkpoints (so an interrupted build
resumes where it stopped), and the finished zoo is assembled in a temporary folder that is renamed
into place in one step: a zoo folder is either complete or absent.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import ens
from blocks.registry import block_kinds
from blocks.unet import HybridUNet, UNetConfig, get_preset
from ens.compute import CPU, Compute
from ens.data.check import check_dataset_once
from ens.errors import EnsError
from ens.tasks import Task, get_task
from ens.training import atomic_save_tensors, atomic_write_text, checkpoint_step, seed_everything
from ens.zoo.distill import (
    DistillRecipe,
    calibrate_in_context,
    distill_surrogates,
    distilled_blocks,
    relative_errors,
)
from ens.zoo.manifest import MANIFEST, QUALITY_JSON, QUALITY_MD, WEIGHTS, ZooManifest, slots_of
from ens.zoo.quality import quality_markdown, quality_report
from ens.zoo.rank import rank_fidelity
from ens.zoo.store import Zoo, file_sha256
from ens.zoo.teacher import TeacherRecipe, held_out_curve, train_teacher
from studies.lock import WaitingLock

SURROGATE_KINDS: tuple[str, ...] = ("M", "E", "S", "L", "I", "F", "G", "D")


@dataclass(frozen=True)
class ZooRecipe:
    teacher: TeacherRecipe = field(default_factory=TeacherRecipe)
    distill: DistillRecipe = field(default_factory=DistillRecipe)
    patch_size: int = 64
    train_patches: int = 512
    val_patches: int | None = None  # None: the loader's fixed default split
    quality_mixed: int = 8
    quality_images: int = 8  # whole held-out images the quality report and the curve use (the first N)
    quality_crop: int | None = None  # centre-crop them to at most this many px a side (None: whole; tests only)
    rank_archs: int = 16  # random hybrids in the rank-fidelity check (0: skip it)
    rank_finetune_steps: int = 100  # end-to-end fine-tuning steps per hybrid in that check


RECIPES: dict[str, ZooRecipe] = {
    # tiny: a long build, run once (the prebuilt zoos; their manifests hold the exact commands). The teacher
    # draws a fresh pool of patches every 250 steps: on one fixed pool of 1024 deblur patches it over-fitted
    # (3000 steps ended 1.43 dB below the blurred input). Distillation with the downstream term
    # (ens.zoo.distill) at 4e-3, no in-context calibration: on denoise, 400 steps gave all-M / all-E / mixed
    # -1.07 / -1.19 / -0.72 dB of the teacher and 2000 steps -0.77 / -0.70 / -0.49 dB; calibration after the
    # downstream term made M and mixed worse.
    "tiny": ZooRecipe(TeacherRecipe(steps=6000, batch_size=8, resample_every=250,
                                    curve_at=(600, 1500, 3000, 6000, 10000)),
                      DistillRecipe(steps=2000, lr=4e-3, calib_steps=0, resample_every=250),
                      patch_size=48, train_patches=512),
    "small": ZooRecipe(TeacherRecipe(steps=6000, batch_size=8), DistillRecipe(steps=2000, calib_steps=1000),
                       patch_size=96, train_patches=4096),
    "paper": ZooRecipe(TeacherRecipe(steps=300000, batch_size=8, lr=3e-4, warmup=1000),
                       DistillRecipe(steps=50000, lr=5e-4, calib_steps=10000, calib_lr=1e-4),
                       patch_size=128, train_patches=20000),
}


@contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    """Records the seconds the ``with`` body took under ``seconds[stage]`` (this run only, not resumed parts)."""
    t = time.monotonic()
    yield
    seconds[stage] = round(time.monotonic() - t, 1)


def _resuming(ckpt: Path) -> str:
    return f" (resuming at step {checkpoint_step(ckpt)})" if ckpt.is_file() else ""


def zoo_name(task: str, preset: str) -> str:
    return f"{task}-{preset}"


def default_zoo_dir(root: str | Path, task: str, preset: str) -> Path:
    return Path(root) / zoo_name(task, preset)


def versions() -> dict[str, str]:
    out = {"ens": ens.__version__, "torch": torch.__version__, "python": platform.python_version()}
    for mod in ("onnxruntime", "optuna", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out


def _recipe_for(r: ZooRecipe, teacher_steps: int | None, distill_steps: int | None,
                calib_steps: int | None, rank_steps: int | None = None,
                context_weight: float | None = None, distill_patch: int | None = None,
                distill_batch: int | None = None, distill_lr: float | None = None,
                distill_slots: Sequence[str] = ()) -> ZooRecipe:
    t, d = r.teacher, r.distill
    if rank_steps is not None:
        r = replace(r, rank_finetune_steps=rank_steps, rank_archs=r.rank_archs if rank_steps else 0)
    if teacher_steps is not None:
        t = replace(t, steps=teacher_steps, warmup=min(t.warmup, max(teacher_steps // 10, 1)))
    given = {"steps": distill_steps, "calib_steps": calib_steps, "context_weight": context_weight,
             "patch_size": distill_patch, "batch_size": distill_batch, "lr": distill_lr,
             "slots": tuple(distill_slots) or None}
    d = replace(d, **{k: v for k, v in given.items() if v is not None})
    return replace(r, teacher=t, distill=d)


def _check_work_spec(work: Path, spec: dict) -> None:
    path = work / "spec.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != spec:
            diff = sorted(k for k in spec if old.get(k) != spec[k])
            raise EnsError(
                f"an interrupted build with other settings ({', '.join(diff)}) is in {work}; "
                f"re-run with the same settings to resume, or delete that folder"
            )
    else:
        atomic_write_text(path, json.dumps(spec, indent=2))


def build_zoo(
    task: str | Task,
    preset: str = "tiny",
    data_dir: str | Path | None = None,
    out_root: str | Path = "zoo",
    seed: int = 0,
    teacher_steps: int | None = None,
    distill_steps: int | None = None,
    calib_steps: int | None = None,
    kinds: Sequence[str] = SURROGATE_KINDS,
    config: UNetConfig | None = None,
    recipe: ZooRecipe | None = None,
    force: bool = False,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
    rank_steps: int | None = None,
    threads: int | None = None,
    quality_crop: int | None = None,
    base: str | Path | None = None,
    compute: Compute = CPU,
    gpus: int = 1,
    refine: Sequence[str] = (),
    context_weight: float | None = None,
    distill_patch: int | None = None,
    distill_batch: int | None = None,
    distill_lr: float | None = None,
    distill_slots: Sequence[str] = (),
) -> Path:
    """Build (or resume building) the zoo for (task, preset) on ``compute``'s device; returns its folder.

    ``gpus`` > 1 trains the teacher data-parallel over that many GPUs of this machine (:mod:`ens.zoo.parallel`).
    A build interrupted on one device resumes on another: every checkpoint is device-neutral safetensors.

    ``base``: an existing zoo of the same task and preset whose teacher and surrogates are kept; only the
    ``kinds`` it lacks are distilled, then the report is remade for every kind (``ens zoo build --from-zoo``).
    ``refine``: kinds of ``base`` whose surrogates are distilled further, starting from their weights in ``base``
    (``--refine``; the distillation budget is the limit of a CPU-built zoo, measured in issue 16). With ``T``
    among them the teacher first trains ``teacher_steps`` more steps from its weights (its held-out curve goes
    on from the steps it had), and then every surrogate kind is distilled further, since their target moved.
    ``distill_slots``: with ``refine``, only these block positions ("ref", "dec1.0") are distilled further; the
    others keep their weights (``--distill-slots``)."""
    task = get_task(task)
    try:
        cfg = config or get_preset(preset)
    except KeyError as exc:
        raise EnsError(str(exc.args[0])) from None
    unknown = [k for k in kinds if k not in block_kinds() or k == "T"]
    if unknown:
        raise EnsError(f"--kinds: {', '.join(unknown)} is not a surrogate kind (choose from "
                       f"{', '.join(k for k in block_kinds() if k != 'T')})")
    from ens.zoo.parallel import check_world

    check_world(gpus, compute)
    base_zoo = _base_zoo(base, task, preset) if base is not None else None
    refine = tuple(dict.fromkeys(refine))
    if refine:
        _check_refine(refine, base_zoo)
    if base_zoo is not None:
        cfg = base_zoo.config
    if context_weight is not None and context_weight < 0:
        raise EnsError(f"--context-weight must be >= 0, got {context_weight:g}")
    if distill_batch is not None and distill_batch < 1:
        raise EnsError(f"--distill-batch must be >= 1, got {distill_batch}")
    if distill_lr is not None and not distill_lr > 0:
        raise EnsError(f"--distill-lr must be > 0, got {distill_lr:g}")
    distill_slots = tuple(dict.fromkeys(distill_slots))
    if distill_slots:
        _check_distill_slots(distill_slots, cfg, refine)
    recipe = _recipe_for(recipe or RECIPES.get(preset, RECIPES["tiny"]), teacher_steps, distill_steps, calib_steps,
                         rank_steps, context_weight, distill_patch, distill_batch, distill_lr, distill_slots)
    if quality_crop is not None:
        recipe = replace(recipe, quality_crop=quality_crop)
    out_root = Path(out_root)
    final = default_zoo_dir(out_root, task.name, preset)
    if (final / MANIFEST).is_file() and not force:
        log(f"zoo {final} already exists (use --force to rebuild)")
        return final
    if data_dir is not None:  # a bad file in either split: an error before the work folder exists
        check_dataset_once(task, data_dir, recipe.patch_size, log)
    out_root.mkdir(parents=True, exist_ok=True)
    # two processes (say, two first searches) building the same zoo: the second waits, then uses it
    with WaitingLock(out_root / f".{zoo_name(task.name, preset)}.lock", f"zoo {final}", log):
        if (final / MANIFEST).is_file() and not force:
            log(f"zoo {final} was built meanwhile by another process")
            return final
        run = BuildRun(task, preset, cfg, recipe, seed, show_progress, log, compute, gpus, threads, data_dir)
        return _build(run, data_dir, out_root, final, kinds, base_zoo, refine)


def _check_refine(refine: Sequence[str], base: Zoo | None) -> None:
    if base is None:
        raise EnsError("--refine continues training a zoo's teacher or distilling its surrogates: name that zoo "
                       "with --from-zoo")
    bad = [k for k in refine if k not in base.manifest.kinds]
    if bad:
        raise EnsError(f"--refine: {', '.join(bad)} is not a surrogate kind of zoo {base.zoo_id} (it has "
                       f"{', '.join(k for k in base.manifest.kinds if k != 'T')})")


def _check_distill_slots(slots: Sequence[str], cfg: UNetConfig, refine: Sequence[str]) -> None:
    if not refine or "T" in refine:
        raise EnsError("--distill-slots distils some block positions further and keeps the others: it needs "
                       "--from-zoo and --refine with surrogate kinds only (a moved teacher needs every slot)")
    names = [f"{d['stage']}.{d['index']}" for d in slots_of(cfg)]
    stages = list(dict.fromkeys(n.split(".")[0] for n in names))
    bad = [s for s in slots if s not in names and s not in stages]
    if bad:
        raise EnsError(f"--distill-slots: {', '.join(bad)} is not a block position of this U-Net (stages "
                       f"{', '.join(stages)}; or one block, e.g. {names[-1]})")


def _base_zoo(base: str | Path, task: Task, preset: str) -> Zoo:
    zoo = Zoo.load(base)
    if (zoo.manifest.task, zoo.manifest.preset) != (task.name, preset):
        raise EnsError(f"--from-zoo {base} is a {zoo.manifest.task}-{zoo.manifest.preset} zoo, not "
                       f"{task.name}-{preset}")
    return zoo


@dataclass
class BuildRun:
    """One build's settings, and what its stages share (the work folder, the seconds per stage)."""

    task: Task
    preset: str
    cfg: UNetConfig
    recipe: ZooRecipe
    seed: int
    show_progress: bool
    log: Callable[[str], None]
    compute: Compute = CPU
    gpus: int = 1
    threads: int | None = None
    data_dir: str | Path | None = None
    work: Path = Path(".")
    seconds: dict[str, float] = field(default_factory=dict)


def _build(run: BuildRun, data_dir, out_root: Path, final: Path, kinds: Sequence[str], base: Zoo | None = None,
           refine: Sequence[str] = ()) -> Path:
    task, preset, cfg, recipe, seed, log = run.task, run.preset, run.cfg, run.recipe, run.seed, run.log
    t0 = time.monotonic()
    work = run.work = out_root / f".{zoo_name(task.name, preset)}.work"
    work.mkdir(parents=True, exist_ok=True)
    data_source = str(Path(data_dir).resolve()) if data_dir else "embedded:scikit-image"
    _check_work_spec(work, {"task": task.name, "preset": preset, "config": cfg.to_dict(), "seed": seed,
                            "kinds": list(kinds), "data": data_source, "base": base.zoo_id if base else None,
                            "refine": list(refine),
                            "recipe": json.loads(json.dumps(asdict(recipe)))})
    seed_everything(seed)
    torch.set_num_threads(run.threads or max(1, os.cpu_count() or 1))
    log(f"training on {run.compute.describe()}" + (f", teacher data-parallel over {run.gpus} processes"
                                                  if run.gpus > 1 else ""))
    data = _load_data(task, data_dir, recipe, seed, data_source, log)
    seconds = run.seconds
    if base is None:
        teacher, t_stats = _teacher_stage(run, data)
        init, train_kinds = teacher.state_dict(), list(kinds)
    else:
        kinds = [*[k for k in base.manifest.kinds if k != "T"], *[k for k in kinds if k not in base.manifest.kinds]]
        new = [k for k in kinds if k not in base.manifest.kinds]
        if "T" in refine:  # the teacher moves, so every surrogate is distilled further towards it
            refine = ["T", *[k for k in base.manifest.kinds if k != "T"]]
            teacher, t_stats = _teacher_stage(run, data, base)
            init = {**base.state, **teacher.state_dict()}
        else:
            init, t_stats = base.state, {}
            seconds["teacher"] = 0.0
        train_kinds = [*new, *[k for k in refine if k != "T"]]
        log(f"[1/5] teacher and {', '.join(base.manifest.kinds[1:])} from zoo {base.zoo_id}"
            + (f"; {', '.join(refine)} trained further from there" if refine else ""))
    supernet = _surrogate_stages(run, init, kinds, train_kinds, data)
    report, rel = _report_stages(run, supernet, kinds, data)
    report["teacher_curve"] = ([] if base is None else base.manifest.teacher.get("curve", [])) + held_out_curve(
        t_stats.pop("curve", []), report["input"]["psnr"])
    wall = round(time.monotonic() - t0, 1)
    manifest = ZooManifest(
        zoo_id=f"{zoo_name(task.name, preset)}-s{seed}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}",
        task=task.name, preset=preset, config=cfg.to_dict(), kinds=["T", *kinds], slots=slots_of(cfg),
        patch_size=recipe.patch_size, val_patches=recipe.val_patches, data_source=data_source, seed=seed,
        teacher=_teacher_record(recipe.teacher, t_stats, base) | {
                     "val": report["teacher"], "input_val": report["input"], "held_out": "whole images",
                     "curve": report["teacher_curve"], "seconds": seconds["teacher"]},
        distill={"steps": recipe.distill.steps, "loss": _distill_loss(recipe.distill),
                 "patch_size": recipe.distill.patch_size or recipe.patch_size, "batch_size": recipe.distill.batch_size,
                 "resample_every": recipe.distill.resample_every, "kinds": train_kinds, "lr": recipe.distill.lr,
                 **({"slots": list(recipe.distill.slots)} if recipe.distill.slots else {}),
                 **({"refined": list(refine)} if refine else {}),
                 "relative_error": rel, "seconds": seconds["distill"]}
        | ({"base": {k: v for k, v in base.manifest.distill.items() if k != "relative_error"}} if base else {}),
        calibration={"steps": recipe.distill.calib_steps, "loss": _calib_loss(recipe.distill.calib_clean_weight),
                     "seconds": seconds["calibration"], "quality_report_seconds": seconds["quality_report"]},
        rank={k: v for k, v in report.get("rank", {}).items() if k != "archs"} | {"seconds": seconds["rank"]},
        versions=versions(),
        wall_time_s=wall,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        build=_build_record(task.name, preset, data_dir, out_root, seed, recipe, kinds, base, wall, seconds, refine)
        | {"compute": run.compute.to_dict(), "gpus": run.gpus},
    )
    _publish(final, supernet.cpu(), manifest, report, rel)
    shutil.rmtree(work, ignore_errors=True)
    log(f"zoo written to {final} in {manifest.wall_time_s:.0f} s")
    return final


@dataclass
class ZooData:
    train: Any  # a resampling pool of training patches
    val_patches: Any  # the held-out patches: the quick check, and the inputs of the relative errors
    val_full: list  # whole held-out images (the first ``quality_images``): the report and the curve
    distill_train: Any = None  # the surrogates' training pool (``train`` unless the distillation patch differs)

    def __post_init__(self) -> None:
        if self.distill_train is None:
            self.distill_train = self.train


def _load_data(task: Task, data_dir, recipe: ZooRecipe, seed: int, source: str, log,
               distill: bool = True) -> ZooData:
    from ens.data import load_pairs

    data = ZooData(
        load_pairs(task, data_dir, "train", patch_size=recipe.patch_size, seed=seed, num_patches=recipe.train_patches),
        load_pairs(task, data_dir, "val", patch_size=recipe.patch_size, seed=seed, num_patches=recipe.val_patches),
        held_out_images(task, data_dir, recipe.quality_images, recipe.quality_crop))
    dp = recipe.distill.patch_size
    if distill and dp is not None and dp != recipe.patch_size:
        data.distill_train = load_pairs(task, data_dir, "train", patch_size=dp, seed=seed,
                                        num_patches=distill_pool_size(recipe.train_patches, recipe.patch_size, dp))
        log(f"distillation on pools of {len(data.distill_train)} training patches of {dp} px")
    every = recipe.teacher.resample_every
    log(f"data: {source}: pools of {len(data.train)} training patches"
        + (f" (a fresh pool every {every} steps)" if every else "")
        + f", {len(data.val_full)} whole held-out images, {len(data.val_patches)} held-out patches (quick check)")
    return data


def distill_pool_size(train_patches: int, patch: int, distill_patch: int) -> int:
    """Patches in a distillation pool of ``distill_patch`` px: as many pixels as the teacher's pool, at least 64."""
    return max(64, round(train_patches * (patch / distill_patch) ** 2))


def _rank_data(task: str, data_dir, recipe: ZooRecipe, seed: int) -> tuple[Any, list]:
    """A data-parallel rank's own copy of the training pool and the held-out images (same seed, same pools)."""
    data = _load_data(get_task(task), data_dir, recipe, seed, "", lambda s: None, distill=False)
    return data.train, data.val_full


def _teacher_record(recipe: TeacherRecipe, t_stats: dict, base: Zoo | None) -> dict:
    """The manifest's teacher entry: a new teacher's recipe, a base zoo's kept as it was, or a base zoo's
    trained ``recipe.steps`` further (its ``steps`` then count both runs)."""
    if base is None:
        return {"steps": recipe.steps, "loss": "charbonnier", "resample_every": recipe.resample_every, **t_stats}
    had = dict(base.manifest.teacher)
    if not t_stats:
        return had
    before = int(had.get("steps", 0))
    return had | t_stats | {"steps": before + recipe.steps, "resample_every": recipe.resample_every,
                            "continued": [*had.get("continued", []),
                                          {"from": base.zoo_id, "from_steps": before, "steps": recipe.steps,
                                           "lr": recipe.lr, "warmup": recipe.warmup}]}


def _teacher_stage(run: BuildRun, data: ZooData, base: Zoo | None = None) -> tuple[HybridUNet, dict]:
    """A new teacher, or with ``base`` that zoo's teacher trained ``recipe.steps`` further from its weights."""
    from ens.zoo.parallel import TeacherJob, free_port, train_teacher_parallel

    recipe, ckpt = run.recipe.teacher, run.work / "teacher.ckpt.safetensors"
    teacher = HybridUNet(run.cfg)
    offset = 0
    if base is not None:
        teacher.load_state_dict({k: base.state[k] for k in teacher.state_dict()})
        offset = int(base.manifest.teacher.get("steps", 0))
    run.log(f"[1/5] teacher: all-transformer U-Net, {sum(p.numel() for p in teacher.parameters()):,} params, "
            f"{recipe.steps} steps" + (f" on from the {offset} of zoo {base.zoo_id}" if base is not None else "")
            + _resuming(ckpt))
    with _timed(run.seconds, "teacher"):
        if run.gpus > 1:
            job = TeacherJob(run.cfg, None, recipe, run.seed, ckpt, run.work / "teacher.stats.json", run.compute,
                             free_port(), run.show_progress, None, run.task.name,
                             threads=max(1, torch.get_num_threads() // run.gpus),
                             load=functools.partial(_rank_data, run.task.name, run.data_dir, run.recipe, run.seed),
                             fresh=base is None, step_offset=offset)
            stats = train_teacher_parallel(teacher, run.gpus, job)
        else:
            stats = train_teacher(teacher, data.train, recipe, run.seed, ckpt, run.show_progress,
                                  curve_val=data.val_full, task=run.task, compute=run.compute,
                                  fresh=base is None, step_offset=offset)
    return teacher, stats


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _surrogate_stages(run: BuildRun, init: dict[str, torch.Tensor], kinds: Sequence[str],
                      train_kinds: Sequence[str], data: ZooData) -> HybridUNet:
    """The supernet over ``kinds`` started from ``init`` (the teacher's weights, or a base zoo's), with the
    surrogates of ``train_kinds`` distilled (and calibrated in context)."""
    recipe, seed, work, seconds, log, show_progress = run.recipe, run.seed, run.work, run.seconds, run.log, \
        run.show_progress
    torch.manual_seed(seed + 1)
    supernet = HybridUNet(run.cfg, candidates=["T", *kinds])
    supernet.load_state_dict(init, strict=False)
    kinds = train_kinds
    if kinds:
        log(f"[2/5] distilling {_count(len(kinds), 'surrogate kind')} ({', '.join(kinds)}) for "
            f"{_count(len(distilled_blocks(supernet, recipe.distill.slots)), 'block position')}"
            + (f" ({', '.join(recipe.distill.slots)})" if recipe.distill.slots else "")
            + f", {recipe.distill.steps} steps"
            f"{_resuming(work / 'distill.ckpt.safetensors')}")
    else:
        log("[2/5] nothing to distil: every kind comes from the base zoo (its report and rank check are remade)")
    with _timed(seconds, "distill"):
        distill_surrogates(supernet, kinds, data.distill_train, recipe.distill, seed, work / "distill.ckpt.safetensors",
                           show_progress, run.compute)
    if recipe.distill.calib_steps:
        log(f"[3/5] in-context calibration, {recipe.distill.calib_steps} steps"
            f"{_resuming(work / 'calib.ckpt.safetensors')}")
    else:
        log("[3/5] in-context calibration: none (--calib-steps N adds it)")
    with _timed(seconds, "calibration"):
        calibrate_in_context(supernet, kinds, data.distill_train, recipe.distill, seed, work / "calib.ckpt.safetensors",
                             show_progress, run.compute)
    for p in supernet.parameters():
        p.requires_grad_(True)
    return supernet


def _report_stages(run: BuildRun, supernet: HybridUNet, kinds: Sequence[str], data: ZooData) -> tuple[dict, dict]:
    recipe, task, seed, seconds, log = run.recipe, run.task, run.seed, run.seconds, run.log
    log(f"[4/5] quality report on {len(data.val_full)} whole held-out images")
    val_inputs = [data.val_patches[i][0].unsqueeze(0) for i in range(min(len(data.val_patches), 16))]
    with _timed(seconds, "quality_report"):
        rel = relative_errors(supernet, kinds, val_inputs)
        report = quality_report(supernet, kinds, data.val_full, task, seed, mixed=recipe.quality_mixed)
        report["patch_check"] = quick_check(supernet, data.val_patches, task)
    unstable = unstable_kinds(report)
    if unstable:
        log(f"warning: all-{'/all-'.join(unstable)} gives non-finite output on the whole held-out images (its "
            "blocks' activations overflow in a chain); the search scores 48-px patches, so check a network of "
            "these kinds on whole images before you ship it")
        report["unstable_kinds"] = unstable
    log(f"[5/5] rank fidelity: {recipe.rank_archs} random hybrids, zero-shot vs {recipe.rank_finetune_steps} "
        "fine-tuning steps" if recipe.rank_archs else "[5/5] rank fidelity: skipped")
    with _timed(seconds, "rank"):
        if recipe.rank_archs:
            report["rank"] = rank_fidelity(supernet, kinds, data.train, data.val_full, task, recipe.rank_archs,
                                           recipe.rank_finetune_steps, seed, run.work / "rank.json", run.show_progress,
                                           run.compute)
    supernet.set_kinds({s: ["T"] * len(seq) for s, seq in supernet.stages.items()})
    return report, rel


def unstable_kinds(report: dict) -> list[str]:
    """The kinds whose uniform network's held-out PSNR is not a number (measured once: a refined deblur F)."""
    return [k for k, q in report.get("uniform", {}).items() if not math.isfinite(float(q.get("psnr", 0.0)))]


def held_out_images(task: Task, data_dir: str | Path | None, limit: int, crop: int | None = None) -> list:
    """The first ``limit`` whole held-out images as (degraded, clean) pairs (read once, kept in memory);
    ``crop``: their centres, at most ``crop`` px a side (a multiple of 8), for quick builds."""
    from ens.data import load_pairs

    full = load_pairs(task, data_dir, "val", full_images=True)
    pairs = [full[i] for i in range(min(len(full), max(1, limit)))]
    if crop:
        c = max(8, crop - crop % 8)
        pairs = [tuple(centre_crop(t, c) for t in p) for p in pairs]
    return pairs


def centre_crop(t: torch.Tensor, size: int) -> torch.Tensor:
    """The centre of ``t`` ([..., H, W]), at most ``size`` px a side."""
    h, w = t.shape[-2:]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return t[..., y : y + size, x : x + size].contiguous()


def quick_check(supernet: HybridUNet, val_patches, task: Task) -> dict[str, float]:
    """Input and teacher PSNR on the held-out patches: the fast check the search's trials also use."""
    from ens.evaluate import evaluate

    supernet.set_kinds({s: ["T"] * len(seq) for s, seq in supernet.stages.items()})
    return {"input_psnr": round(evaluate(None, val_patches, task).psnr, 4),
            "teacher_psnr": round(evaluate(supernet, val_patches, task).psnr, 4), "patches": len(val_patches)}


def machine() -> dict[str, object]:
    """What built it: CPU model and cores, torch threads, and the GPU if one was used."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out: dict[str, object] = {"system": platform.system(), "arch": platform.machine(), "cpu": cpu,
                              "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                              "hostname_hash": hashlib.sha256(platform.node().encode()).hexdigest()[:12]}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def _build_record(task: str, preset: str, data_dir, out_root: Path, seed: int, recipe: ZooRecipe,
                  kinds: Sequence[str], base: Zoo | None, wall: float, seconds: dict[str, float],
                  refine: Sequence[str] = ()) -> dict:
    """How the zoo was made: the command, the machine, the time; an extension keeps its base's record."""
    here = {"command": zoo_command(task, preset, data_dir, out_root, seed, recipe, kinds, _base_name(base), refine),
            "machine": machine(), "wall_time_s": wall, "stage_seconds": seconds}
    if base is None:
        return here
    return {**base.manifest.build, "extended": [*base.manifest.build.get("extended", []),
                                                {**here, "from": base.zoo_id}]}


def _base_name(base: Zoo | None) -> str | None:
    """How ``--from-zoo`` names ``base``: a prebuilt zoo by its name, any other by its folder."""
    if base is None or base.path is None:
        return None
    from ens.zoo.prebuilt import PREBUILT_ROOT

    path = Path(base.path).resolve()
    return path.name if path.parent == PREBUILT_ROOT.resolve() else str(base.path)


def zoo_command(task: str, preset: str, data_dir: str | Path | None, out_root: Path, seed: int,
                recipe: ZooRecipe, kinds: Sequence[str] = SURROGATE_KINDS, base: str | None = None,
                refine: Sequence[str] = ()) -> str:
    """The ``ens zoo build`` command line that rebuilds this zoo (the recipe's step counts spelled out)."""
    args = ["ens", "zoo", "build", "--task", task, "--preset", preset, "--out", str(out_root), "--seed", str(seed),
            "--steps", str(recipe.teacher.steps), "--distill-steps", str(recipe.distill.steps),
            "--calib-steps", str(recipe.distill.calib_steps), "--rank-steps", str(recipe.rank_finetune_steps),
            "--kinds", ",".join(kinds)]
    if base is not None:
        args += ["--from-zoo", str(base)]
    if refine:
        args += ["--refine", ",".join(refine)]
    if recipe.distill.context_weight:
        args += ["--context-weight", f"{recipe.distill.context_weight:g}"]
    if recipe.distill.patch_size is not None:
        args += ["--distill-patch", str(recipe.distill.patch_size)]
    default = RECIPES.get(preset, RECIPES["tiny"]).distill
    if recipe.distill.batch_size != default.batch_size:
        args += ["--distill-batch", str(recipe.distill.batch_size)]
    if recipe.distill.lr != default.lr:
        args += ["--distill-lr", f"{recipe.distill.lr:g}"]
    if recipe.distill.slots:
        args += ["--distill-slots", ",".join(recipe.distill.slots)]
    if recipe.quality_crop:
        args += ["--quality-crop", str(recipe.quality_crop)]
    if data_dir is not None:
        args += ["--data", str(data_dir)]
    return shlex.join(args)


def _publish(final: Path, supernet: HybridUNet, manifest: ZooManifest, report: dict, rel: dict) -> None:
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        atomic_save_tensors(supernet.state_dict(), tmp / WEIGHTS, metadata={"zoo_id": manifest.zoo_id})
        manifest.weights_sha256 = file_sha256(tmp / WEIGHTS)
        atomic_write_text(tmp / QUALITY_JSON, json.dumps(report, indent=2))
        atomic_write_text(tmp / QUALITY_MD, quality_markdown(report, rel, manifest.kinds[1:]))
        atomic_write_text(tmp / MANIFEST, manifest.to_json())
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _distill_loss(d: DistillRecipe) -> str:
    out = f"L1 + {d.cos_weight:g} * (1 - cos)"
    if d.downstream_weight:
        out += f" + {d.downstream_weight:g} * L1 of the output image through the teacher (full-resolution slots)"
    if d.context_weight:
        out += f" + {d.context_weight:g} * (the same L1 + cos terms on a random hybrid's inputs)"
    return out


def _calib_loss(clean_weight: float) -> str:
    if not clean_weight:
        return "L1 to teacher output, random hybrids"
    return f"{1 - clean_weight:g} * L1 to teacher output + {clean_weight:g} * L1 to clean target, random hybrids"
