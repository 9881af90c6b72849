"""The `hvdtrain` command line: thin Typer forwarders. Library errors are caught only here.

Nothing at module level imports torch or horovod: `hvdtrain --help` must stay instant.
"""

from __future__ import annotations

import json
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from hvdtrain import __version__
from hvdtrain.errors import UserError

app = typer.Typer(
    name="hvdtrain",
    help="Data-parallel CNN training with Horovod and PyTorch, from validated recipes.\n\n"
    "Start with `hvdtrain doctor`, then `hvdtrain recipes` and `hvdtrain run digits-cnn --np 2`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hvdtrain {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Data-parallel CNN training with Horovod and PyTorch."""


def fail(exc: UserError) -> NoReturn:
    """Print a user error (no traceback) and exit with its code."""
    err_console.print(f"[bold red]error:[/] {escape(exc.render())}", highlight=False)
    raise typer.Exit(exc.exit_code)


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Check that this machine can run hvdtrain: Python, torch, Horovod build, network, ssh.

    Exit code 0 when it can; 1 with the fix for each problem when it cannot.
    """
    from hvdtrain import doctor as doc

    facts = doc.gather_facts()
    checks = doc.check(facts)
    ok = doc.healthy(checks)
    if as_json:
        typer.echo(json.dumps(doc.report(facts, checks), indent=2))
    else:
        from hvdtrain.display import print_doctor

        print_doctor(Console(), checks, ok)
    raise typer.Exit(0 if ok else 1)


def main() -> None:
    app()
