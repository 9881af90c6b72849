"""Everything hvdtrain draws with rich lives here; other modules hand it plain data."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hvdtrain.doctor import Check

if TYPE_CHECKING:
    from hvdtrain.hosts import HostList
    from hvdtrain.plan import Plan

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


def hosts_table(hosts: HostList) -> Table:
    table = Table(title=f"hosts from {escape(hosts.source)}")
    table.add_column("line", justify="right")
    table.add_column("host")
    table.add_column("slots", justify="right")
    for h in hosts.hosts:
        table.add_row(str(h.line), escape(h.name), str(h.slots))
    table.caption = f"{len(hosts.hosts)} host(s), {hosts.total_slots} slot(s)"
    return table


def print_warnings(console: Console, warnings: list[str] | tuple[str, ...]) -> None:
    for w in warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")


def print_plan(console: Console, plan: Plan) -> None:
    r = plan.recipe
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    rows = [
        ("recipe", f"{plan.recipe_name}: {r.description}"),
        ("data", f"{r.data.dataset}, {plan.train_samples} train / {plan.eval_samples} eval samples"),
        ("model", f"{r.model.arch} (width {r.model.width})"),
        ("optimizer", f"{r.optimizer.name}, {r.optimizer.lr_scaling} LR scaling, "
                      f"{r.optimizer.warmup_epochs:g} warmup epoch(s), {r.optimizer.decay} decay"),
        ("epochs", str(r.train.epochs)),
        ("world size", f"{plan.np} process(es) on {len(plan.hosts)} host(s) from {plan.host_source}"),
        ("batch", f"{plan.batch_size} per worker x {plan.np} workers"
                  + (f" x {r.horovod.backward_passes_per_step} passes"
                     if r.horovod.backward_passes_per_step > 1 else "")
                  + f" = {plan.global_batch} global"),
        ("steps / epoch", str(plan.steps_per_epoch)),
        ("learning rate", f"base {plan.base_lr:g} per worker -> peak {plan.peak_lr:g}, "
                          f"warmup {plan.warmup_steps} steps"),
        ("allreduce", f"compression {r.horovod.compression}, op {r.horovod.op}, "
                      f"predivide {r.horovod.gradient_predivide_factor:g}"),
        ("environment", ", ".join(f"{k}={v}" for k, v in plan.env.items()) or "(inherited only)"),
        ("run dir", str(plan.run_dir)),
    ]
    for key, value in rows:
        summary.add_row(key, escape(value))
    console.print(summary)

    ranks = Table(title="rank placement")
    for col in ("rank", "host", "local rank"):
        ranks.add_column(col)
    for p in plan.placement:
        ranks.add_row(str(p.rank), escape(p.host), str(p.local_rank))
    lrs = Table(title="learning rate")
    for col in ("point", "step", "epoch", "lr"):
        lrs.add_column(col)
    for label, step, lr in plan.lr_points:
        lrs.add_row(label, str(step), f"{(step + 1) / plan.steps_per_epoch:.2f}", f"{lr:.6g}")
    console.print(ranks)
    console.print(lrs)
    print_warnings(console, plan.warnings)
    console.print("[bold]horovodrun command:[/]")
    console.print(escape(plan.command), soft_wrap=True, highlight=False)
