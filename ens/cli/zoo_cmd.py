"""``ens zoo build|show``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ens.cli.app import AMP_HELP, app, console, log_line

zoo_app = typer.Typer(help="Build and inspect the pre-aligned block zoo.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("build")
def build(
    task: str = typer.Option("deblur", help="Task name (see 'ens tasks')."),
    preset: str = typer.Option("tiny", help="U-Net preset: tiny, small or paper."),
    data: Path | None = typer.Option(None, "--data", help="Dataset folder; default: embedded photographs."),
    out: Path = typer.Option(Path("zoo"), "--out", help="Folder that holds zoos; this one goes to OUT/TASK-PRESET."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Teacher training steps."),
    distill_steps: int | None = typer.Option(None, min=1, help="Surrogate distillation steps."),
    calib_steps: int | None = typer.Option(None, min=0, help="In-context calibration steps (0: skip)."),
    rank_steps: int | None = typer.Option(None, min=0, help="Fine-tuning steps per hybrid in the rank-fidelity "
                                          "check (0: skip the check)."),
    seed: int = typer.Option(0, help="Seed for initialisation, data and sampling."),
    quality_crop: int | None = typer.Option(None, min=8, help="Centre-crop the held-out images to this many px a "
                                            "side for a quick quality report (default: whole images)."),
    threads: int | None = typer.Option(None, min=1, help="CPU threads for training (default: all cores). Two "
                                       "builds side by side with 1 thread each beat one with 2 on 2 cores."),
    kinds: str | None = typer.Option(None, "--kinds", help="Surrogate kinds to distil for every slot (default: "
                                     "every surrogate kind; see 'ens zoo kinds')."),
    from_zoo: Path | None = typer.Option(None, "--from-zoo", help="Keep this zoo's teacher and surrogates and "
                                         "distil only the --kinds it lacks (a zoo folder or a prebuilt name)."),
    refine: str | None = typer.Option(None, "--refine", help="With --from-zoo: distil these kinds of that zoo "
                                      "further, from their current weights (e.g. M,E), for --distill-steps. T "
                                      "trains its teacher --steps more steps first, then refines every kind."),
    context_weight: float | None = typer.Option(None, "--context-weight", min=0.0, help="Weight of the in-context "
                                                "distillation term: each surrogate also maps a random hybrid's input "
                                                "at its slot to the teacher's output there (0: off)."),
    distill_patch: int | None = typer.Option(None, "--distill-patch", min=16, help="Px a side of the distillation "
                                             "patches (default: the preset's training patch). Larger patches show "
                                             "the surrogates the whole-image context the teacher's attention uses."),
    distill_batch: int | None = typer.Option(None, "--distill-batch", min=1, help="Distillation batch size "
                                             "(default: the preset's, 8 at tiny)."),
    distill_lr: float | None = typer.Option(None, "--distill-lr", help="Peak learning "
                                            "rate of the distillation's cosine schedule (default: the preset's, "
                                            "4e-3 at tiny)."),
    distill_slots: str | None = typer.Option(None, "--distill-slots", help="With --refine: distil only these block "
                                             "positions further, stages or stage.index, comma-separated (e.g. ref "
                                             "or dec1.0,ref.0); the others keep their weights."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the zoo exists."),
    device: str = typer.Option("auto", "--device", help="Where to train: auto (CUDA when available), cpu, cuda or "
                               "cuda:N. A build stopped on one device resumes on another."),
    amp: str = typer.Option("auto", "--amp", help=AMP_HELP),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the teacher and the fine-tuned hybrids "
                                 "(off by default: not yet measured faster on any device here)."),
    gpus: int = typer.Option(1, "--gpus", min=1, help="Train the teacher data-parallel (torch DDP) over this many "
                             "GPUs of this machine; needs --device cuda or auto on a machine with them."),
) -> None:
    """Train the teacher, distil Mamba and EFM surrogates for every slot, and write the zoo."""
    from ens.compute import make_compute
    from ens.zoo.build import SURROGATE_KINDS, build_zoo
    from ens.zoo.manifest import ZooManifest

    compute = make_compute(device, amp, compile)
    if gpus > 1 and not compute.cuda:
        from ens.errors import EnsError

        raise EnsError(f"--gpus {gpus} trains on {gpus} CUDA devices, but --device {device} is {compute.device}")

    if data is not None and not data.is_dir():
        from ens.errors import EnsError

        raise EnsError(f"data directory {data} does not exist")
    chosen = _kinds_list(kinds) if kinds else SURROGATE_KINDS
    path = build_zoo(task, preset, data, out, seed, steps, distill_steps, calib_steps, force=force,
                     log=log_line, rank_steps=rank_steps, threads=threads, quality_crop=quality_crop,
                     kinds=chosen, refine=_kinds_list(refine) if refine else (),
                     base=_zoo_path(from_zoo) if from_zoo is not None else None, compute=compute, gpus=gpus,
                     context_weight=context_weight, distill_patch=distill_patch, distill_batch=distill_batch,
                     distill_lr=distill_lr, distill_slots=_names(distill_slots) if distill_slots else ())
    _print_manifest(ZooManifest.read(path), path)


def _kinds_list(text: str) -> tuple[str, ...]:
    return tuple(k.strip().upper() for k in text.split(",") if k.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(",") if k.strip())


def _zoo_path(zoo: Path) -> Path:
    """A zoo folder, or the folder of the prebuilt zoo of that name."""
    from ens.zoo.prebuilt import PREBUILT_ROOT, prebuilt_names

    return PREBUILT_ROOT / str(zoo) if not zoo.exists() and str(zoo) in prebuilt_names() else zoo


@zoo_app.command("kinds")
def kinds_table() -> None:
    """The block kinds a slot can take: the teacher's (T) and the surrogates the zoo distils."""
    from blocks.registry import block_kinds

    t = Table(title="block kinds (one letter each in an arch string)")
    for c in ("letter", "name", "what it is"):
        t.add_column(c)
    for k in block_kinds().values():
        t.add_row(k.letter, k.name, k.description)
    console.print(t)


