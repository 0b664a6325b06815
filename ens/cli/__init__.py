"""Command-line entry point: ``ens VERB ...``.

Every verb module registers itself on :data:`ens.cli.app.app`. Errors that are the user's
(bad input, unreachable device, missing token) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from ens.cli import commands as _commands  # noqa: F401  (registers the verbs)
from ens.cli.app import app, err_console
from ens.cli.errors import user_error_types
from studies.storage import redact

try:  # typer >= 0.25 vendors click as typer._click; older ones use click itself
    from typer._click import exceptions as _cx
except ImportError:  # pragma: no cover
    from click import exceptions as _cx


def main(argv: list[str] | None = None) -> None:
    try:
        code = app(args=argv, prog_name="ens", standalone_mode=False)
    except _cx.NoArgsIsHelpError as exc:  # ``ens`` or ``ens zoo`` alone: the help, as before
        print(exc.ctx.get_help() if exc.ctx else str(exc), file=sys.stderr)
        sys.exit(2)
    except _cx.UsageError as exc:  # a bad option or value, caught by the parser: one line too
        where = f" (see {exc.ctx.command_path} --help)" if exc.ctx else ""
        _error(f"{exc.format_message()}{where}", 2)
    except _cx.ClickException as exc:
        _error(exc.format_message(), exc.exit_code)
    except typer.Abort:
        _error("aborted", 1)
    except user_error_types() as exc:
        _error(str(exc), getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]: completed work was kept")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)  # typer.Exit(code), Ctrl-C inside a command (130)


def _error(message: str, code: int) -> None:
    """One line on stderr (URL passwords redacted, rich markup shown as written), then exit."""
    text = " ".join(redact(message).split())
    err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)
    sys.exit(code)


__all__ = ["app", "main"]
