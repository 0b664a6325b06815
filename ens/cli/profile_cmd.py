"""``ens profile`` (one architecture on one profiler) and ``ens calibrate`` (a device's latency table)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ens.cli.app import app, console, err_console

if TYPE_CHECKING:
    from profilers.result import LatencyResult


def _fmt_ms(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )


def _profiler(spec: str, threads: int | None, runs: int | None, breakdown: bool):
    """The profiler of ``spec`` with the ort-cpu flags given (a profiler that takes none of them refuses)."""
    from profilers.errors import UnknownProfiler
    from profilers.registry import get_profiler

    kw: dict[str, Any] = {"threads": threads, "runs": runs, "breakdown": True if breakdown else None}
    kw = {k: v for k, v in kw.items() if v is not None}
    try:
        return get_profiler(spec, **kw)
    except UnknownProfiler as exc:
        if not kw:
            raise
        raise UnknownProfiler(f"--threads, --runs and --breakdown are ort-cpu options ({exc})") from None


def _profiler_epilog() -> str:
    from profilers.registry import profiler_help

    return "Profilers and the options their spec strings take (NAME[:ARG]?key=value&...):\n\n" + "\n\n".join(
        escape(f"{name}: {text}") for name, text in profiler_help().items())


@app.command("profile", epilog=_profiler_epilog())
def profile(
    arch: str = typer.Option(..., "--arch", help="Architecture, e.g. 'enc:T,M,E|lat:M|dec:E,M,T|ref:E'."),
    profiler: str = typer.Option(
        "ort-cpu", "--profiler", "-p",
        help="ort-cpu | trt | trt:ssh://user@host | qaihub:\"DEVICE\" | proxy | lut:PROFILER",
    ),
    shape: str = typer.Option("1x3x256x256", "--shape", help="Input shape NxCxHxW."),
    preset: str = typer.Option("tiny", "--preset", help="U-Net preset: tiny, small or paper."),
    precision: str | None = typer.Option(None, "--precision", help="fp32, fp16 or int8 (default: the profiler's)."),
    breakdown: bool = typer.Option(False, "--breakdown", help="Per-operator times (ort-cpu)."),
    onnx: Path | None = typer.Option(None, "--onnx", help="Keep the exported ONNX file here."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="ort-cpu intra-op threads (default 2)."),
    runs: int | None = typer.Option(None, "--runs", min=1, help="ort-cpu timed runs (default 20)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Measure even if the cache has this architecture."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON only."),
) -> None:
    """Export one architecture (random weights) and measure or predict its latency."""
    from ens.profiling import image_shape, parse_arch, profile_arch, resolve_config

    cfg = resolve_config(preset)
    dims = image_shape(shape)
    a = parse_arch(arch, cfg)
    prof = _profiler(profiler, threads, runs, breakdown)
    prof.check()
    prof.resolve_precision(precision)  # an unsupported precision: the error, before any progress line
    if not as_json:
        err_console.print(f"[dim]profiling {a} ({a.hash}) on {prof.spec} at {'x'.join(map(str, dims))}...[/]")
    result = profile_arch(
        a, prof, cfg, dims, precision=precision, cache=not (no_cache or breakdown or onnx is not None),
        onnx_path=onnx,
    )
    result = _with_stages(result, a.block_kinds(cfg))
    if as_json:
        typer.echo(json.dumps({"arch": str(a), "arch_hash": a.hash, "preset": preset, **result.to_dict()}))
        return
    _print_result(str(a), a.hash, result)


def _with_stages(result: LatencyResult, kinds: dict[str, list[str]]) -> LatencyResult:
    """``result`` with its breakdown's time per slot, sampler, stem and output (``breakdown["stages"]``)."""
    from profilers.stages import stage_summary

    bd = result.details.get("breakdown")
    if not bd:
        return result
    stages = [row.to_dict() for row in stage_summary(bd, kinds)]
    return result.replace(details={**result.details, "breakdown": {**bd, "stages": stages}})


def _print_stages(bd: dict[str, Any]) -> None:
    """Where the time goes: one row per slot, sampler, stem, output conv and other, in data-flow order."""
    rows = bd.get("stages") or []
    if not rows:
        return
    top = sorted(r["share"] for r in rows)[-3:]
    t = Table(title="where the time goes, by slot (ms per run)",
              caption=f"ONNX Runtime profiler; {bd['total_kernel_ms']:.2f} ms of kernels = 100%")
    for col in ("stage", "ms", "share"):
        t.add_column(col, justify="left" if col == "stage" else "right")
    t.add_column("", min_width=20)
    for r in rows:
        style = "bold" if r["share"] in top and r["share"] > 0 else ("dim" if r["part"] != "slot" else "")
        t.add_row(r["stage"], f"{r['ms']:.3f}", f"{100 * r['share']:.1f}%", "█" * round(40 * r["share"]),
                  style=style or None)
    console.print(t)