@zoo_app.command("show")
def show(zoo_dir: Path = typer.Argument(..., help="A zoo folder (OUT/TASK-PRESET), or the name of a prebuilt zoo "
                                        "(see 'ens zoo list').")) -> None:
    """Print a zoo's manifest and quality report as tables."""
    from ens.zoo.manifest import ZooManifest

    zoo_dir = _zoo_path(zoo_dir)
    _print_manifest(ZooManifest.read(zoo_dir), zoo_dir)


@zoo_app.command("list")
def list_zoos() -> None:
    """The prebuilt zoos that ship with ens, and how each was built."""
    from ens.zoo.manifest import ZooManifest
    from ens.zoo.prebuilt import PREBUILT_ROOT, prebuilt_names

    t = Table(title="prebuilt zoos (used by 'ens search' when you pass neither --data nor --zoo)")
    for c in ("name", "zoo id", "teacher gain", "uniform networks and mixed, dB vs teacher", "rank tau", "built in"):
        t.add_column(c)
    for name in prebuilt_names():
        m = ZooManifest.read(PREBUILT_ROOT / name)
        q = json.loads((PREBUILT_ROOT / name / "quality.json").read_text())
        u = q.get("uniform", {})
        deltas = [f"all-{k} {u[k]['delta_psnr']:+.2f}" for k in m.kinds[1:] if k in u]
        deltas.append(f"mixed {q.get('mixed_mean_delta_psnr', float('nan')):+.2f}")
        builds = [m.build.get("wall_time_s", 0.0)] + [e.get("wall_time_s", 0.0) for e in m.build.get("extended", [])]
        t.add_row(name, m.zoo_id, f"{q['teacher']['psnr'] - q['input']['psnr']:+.2f} dB", ", ".join(deltas),
                  f"{m.rank.get('tau', float('nan')):+.2f}",
                  f"{sum(builds) / 60:.0f} min" + (f" ({len(builds)} runs)" if len(builds) > 1 else ""))
    console.print(t)


