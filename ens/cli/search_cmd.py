"""``ens search``, ``ens dashboard``, ``ens report``."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ens.cli.app import AMP_HELP, app, console, err_console, log_line
from studies.storage import redact


@app.command()
def search(
    task: str = typer.Option("deblur", help="Task name (see 'ens tasks')."),
    objective: str = typer.Option("psnr,latency", help="Comma list of psnr, ssim, latency, params, macs, "
                                  "transformer_count; or 'score' alone."),
    profiler: str = typer.Option("lut:ort-cpu", help="ort-cpu, lut:ort-cpu, trt:ssh://user@host, "
                                 "qaihub:DEVICE, proxy, or lut: over any of them."),
    trials: int = typer.Option(40, help="Evaluated architectures the study should hold when done."),
    workers: int = typer.Option(1, help="Parallel Ray workers (0: in this process, no Ray)."),
    ray_address: str | None = typer.Option(None, help="Join a Ray cluster ('auto' or ray://host:port)."),
    storage: str = typer.Option("study.db", help="SQLite file or an Optuna storage URL (postgresql://...)."),
    study_name: str | None = typer.Option(None, help="Default: TASK-PRESET."),
    sampler: str = typer.Option("tpe", help="tpe, nsga2 or random."),
    latency_budget: float | None = typer.Option(None, help="Latency budget in ms: an Optuna constraint."),
    preset: str = typer.Option("tiny", help="U-Net preset: tiny, small or paper."),
    data: str | None = typer.Option(None, help="Dataset folder; default: embedded photographs."),
    seed: int = typer.Option(0, help="Seed for the sampler, the zoo and the data."),
    shape: str = typer.Option("1x3x256x256", help="Input shape for latency, NxCxHxW."),
    finetune_steps: int = typer.Option(0, help="End-to-end fine-tuning steps per trial (0: zoo as is)."),
    cpus_per_trial: float = typer.Option(1.0, help="Ray CPUs per trial."),
    gpus_per_trial: float = typer.Option(0.0, help="Ray GPUs per trial (a fraction shares a GPU); each trial "
                                         "evaluates and fine-tunes on the GPU Ray assigns it."),
    device: str = typer.Option("auto", "--device", help="Where trials evaluate and fine-tune: auto, cpu, cuda or "
                               "cuda:N. auto: the GPU Ray assigns with --gpus-per-trial, else the CPU (or this "
                               "process's GPU with --workers 0). A zoo built first is built there too."),
    amp: str = typer.Option("auto", "--amp", help=AMP_HELP),
    zoo_root: str | None = typer.Option(None, "--zoo", help="Folder of zoos (built there if missing). Default: "
                                        "zoo/ if it holds one for (task, preset), else the prebuilt zoo shipped "
                                        "with ens, else one is built in zoo/."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Build a zoo in zoo/ (or --zoo) even where "
                                      "a prebuilt one ships."),
    granularity: str = typer.Option("stage", help="One kind per stage, or per block."),
    score_alpha: float = typer.Option(0.5, help="dB one halving of latency is worth, for --objective score."),
    precision: str | None = typer.Option(None, "--precision", help="Latency of the graph in this precision: "
                                         "fp32, or int8 (the Q/DQ graph 'ens finalize --export onnx_int8' ships; "
                                         "ort-cpu and lut:ort-cpu). Default: the profiler's (fp32 on the CPU)."),
    kinds: str | None = typer.Option(None, "--kinds", help="Block kinds a slot may take, e.g. T,M,E (see 'ens zoo "
                                     "kinds'). Default: every kind the zoo holds."),
    enqueue: list[str] | None = typer.Option(None, "--enqueue", help="Evaluate this architecture (an Arch string, "
                                             "e.g. 'enc:T,E,M|lat:E|dec:E,E,E|ref:E') before the sampler's; "
                                             "repeatable. Skipped if the study already holds it."),
    zoo_front: bool = typer.Option(True, "--zoo-front/--no-zoo-front", help="First evaluate the architectures "
                                   "predicted fastest within 0.05-2 dB of the teacher, from every single swap of the "
                                   "teacher scored on the held-out patches and the latency table (lut: profilers), "
                                   "refined by rounds of swaps around the best so far."),
    zoo_front_rounds: int = typer.Option(4, "--zoo-front-rounds", help="Rounds of single swaps for the zoo front: "
                                         "1 scores the teacher's only; each further round scores those of the "
                                         "fastest network measured within --zoo-front-target (stops early when it "
                                         "no longer changes)."),
    zoo_front_target: float = typer.Option(0.3, "--zoo-front-target", help="Loss against the teacher (dB) the zoo "
                                           "front's rounds refine around."),
    time_finalists: int = typer.Option(0, "--time-finalists", min=0, help="After the search, time the K trials "
                                       "fastest by the study's latency within --zoo-front-target dB of all-T, "
                                       "interleaved with all-T on the measuring profiler (a table's own), and "
                                       "print their measured speed-ups (0: off; 3 takes about a minute at 256² "
                                       "on ort-cpu)."),
    whole_check: int = typer.Option(0, "--whole-check", min=0, help="After the search, score all-T and the K trials "
                                    "fastest by the study's latency within --zoo-front-target dB of it on the whole "
                                    "held-out images (trials are scored on held-out patches, where a teacher that "
                                    "uses whole-image context is handicapped) and print which stay within (0: off; "
                                    "about 2 s a network for the embedded images at tiny)."),
    val: str = typer.Option("patches", "--val", help="What trials and the zoo front are scored on: 'patches' (the "
                            "zoo's held-out patches, about 0.2 s a network at tiny) or 'whole' (the whole held-out "
                            "images, as the papers evaluate: about 2 s a network for the embedded images; use it "
                            "when the teacher relies on whole-image context, as derain's does)."),
    val_images: int = typer.Option(8, "--val-images", min=1, help="With --val whole: the first N whole held-out "
                                   "images."),
) -> None:
    """Search hybrid architectures: quality from the zoo against latency on the chosen device."""
    import optuna

    from ens.report import ALL_T, latency_axis_label, pareto_frame, trials_frame
    from ens.search.driver import SearchOptions, run_search
    from ens.training import plain_progress

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # ens prints its own progress; Optuna's INFO lines repeat it

    opts = SearchOptions(task=task, objective=objective, profiler=profiler, trials=trials, workers=workers,
                         ray_address=ray_address, storage=storage, study_name=study_name, sampler=sampler,
                         latency_budget=latency_budget, preset=preset, data=data, seed=seed, shape=shape,
                         finetune_steps=finetune_steps, cpus_per_trial=cpus_per_trial,
                         gpus_per_trial=gpus_per_trial, zoo_root=zoo_root, from_scratch=from_scratch,
                         granularity=granularity, score_alpha=score_alpha,
                         precision=precision.lower() if precision else None, kinds=kinds, device=device,
                         amp=amp, enqueue=tuple(enqueue or ()), zoo_front=zoo_front,
                         zoo_front_rounds=zoo_front_rounds, zoo_front_target=zoo_front_target,
                         time_finalists=time_finalists, whole_check=whole_check, val=val.strip().lower(),
                         val_images=val_images)
    prog = Progress(TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), console=console)
    state: dict = {}

    def on_done(frozen, summary) -> None:
        info = f"failed {summary.failed}" if summary.failed else ""
        if frozen is not None:
            a = frozen.user_attrs
            info = f"last: {a.get('arch')}  {a.get('psnr', 0):.2f} dB  {a.get('latency', float('nan')):.1f} ms"
        if not console.is_terminal:  # a log file: a plain line now and then, not a bar shown only at the end
            if "plain" not in state:
                state["plain"], state["done"] = plain_progress("search", trials, summary.completed), summary.completed
            state["plain"](summary.completed - state["done"], info=info)
            state["done"] = summary.completed
            return
        if "id" not in state:
            state["id"] = prog.add_task("search", total=trials, completed=summary.completed, info="")
            prog.start()
        prog.update(state["id"], completed=summary.completed, info=info)

    try:
        study, summary = run_search(opts, log=log_line, on_done=on_done)
    finally:
        prog.stop()
    df = trials_frame(study)
    front = pareto_frame(study, df)
    on = study.user_attrs.get("val_label")
    t = Table(title=f"Pareto front of {study.study_name} ({len(df)} architectures"
              + (f"; PSNR on {on})" if on else ")"))
    lat = latency_axis_label(df)  # measured on which profiler, or predicted by which table, with its error
    for c in ("trial", "arch", "PSNR", "SSIM", lat, "speed-up", "T blocks"):
        t.add_column(c, justify="left" if c == "arch" else "right", max_width=18 if c == lat else None)
    for _, r in front.iterrows():
        t.add_row(str(r["number"]), r["arch"] + (" (teacher)" if r["arch"] == ALL_T else ""), f"{r['psnr']:.2f}",
                  f"{r['ssim']:.4f}", f"{r['latency_ms']:.1f}",
                  f"{r['speedup']:.2f}x" if math.isfinite(r["speedup"]) else "-", f"{r['transformer_count']:.0f}")
    console.print(t)
    fin = study.user_attrs.get("finalists") if time_finalists else None
    if fin and fin["rows"]:
        _print_rows(f"Finalists within {fin['target_db']:g} dB of all-T, timed beside it on {fin['profiler']} "
                    f"(all-T {fin['all_t_ms']:.1f} ms)",
                    ("trial", "arch", "PSNR", "study ms", "measured ms", "measured speed-up"),
                    [(str(r["trial"]), r["arch"], f"{r['psnr']:.2f}", f"{r['study_ms']:.1f}",
                      f"{r['measured_ms']:.1f}", f"{r['speedup']:.2f}x") for r in fin["rows"]])
    wc = study.user_attrs.get("whole_check") if whole_check else None
    if wc and wc["rows"]:
        _print_rows(f"On {wc['images']} whole held-out image(s): all-T {wc['all_t_psnr']:.2f} dB; "
                    f"within {wc['target_db']:g} dB?",
                    ("trial", "arch", "loss on patches (dB)", "whole PSNR", "loss on whole images (dB)", "within"),
                    [(str(r["trial"]), r["arch"], f"{r['patch_loss_db']:.2f}", f"{r['whole_psnr']:.2f}",
                      f"{r['whole_loss_db']:.2f}", "yes" if r["within_target"] else "no") for r in wc["rows"]])
    note = " (interrupted: re-run the same command to resume)" if summary.interrupted else ""
    console.print(f"{summary.evaluated} evaluated, {summary.duplicates} duplicates skipped, {summary.failed} failed "
                  f"in {summary.wall_s:.0f} s{note}")
    shown = escape(redact(storage))  # a server URL's password is never printed
    pick = " --pick finalist" if fin and fin["rows"] else ""
    console.print(f"study: {escape(study.study_name)} in {shown}\nnext:\n  ens dashboard {shown}\n"
                  f"  ens report {shown} --out report/\n  ens finalize {shown} --export onnx_int8{pick}")
    if summary.interrupted:
        raise typer.Exit(130)


@app.command()
def dashboard(
    storage: str = typer.Argument("study.db", help="SQLite file or storage URL."),
    port: int = typer.Option(8080, help="Port."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; 127.0.0.1 unless you mean to share it."),
    artifacts: Path | None = typer.Option(None, help="Artifact folder (default: beside the database)."),
) -> None:
    """Open the study in optuna-dashboard (every trial's arch, latencies and sample image)."""
    from ens.errors import EnsError
    from ens.search.driver import artifact_dir
    from studies.storage import open_storage, storage_url

    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise EnsError("optuna-dashboard is not installed: pip install 'ens[dashboard]'") from None
    st = open_storage(storage, must_exist=True)
    art = artifact_dir(storage, str(artifacts) if artifacts else None)
    store = None
    if art.is_dir():
        import optuna

        store = optuna.artifacts.FileSystemArtifactStore(str(art))
    if not _loopback(host):
        err_console.print(f"[yellow]warning:[/] optuna-dashboard has no authentication: anyone who reaches "
                          f"{escape(host)}:{port} can read and edit this study", highlight=False, soft_wrap=True)
    console.print(f"optuna-dashboard for {escape(redact(storage_url(storage)))} on http://{escape(host)}:{port}/ "
                  "(Ctrl-C to stop)", highlight=False, soft_wrap=True)
    run_server(st, host=host, port=port, artifact_store=store)


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@app.command()
def report(
    storage: str = typer.Argument("study.db", help="SQLite file or storage URL."),
    out: Path = typer.Option(Path("report"), help="Output folder."),
    study_name: str | None = typer.Option(None, help="Needed when the storage holds several studies."),
) -> None:
    """Tables (CSV, Markdown) of all trials and of the Pareto front, and a Pareto plot (PNG, HTML)."""
    from ens.report import load_study, write_report

    study = load_study(storage, study_name)
    summary = write_report(study, out)
    n_front = len(summary["pareto"])
    console.print(f"{summary['trials']} architectures, {n_front} on the Pareto front; written to {out}/: "
                  + ", ".join(summary["files"]))


def _print_rows(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A table of pre-formatted cells, the arch column left-aligned."""
    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="left" if c == "arch" else "right")
    for r in rows:
        t.add_row(*r)
    console.print(t)
