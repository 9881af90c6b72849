"""Everything hvdtrain draws with rich lives here; other modules hand it plain data."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hvdtrain.doctor import Check

_LEVEL_STYLE = {"ok": "[green]ok[/]", "info": "[blue]info[/]", "warn": "[yellow]warn[/]",
                "error": "[bold red]error[/]"}


def doctor_table(checks: list[Check]) -> Table:
    table = Table(title="hvdtrain doctor", show_lines=False)
    table.add_column("check", style="bold")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    table.add_column("fix", overflow="fold")
    for c in checks:
        table.add_row(escape(c.name), _LEVEL_STYLE[c.level], escape(c.detail), escape(c.fix or ""))
    return table


def print_doctor(console: Console, checks: list[Check], ok: bool) -> None:
    console.print(doctor_table(checks))
    if ok:
        console.print("[green]This machine can run hvdtrain.[/]")
    else:
        console.print("[bold red]This machine cannot run hvdtrain yet[/]: fix the errors above.")