def _print_result(arch: str, arch_hash: str, r) -> None:
    d = dict(r.details)
    t = Table(title="latency", show_header=False)
    t.add_row("arch", f"{arch}  [dim]({arch_hash})[/]")
    t.add_row("profiler / device", f"{r.profiler} / {r.device}")
    t.add_row("shape / precision", f"{'x'.join(map(str, r.input_shape))} / {r.precision}")
    if r.is_time:
        t.add_row("median", f"[bold]{_fmt_ms(r.median_ms)} ms[/]")
        t.add_row("p90", f"{_fmt_ms(r.p90_ms)} ms")
    else:
        t.add_row(d.get("unit", "count"), f"[bold]{int(r.median_ms)}[/]  [dim](a count, not a time)[/]")
        t.add_row("MACs", f"{d.get('gmacs', 0):.3f} G")
    t.add_row("runs / source", f"{r.runs} / {r.source}" + (" (cached)" if d.get("cache") == "hit" else ""))
    for key in ("cv", "threads", "estimated_inference_ms", "compute_units", "throughput_qps", "gpu", "table"):
        if d.get(key) is not None:
            v = d[key]
            t.add_row(key, f"{v:.3f}" if isinstance(v, float) else str(v))
    console.print(t)
    bd = d.get("breakdown")
    if bd:
        _print_stages(bd)
        n_ops = len(bd["by_op_type"])
        ops = Table(title="per operator (ms per run)", caption=f"top 15 of {n_ops} op types" if n_ops > 15 else None)
        for col in ("op", "nodes", "ms", "share"):
            ops.add_column(col, justify="left" if col == "op" else "right")
        for row in bd["by_op_type"][:15]:
            ops.add_row(row["op"], str(row["nodes"]), f"{row['ms']:.3f}", f"{100 * row['share']:.1f}%")
        console.print(ops)
    if d.get("breakdown_ms"):
        bt = Table(title="predicted breakdown (ms)")
        bt.add_column("part")
        bt.add_column("ms", justify="right")
        for k, v in d["breakdown_ms"].items():
            bt.add_row(k, f"{v:.2f}")
        console.print(bt)


