"""The Typer application object; each verb lives in its own module under ens/cli/."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="ens",
    help="Hardware-aware neural architecture search for image restoration.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)
