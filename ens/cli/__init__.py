"""Command-line entry point: ``ens VERB ...``.

Every verb module registers itself on :data:`ens.cli.app.app`. Errors that are the user's
(bad input, unreachable device, missing token) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

from rich.markup import escape

from ens.cli import commands as _commands  # noqa: F401  (registers the verbs)
from ens.cli.app import app, err_console
from ens.cli.errors import user_error_types
from studies.storage import redact


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="ens")
    except user_error_types() as exc:
        err_console.print(f"[bold red]error:[/] {escape(redact(str(exc)))}", highlight=False, soft_wrap=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]: completed work was kept")
        sys.exit(130)


__all__ = ["app", "main"]