@app.command("calibrate")
def calibrate(
    profiler: str = typer.Option("ort-cpu", "--profiler", "-p", help="A measured profiler (lut:X means X)."),
    preset: str = typer.Option("tiny", "--preset", help="U-Net preset: tiny, small or paper."),
    shape: str = typer.Option("1x3x256x256", "--shape", help="Input shape NxCxHxW."),
    kinds: str | None = typer.Option(None, "--kinds", help="Block kinds, e.g. T,M,E (default: all that build)."),
    precision: str | None = typer.Option(None, "--precision", help="fp32, fp16 or int8 (default: the profiler's)."),
    table: Path | None = typer.Option(None, "--table", help="Table file (default: $ENS_CACHE_DIR/latency/tables/...)."),
    force: bool = typer.Option(False, "--force", help="Recalibrate even if the table exists."),
    verify_n: int = typer.Option(0, "--verify", min=0, help="Then measure N random architectures against it."),
    repeat: int = typer.Option(
        10, "--repeat", min=0,
        help="With --verify: measure this many of them twice, to show how far two measurements disagree here."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random architectures."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="ort-cpu intra-op threads (default 2)."),
    runs: int | None = typer.Option(None, "--runs", min=1, help="ort-cpu timed runs per network (default 20)."),
    statistic: str = typer.Option(
        "median", "--statistic", help="Fit each network's median, or its fastest run (min: steadier on busy machines)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON only."),
) -> None:
    """Build a per-device latency table (skeleton + one cost per stage and block kind) and check it."""
    from ens.errors import EnsError
    from ens.profiling import calibrate as run_calibration
    from ens.profiling import image_shape, measurer_of, parse_kinds, resolve_config, verify
    from profilers.lut import default_table_path

    cfg = resolve_config(preset)
    dims = image_shape(shape)
    ks = parse_kinds(kinds)
    if statistic not in ("median", "min"):
        raise EnsError(f"--statistic must be median or min, not {statistic!r}")
    prof = measurer_of(_profiler(profiler, threads, runs, False))
    prec = (precision or prof.default_precision).lower()
    prof.check()

    path = table or default_table_path(prof.spec, prof.device, dims, prec, cfg.to_dict())
    existing = None if force else _usable_table(path, cfg.to_dict(), dims, prec, ks, statistic)
    summary: dict[str, Any] = {}
    if existing is not None and verify_n > 0:
        tab = existing
        if not as_json:
            err_console.print(f"[dim]using the table at {path} (made {tab.created}; --force recalibrates)[/]")
    else:
        with _progress() as bar:
            task = bar.add_task("calibrating", total=None)

            def step(what: str, done: int, total: int) -> None:
                bar.update(task, description=f"calibrate: {what}", completed=done, total=total)

            tab, path = run_calibration(prof, cfg, dims, ks, precision=prec, preset=preset, out=path, progress=step,
                                         check=False, statistic=statistic)
    summary["table"] = str(path)
    summary["calibration_s"] = tab.calibration_s
    summary["networks_measured"] = len(tab.measurements)
    if not as_json:
        _print_table(tab, path)
    if verify_n > 0:
        with _progress() as bar:
            task = bar.add_task("verifying", total=None)

            def vstep(what: str, done: int, total: int) -> None:
                bar.update(task, description=f"verify: {what}", completed=done, total=total)

            rep = verify(tab, prof, cfg, dims, n=verify_n, seed=seed, precision=prec, progress=vstep, repeat=repeat)
        summary = {**summary, **rep.summary()}
        tab.verify = {k: v for k, v in rep.summary().items() if k != "table"}  # the error travels with the table
        tab.save(path)
        if not as_json:
            _print_verify(rep, verify_n)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        console.print_json(json.dumps(summary))


def _usable_table(path: Path, config: dict, dims, prec: str, kinds, statistic: str):
    """The table at ``path`` if it fits this network, shape, precision, kinds and statistic; else None."""
    from profilers.errors import ProfilerError
    from profilers.lut import LatencyTable

    if not path.is_file():
        return None
    try:
        tab = LatencyTable.load(path)
        tab.check_compatible(config, dims, prec)
    except (ProfilerError, KeyError, TypeError, ValueError):  # incompatible or broken: recalibrate
        return None
    return tab if set(kinds) <= set(tab.kinds) and tab.statistic == statistic else None


def _print_verify(rep, n: int) -> None:
    vt = Table(title=f"prediction error over {n} random architectures (worst first)")
    for col in ("arch", "measured ms", "predicted ms", "error"):
        vt.add_column(col, justify="left" if col == "arch" else "right")
    for row in sorted(rep.rows, key=lambda r: -abs(r["error_pct"]))[:15]:
        vt.add_row(row["arch"], f"{row['measured_ms']:.2f}", f"{row['predicted_ms']:.2f}", f"{row['error_pct']:+.1f}%")
    console.print(vt)
    s = rep.summary()
    line = (f"table: {100 * s['within_10pct']:.0f}% of {s['archs']} within ±10% of the measurement "
            f"(median |error| {s['median_abs_error_pct']:.1f}%)")
    r = s.get("repeatability")
    if r:
        line += (f"; the same file measured twice: {100 * r['within_10pct']:.0f}% of {r['archs']} within ±10% "
                 f"(median |difference| {r['median_abs_diff_pct']:.1f}%), the noise under that figure")
    d = s.get("drift")
    if d:
        line += (f"; the machine runs at {d['now_vs_calibration']:.2f}x its calibration times now, and with that "
                 f"factor out {100 * d['within_10pct']:.0f}% are within ±10% (median |error| "
                 f"{d['median_abs_error_pct']:.1f}%)")
    console.print(line)


def _print_table(tab, path: Path) -> None:
    t = Table(title=f"latency table: {tab.profiler} on {tab.device} ({tab.precision}, "
                    f"{'x'.join(map(str, tab.input_shape))})")
    t.add_column("stage")
    t.add_column("depth", justify="right")
    for k in tab.kinds:
        t.add_column(f"{k} ms/block", justify="right")
    t.add_row("skeleton", "", *[f"{tab.skeleton_ms:.2f}" if i == 0 else "" for i in range(len(tab.kinds))])
    for stage, depth in tab.stages.items():
        t.add_row(stage, str(depth), *[f"{tab.costs[stage][k]:.2f}" for k in tab.kinds])
    t.add_row("scale", "", *[f"{tab.scales.get(k, 1.0):.3f}" for k in tab.kinds])
    console.print(t)
    console.print(f"[dim]{path} ({len(tab.measurements)} networks, {tab.calibration_s:.1f} s)[/]")
