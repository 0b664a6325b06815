"""``ens zoo build``: teacher, distilled surrogates, in-context calibration, quality report.

Everything is written into a work folder with safetensors checkpoints (so an interrupted build
resumes where it stopped), and the finished zoo is assembled in a temporary folder that is renamed
into place in one step: a zoo folder is either complete or absent.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

import ens
from blocks.unet import HybridUNet, UNetConfig, get_preset
from ens.errors import EnsError
from ens.tasks import Task, get_task
from ens.training import atomic_save_tensors, atomic_write_text, checkpoint_step, seed_everything
from ens.zoo.distill import DistillRecipe, calibrate_in_context, distill_surrogates, relative_errors
from ens.zoo.manifest import MANIFEST, QUALITY_JSON, QUALITY_MD, WEIGHTS, ZooManifest, slots_of
from ens.zoo.quality import quality_markdown, quality_report
from ens.zoo.store import file_sha256
from ens.zoo.teacher import TeacherRecipe, train_teacher

SURROGATE_KINDS: tuple[str, ...] = ("M", "E")


@dataclass(frozen=True)
class ZooRecipe:
    teacher: TeacherRecipe = field(default_factory=TeacherRecipe)
    distill: DistillRecipe = field(default_factory=DistillRecipe)
    patch_size: int = 64
    train_patches: int = 512
    val_patches: int | None = None  # None: the loader's fixed default split
    quality_mixed: int = 8


RECIPES: dict[str, ZooRecipe] = {
    # tiny: sized for 10 minutes on 2 cores. Distillation with the downstream term (ens.zoo.distill) at
    # 4e-3 and no in-context calibration: on the denoise zoo, all-M / all-E / mixed went from -1.28 /
    # -1.62 / -1.09 dB (300 feature-loss steps + 350 calibration steps) to -1.07 / -1.19 / -0.72 dB
    # (400 steps) in the same time; calibration after it (100 steps) made M and mixed worse again.
    "tiny": ZooRecipe(TeacherRecipe(steps=600, batch_size=8),
                      DistillRecipe(steps=400, lr=4e-3, calib_steps=0),
                      patch_size=48, train_patches=1024),
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
                calib_steps: int | None) -> ZooRecipe:
    t, d = r.teacher, r.distill
    if teacher_steps is not None:
        t = replace(t, steps=teacher_steps, warmup=min(t.warmup, max(teacher_steps // 10, 1)))
    if distill_steps is not None:
        d = replace(d, steps=distill_steps)
    if calib_steps is not None:
        d = replace(d, calib_steps=calib_steps)
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
) -> Path:
    """Build (or resume building) the zoo for (task, preset); returns its folder."""
    from ens.data import load_pairs

    task = get_task(task)
    try:
        cfg = config or get_preset(preset)
    except KeyError as exc:
        raise EnsError(str(exc.args[0])) from None
    recipe = recipe or RECIPES.get(preset, RECIPES["tiny"])
    recipe = _recipe_for(recipe, teacher_steps, distill_steps, calib_steps)
    out_root = Path(out_root)
    final = default_zoo_dir(out_root, task.name, preset)
    if (final / MANIFEST).is_file() and not force:
        log(f"zoo {final} already exists (use --force to rebuild)")
        return final
    t0 = time.monotonic()
    work = out_root / f".{zoo_name(task.name, preset)}.work"
    work.mkdir(parents=True, exist_ok=True)
    data_source = str(Path(data_dir).resolve()) if data_dir else "embedded:scikit-image"
    spec = {"task": task.name, "preset": preset, "config": cfg.to_dict(), "seed": seed, "kinds": list(kinds),
            "data": data_source, "recipe": asdict(recipe)}
    _check_work_spec(work, spec)
    seed_everything(seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    train_set = load_pairs(task, data_dir, "train", patch_size=recipe.patch_size, seed=seed,
                           num_patches=recipe.train_patches)
    val_set = load_pairs(task, data_dir, "val", patch_size=recipe.patch_size, seed=seed,
                         num_patches=recipe.val_patches)
    log(f"data: {data_source}: {len(train_set)} training patches, {len(val_set)} held-out validation pairs")

    teacher = HybridUNet(cfg)
    log(f"[1/4] teacher: all-transformer U-Net, {sum(p.numel() for p in teacher.parameters()):,} params, "
        f"{recipe.teacher.steps} steps{_resuming(work / 'teacher.ckpt.safetensors')}")
    seconds: dict[str, float] = {}
    with _timed(seconds, "teacher"):
        t_stats = train_teacher(teacher, train_set, recipe.teacher, seed, work / "teacher.ckpt.safetensors",
                                show_progress)

    torch.manual_seed(seed + 1)
    supernet = HybridUNet(cfg, candidates=["T", *kinds])
    supernet.load_state_dict(teacher.state_dict(), strict=False)
    log(f"[2/4] distilling {len(kinds)} surrogate kinds ({', '.join(kinds)}) for "
        f"{len(supernet.slot_blocks())} block positions, {recipe.distill.steps} steps"
        f"{_resuming(work / 'distill.ckpt.safetensors')}")
    with _timed(seconds, "distill"):
        distill_surrogates(supernet, kinds, train_set, recipe.distill, seed, work / "distill.ckpt.safetensors",
                           show_progress)
    if recipe.distill.calib_steps:
        log(f"[3/4] in-context calibration, {recipe.distill.calib_steps} steps"
            f"{_resuming(work / 'calib.ckpt.safetensors')}")
    else:
        log("[3/4] in-context calibration: none (--calib-steps N adds it)")
    with _timed(seconds, "calibration"):
        calibrate_in_context(supernet, kinds, train_set, recipe.distill, seed, work / "calib.ckpt.safetensors",
                             show_progress)
    for p in supernet.parameters():
        p.requires_grad_(True)

    log("[4/4] quality report on the held-out split")
    val_inputs = [val_set[i][0].unsqueeze(0) for i in range(min(len(val_set), 16))]
    with _timed(seconds, "quality_report"):
        rel = relative_errors(supernet, kinds, val_inputs)
        report = quality_report(supernet, kinds, val_set, task, seed, mixed=recipe.quality_mixed)

    manifest = ZooManifest(
        zoo_id=f"{zoo_name(task.name, preset)}-s{seed}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}",
        task=task.name,
        preset=preset,
        config=cfg.to_dict(),
        kinds=["T", *kinds],
        slots=slots_of(cfg),
        patch_size=recipe.patch_size,
        val_patches=recipe.val_patches,
        data_source=data_source,
        seed=seed,
        teacher={"steps": recipe.teacher.steps, "loss": "charbonnier", **t_stats,
                 "val": report["teacher"], "input_val": report["input"], "seconds": seconds["teacher"]},
        distill={"steps": recipe.distill.steps, "loss": _distill_loss(recipe.distill),
                 "relative_error": rel, "seconds": seconds["distill"]},
        calibration={"steps": recipe.distill.calib_steps, "loss": _calib_loss(recipe.distill.calib_clean_weight),
                     "seconds": seconds["calibration"], "quality_report_seconds": seconds["quality_report"]},
        versions=versions(),
        wall_time_s=round(time.monotonic() - t0, 1),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    _publish(final, supernet, manifest, report, rel)
    shutil.rmtree(work, ignore_errors=True)
    log(f"zoo written to {final} in {manifest.wall_time_s:.0f} s")
    return final


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
    return out


def _calib_loss(clean_weight: float) -> str:
    if not clean_weight:
        return "L1 to teacher output, random hybrids"
    return f"{1 - clean_weight:g} * L1 to teacher output + {clean_weight:g} * L1 to clean target, random hybrids"