def _print_manifest(m, path: Path) -> None:
    t = Table(title=f"zoo {m.zoo_id}", show_header=False)
    t.add_row("folder", str(path))
    t.add_row("task / preset", f"{m.task} / {m.preset}")
    t.add_row("widths", f"dim {m.config['dim']}, blocks {m.config['num_blocks']}, "
              f"refinement {m.config['num_refinement_blocks']}")
    t.add_row("kinds", ", ".join(m.kinds))
    t.add_row("slots", str(len(m.slots)))
    t.add_row("data", m.data_source)
    tv, iv = m.teacher.get("val", {}), m.teacher.get("input_val", {})
    t.add_row("teacher PSNR / SSIM", f"{tv.get('psnr', float('nan')):.2f} dB / {tv.get('ssim', float('nan')):.4f}")
    t.add_row("input PSNR / SSIM", f"{iv.get('psnr', float('nan')):.2f} dB / {iv.get('ssim', float('nan')):.4f}")
    t.add_row("seed / wall time", f"{m.seed} / {m.wall_time_s:.0f} s")
    if m.build.get("command"):
        t.add_row("built with", m.build["command"])
        mach = m.build.get("machine", {})
        t.add_row("on", f"{mach.get('cpu', '?')}, {mach.get('cores', '?')} cores, {mach.get('torch_threads', '?')} "
                  f"torch threads" + (f", {mach['gpu']}" if mach.get("gpu") else ""))
    if m.teacher.get("curve"):
        t.add_row("teacher curve", ", ".join(
            f"{p['step']}: {p['psnr']:.2f} ({p.get('gain_db', float('nan')):+.2f})" for p in m.teacher["curve"]))
    if m.rank:
        tau = m.rank.get("tau", float("nan"))
        t.add_row("rank fidelity", f"Kendall tau {tau:+.3f} over {m.rank.get('n')} hybrids, "
                  f"{m.rank.get('finetune_steps')} fine-tuning steps each")
    stages = [(name, d.get("steps"), d.get("seconds")) for name, d in
              (("teacher", m.teacher), ("distil", m.distill), ("calibration", m.calibration))]
    t.add_row("steps (seconds)", ", ".join(
        f"{name} {steps}" + (f" ({sec:.0f} s)" if sec is not None else "") for name, steps, sec in stages))
    t.add_row("versions", ", ".join(f"{k} {v}" for k, v in m.versions.items()))
    console.print(t)
    rel = m.distill.get("relative_error", {})
    if rel:
        kinds = m.kinds[1:]
        d = Table(title="distillation: relative error |S(x)-y| / |y-x| on held-out inputs")
        d.add_column("slot")
        for k in kinds:
            d.add_column(k, justify="right")
        for slot, row in rel.items():
            d.add_row(slot, *[f"{row.get(k, float('nan')):.3f}" for k in kinds])
        console.print(d)
    qpath = Path(path) / "quality.json"
    if qpath.is_file():
        q = json.loads(qpath.read_text())
        qt = Table(title="assembled networks, no retraining (held-out split)")
        for c in ("network", "PSNR", "SSIM", "vs teacher"):
            qt.add_column(c, justify="right" if c != "network" else "left")
        qt.add_row("degraded input", f"{q['input']['psnr']:.2f}", f"{q['input']['ssim']:.4f}", "")
        qt.add_row("teacher", f"{q['teacher']['psnr']:.2f}", f"{q['teacher']['ssim']:.4f}", "0.00")
        for k, v in q["uniform"].items():
            qt.add_row(f"all {k}", f"{v['psnr']:.2f}", f"{v['ssim']:.4f}", f"{v['delta_psnr']:+.2f}")
        if q.get("mixed"):
            qt.add_row(f"random mixed (x{len(q['mixed'])})", "", "", f"{q['mixed_mean_delta_psnr']:+.2f}")
        console.print(qt)
