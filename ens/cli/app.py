"""The Typer application object; each verb lives in its own module under ens/cli/."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from studies.storage import redact

app = typer.Typer(
    name="ens",
    help="Hardware-aware neural architecture search for image restoration.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


AMP_HELP = ("Mixed precision: auto (bf16 autocast on CUDA, fp16 with a gradient scaler where bf16 is missing, "
            "none on the CPU), bf16, fp16 or off.")


def log_line(text: str) -> None:
    """A progress message: unwrapped, so a path or command in it survives a redirect to a file intact."""
    console.print(escape(redact(text)), highlight=False, soft_wrap=True)
