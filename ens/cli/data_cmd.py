"""``ens tasks`` and ``ens data preview|check``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ens.cli.app import app, console

data_app = typer.Typer(help="Look at and check a task's training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_SPLITS = ("train", "val")


@app.command("tasks")
def tasks(
    as_json: bool = typer.Option(False, "--json", help="Print the tasks as JSON instead of a table."),
) -> None:
    """List the tasks, their synthetic degradations, metrics and accepted dataset layouts."""
    from ens.data.layouts import LAYOUTS
    from ens.degradations import get_degradation
    from ens.tasks import list_tasks

    rows = []
    for t in list_tasks():
        rows.append(
            {
                "name": t.name,
                "description": t.description,
                "degradation": t.degradation,
                "degradation_detail": get_degradation(t.degradation).description,
                "metric": t.metric_description,
                "y_channel": t.y_channel,
                "crop_border": t.crop_border,
                "patch_size": t.patch_size,
                "scale": t.scale,
                "layouts": list(t.layouts),
                "datasets": list(t.datasets),
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="tasks", show_lines=True)
    for col in ("task", "degradation (synthetic data)", "metric", "patch", "dataset layouts"):
        table.add_column(col, overflow="fold")
    for r in rows:
        layouts = ", ".join(r["layouts"]) + " or clean"
        if r["datasets"]:
            layouts += f"\n({', '.join(r['datasets'])})"
        table.add_row(
            f"[bold]{r['name']}[/]\n{r['description']}",
            f"{r['degradation']}\n{r['degradation_detail']}",
            r["metric"],
            str(r["patch_size"]),
            layouts,
        )
    console.print(table)
    legend = Table(title="layouts (--data DIR, --layout auto detects them)", show_header=False)
    for name, text in LAYOUTS.items():
        legend.add_row(name, text)
    console.print(legend)


@data_app.command("preview")
def preview(
    task: str = typer.Option(..., "--task", "-t", help="Task name (see 'ens tasks')."),
    out: Path = typer.Option(Path("preview.png"), "--out", "-o", help="Image to write (.png or .jpg)."),
    data: Path | None = typer.Option(None, "--data", help="Dataset folder; default: embedded photographs."),
    layout: str = typer.Option("auto", "--layout", help="auto, gopro, sidd, paired or clean."),
    n: int = typer.Option(6, "--n", min=1, max=64, help="Number of pairs to show."),
    size: int | None = typer.Option(None, "--size", min=8, max=1024, help="Crop size in pixels (default 128)."),
    split: str = typer.Option("train", "--split", help="train or val."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed for the crops and degradations (train split)."),
) -> None:
    """Write a grid of degraded and clean pairs, to look at what the network will learn from."""
    from ens.data.errors import DataError
    from ens.data.preview import write_preview

    if split not in _SPLITS:
        raise DataError(f"--split must be train or val, got {split!r}")
    with console.status(f"cutting and degrading {n} {task} pairs"):
        path = write_preview(out, task, data, n=n, size=size, seed=seed, split=split, layout=layout)
    console.print(f"wrote {path}: {n} pairs, degraded (left) | clean (right)", highlight=False)


@data_app.command("check")
def check(
    task: str = typer.Option(..., "--task", "-t", help="Task name (see 'ens tasks')."),
    data: Path = typer.Option(..., "--data", help="Dataset folder to check."),
    layout: str = typer.Option("auto", "--layout", help="auto, gopro, sidd, paired or clean."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Read at most this many pairs per split."),
) -> None:
    """Detect a folder's layout and splits, then read every pair and check it (sizes, formats)."""
    from rich.progress import Progress

    from ens.data.check import check_dataset

    with Progress(console=console, transient=True) as progress:
        bars: dict[str, object] = {}

        def advance(split: str, done: int, total: int) -> None:
            if split not in bars:
                bars[split] = progress.add_task(f"reading {split}", total=total)
            progress.update(bars[split], completed=done)

        result = check_dataset(task, data, layout, limit=limit, on_pair=advance)
    spec = result.spec
    table = Table(title=f"{data}", show_header=False)
    table.add_row("layout", spec.layout)
    table.add_row("split", spec.split_source)
    for split, c in result.splits.items():
        table.add_row(split, f"{c.pairs} pairs ({c.read} read), {c.smallest[1]}x{c.smallest[0]} to "
                             f"{c.largest[1]}x{c.largest[0]} px")
    if spec.skipped:
        table.add_row("skipped", ", ".join(spec.skipped))
    console.print(table)
    console.print("all pairs read: ok", highlight=False)
