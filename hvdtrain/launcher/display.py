"""Everything hvdtrain draws with rich lives here and in runview.py (a run's live views); other
modules hand it plain data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table

from hvdtrain.machine import classify_interface
from hvdtrain.manifest import Status

if TYPE_CHECKING:
    from hvdtrain.launcher.hosts import HostList
    from hvdtrain.launcher.plan import Plan
    from hvdtrain.setup.doctor import Check

_LEVEL_STYLE = {"ok": "[green]ok[/]", "info": "[blue]info[/]", "warn": "[yellow]warn[/]",
                "error": "[bold red]error[/]"}


def doctor_table(checks: list[Check]) -> Table:
    """Check, status and finding; the fixes are printed below (they are sentences)."""
    table = Table(title="hvdtrain doctor", show_lines=False)
    table.add_column("check", style="bold", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for c in checks:
        table.add_row(escape(c.name), _LEVEL_STYLE[c.level], escape(c.detail))
    return table


def print_doctor(console: Console, checks: list[Check], ok: bool) -> None:
    console.print(doctor_table(checks))
    for c in checks:
        if c.fix:
            console.print(f"fix for {escape(c.name)}: {escape(c.fix)}", soft_wrap=True)
    if ok:
        console.print("[green]This machine can run hvdtrain.[/]")
    else:
        console.print("[bold red]This machine cannot run hvdtrain yet[/]: fix the errors above.")


def recipes_table(rows: list[dict]) -> Table:
    table = Table(title="shipped recipes (run one: hvdtrain run NAME)")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("description")
    for row in rows:
        table.add_row(row["name"], escape(row["description"]))
    return table


RUN_STYLES = {Status.FINISHED: "green", Status.RUNNING: "blue", Status.FAILED: "red",
              Status.KILLED: "red", Status.INTERRUPTED: "yellow", Status.STOPPED: "yellow",
              Status.REQUEUED: "cyan", Status.QUEUED: "cyan"}


def _run_fields(r: dict) -> list[str]:
    wall = r["wall_seconds"]
    style = RUN_STYLES.get(r["status"].split(" ")[0], "white")  # "queued (Slurm job N)"
    return [f"[{style}]{escape(r['status'])}[/]", str(r["np"] or "-"),
            f"{r['epochs_done']}/{r['epochs'] or '?'}", _fmt_acc(r["best_eval_acc"]),
            "-" if wall is None else f"{wall:,.0f}s"]


def print_runs(console: Console, rows: list[dict], folder: str) -> None:
    """`hvdtrain runs`, newest first: a table on wide terminals, one block per run (the name alone
    on its line) on narrow ones; names never break."""
    if not rows:
        console.print(f"no run directories in {escape(folder)}")
        return
    heads = ("run", "recipe", "status", "np", "hosts", "epochs", "best eval", "wall", "started")
    print_table_or_blocks(console, heads, [
        [escape(r["name"]), escape(r["recipe"] or "-"), _run_fields(r)[0], str(r["np"] or "-"),
         escape(",".join(dict.fromkeys(r["hosts"])) or "-"), *_run_fields(r)[2:],
         (r["start_time"] or "-")[:16].replace("T", " ")] for r in rows],
        title=f"runs in {escape(folder)} (newest first)")


def print_report(console: Console, rows: list[dict], png: object) -> None:
    """`hvdtrain report`: one block per run (labels can be long), then where the picture is."""
    for r in rows:
        wall, rate = r["wall_seconds"], r["images_per_s"]
        console.print(f"[bold]{escape(r['run'])}[/]  {escape(r['run_dir'])}", soft_wrap=True)
        console.print(f"   eval accuracy final {_fmt_acc(r['final_eval_acc'])}, best "
                      f"{_fmt_acc(r['best_eval_acc'])}; {r['epochs']} epoch(s), "
                      f"{'-' if wall is None else f'{wall:,.0f} s'}, "
                      f"{'-' if rate is None else f'{rate:,.0f}'} images/s; np {r['np']} on "
                      f"{escape(', '.join(r['hosts']))}"
                      + (f"; {r['unreadable_lines']} unreadable metrics line(s) skipped"
                         if r["unreadable_lines"] else ""))
    console.print(f"wrote {escape(str(png))}", soft_wrap=True)


def print_validation(results: list[dict]) -> None:
    """`hvdtrain validate`: OK lines (with warnings) on stdout, ERROR blocks on stderr."""
    for r in results:
        if r["ok"]:
            print(f"OK     {r['source']}", flush=True)
            for line in r.get("runs_code", []):
                print(f"       runs code: {line}", flush=True)
            for w in r["warnings"]:
                print(f"       warning: {w}", flush=True)
        else:
            print(f"ERROR  {r['source']}", file=sys.stderr)
            print("\n".join(f"       {e}" for e in r["errors"]), file=sys.stderr, flush=True)


def print_hosts(console: Console, hosts: HostList) -> None:
    """`hvdtrain hosts FILE`: host, slots and line; names whole at any width."""
    console.print(f"hosts from {escape(hosts.source)}", soft_wrap=True)
    print_table_or_blocks(console, ("host", "slots", "line"),
                          [[escape(h.name), str(h.slots), str(h.line)] for h in hosts.hosts])
    console.print(f"{len(hosts.hosts)} host(s), {hosts.total_slots} slot(s)")
    print_warnings(console, hosts.warnings)


def print_warnings(console: Console, warnings: list[str] | tuple[str, ...]) -> None:
    for w in warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")


def print_plan(console: Console, plan: Plan) -> None:
    from hvdtrain.launcher.tracking import describe

    r = plan.recipe
    rows = [
        ("recipe", f"{plan.recipe_name}: {r.description}"),
        ("data", f"{r.data.dataset}, {plan.train_samples} train / {plan.eval_samples} eval samples"),
        ("model", r.model.component or f"{r.model.arch} (width {r.model.width})"),
        *[("runs code", f"{key} from {file}") for key, _, file in plan.components],
        *([("classes", _names(plan.classes))] if plan.classes else []),
        ("optimizer", f"{r.optimizer.name}, {r.optimizer.lr_scaling} LR scaling, "
                      f"{r.optimizer.warmup_epochs:g} warmup epoch(s), {r.optimizer.decay} decay"),
        ("compute", f"{_device_text(r.train.device)}, precision {r.train.precision}"),
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
        *([("powersgd", plan.wire)] if plan.wire else []),
        *([("forecast", plan.forecast)] if plan.forecast else []),
        ("environment", ", ".join(f"{k}={v}" for k, v in plan.env.items()) or "(inherited only)"),
        ("run dir", str(plan.run_dir)),
        *([("resume", resume_text(plan))] if plan.resume else []),
        *([("tracking", tracked)] if (tracked := describe(plan)) else []),
    ]
    for key, value in rows:  # one line each: paths and names are never cut
        console.print(f"[bold]{key:<14}[/] {escape(value)}", soft_wrap=True)
    print_table_or_blocks(
        console, ("host", "rank", "local rank", "device"),
        [[escape(p.host), str(p.rank), str(p.local_rank), _device_text(r.train.device, p.local_rank)]
         for p in plan.placement], title="rank placement")
    lrs = Table(title="learning rate")
    for col in ("point", "step", "epoch", "lr"):
        lrs.add_column(col)
    for label, step, lr in plan.lr_points:
        lrs.add_row(label, str(step), f"{(step + 1) / plan.steps_per_epoch:.2f}", f"{lr:.6g}")
    console.print(lrs)
    print_warnings(console, plan.warnings)
    console.print("[bold]horovodrun command:[/]")
    console.print(escape(plan.command), soft_wrap=True, highlight=False)


def _names(classes: list[str], shown: int = 12) -> str:
    """``N: a, b, c`` (index order), the first ``shown`` of many."""
    listed = ", ".join(classes[:shown]) + (f", ... {len(classes) - shown} more"
                                            if len(classes) > shown else "")
    return f"{len(classes)}: {listed}"


def resume_text(plan: Plan) -> str:
    """What `--resume` continues and how its recipe differs from the run's own."""
    after = f"after epoch {plan.epochs_done}" if plan.epochs_done else "from epoch 1"
    return (f"continues {after} with the run's own recipe"
            + (f", changed: {'; '.join(plan.resume_changes)}" if plan.resume_changes
               else ", unchanged"))


def _device_text(setting: str, local_rank: int | None = None) -> str:
    """What ``train.device`` means for a rank (the plan cannot see the hosts' GPUs)."""
    gpu = "cuda" if local_rank is None else f"cuda:{local_rank}"
    return {"cpu": "cpu", "cuda": gpu}.get(setting, f"{gpu} if CUDA is there, else cpu")


def print_table_or_blocks(console: Console, heads: tuple[str, ...], rows: list[list[str]],
                          title: str | None = None) -> None:
    """A table whose first column (host names, run names, keys) never breaks: when the widest
    first cell does not fit beside the other columns, one block per row instead, the name alone
    on its line and the other columns as ``head value`` pairs below it."""
    from rich import box
    from rich.text import Text

    if title:
        console.print(title)
    rest = max((sum(Text.from_markup(c).cell_len for c in row[1:]) for row in rows), default=0)
    widest = max((Text.from_markup(row[0]).cell_len for row in rows), default=0)
    if widest + rest + 3 * len(heads) > console.width:
        for row in rows:
            console.print(row[0], soft_wrap=True)
            pairs = [f"{h} {v}" for h, v in zip(heads[1:], row[1:], strict=True) if v]
            console.print(Padding("  ".join(pairs), (0, 0, 0, 3)))  # wraps at spaces only
        return
    table = Table(box=box.SIMPLE_HEAD)
    for i, head in enumerate(heads):
        table.add_column(head, no_wrap=i == 0, min_width=len(head))
    for row in rows:
        table.add_row(*row)
    console.print(table)


def print_preflight(console: Console, report: dict) -> None:
    """`hosts --check`: a table of versions per host (names whole at any width), then each
    host's interfaces and problems as blocks below it."""
    rows, notes = [], []
    for r in report["hosts"]:
        f = r["facts"] or {}
        v = f.get("versions", {})
        ssh = "local" if r["local"] else ("[green]ok[/]" if r["reachable"] else "[red]unreachable[/]")
        rows.append([escape(r["host"]), ssh, f.get("python", ""), v.get("torch") or "",
                     v.get("horovod") or "", v.get("hvdtrain") or ""])
        ifaces = ", ".join(
            n if (kind := classify_interface(n, a)) == "physical" else f"{n} ({kind})"
            for n, a in sorted(f.get("interfaces", {}).items()))
        lines = ([f"interfaces: {escape(ifaces)}"] if ifaces else []) + \
            [f"[red]{escape(p)}[/]" for p in r["problems"]]
        notes.append((r["host"], lines))
    print_table_or_blocks(console, ("host", "ssh", "python", "torch", "horovod", "hvdtrain"), rows,
                          title="pre-flight check")
    for host, lines in notes:  # sentences wrap at spaces, indented under their host
        console.print(f"{escape(host)}:", soft_wrap=True)
        for line in lines:
            console.print(Padding(line, (0, 0, 0, 2)))
    common = ", ".join(report["common_interfaces"]) or "none"
    console.print(f"interfaces on every host (not loopback/docker/bridge): {escape(common)}")
    if report["recommended_network_interfaces"]:
        setting = f"launch.network_interfaces=[{','.join(report['recommended_network_interfaces'])}]"
        console.print(f"recommended: {escape(setting)}")
    console.print("[green]all hosts can run this job[/]" if report["ok"]
                  else "[bold red]fix the problems above before launching[/]")


# --- formatting shared with the run views (runview.py) ----------------------------------

def _fmt_acc(x: object) -> str:
    """A fraction as a percentage; "-" for a value not measured (an epoch without evaluation)."""
    return "-" if x is None else f"{x * 100:.2f}%" if isinstance(x, (int, float)) else str(x)


def _fmt(x: object, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec) if isinstance(x, (int, float)) else str(x)


def bench_table(rows: list[dict], title: str) -> Table:
    """`hvdtrain bench`: one row per configuration; fits 80 columns. With several rounds, a
    "spread" column: (max - min) / median of the rounds' images/s."""
    rounds = any(len(r.get("rounds_images_per_s", ())) > 1 for r in rows)
    table = Table(title=title, title_justify="left")
    for name, justify in (("run", "left"), ("np", "right"), ("grads", "left"),
                          ("img/s", "right"), *((("spread", "right"),) if rounds else ()),
                          ("/rank", "right"), ("eff.", "right"), ("MB/step", "right"),
                          ("wait", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    pct = (lambda v: "-" if v is None else f"{100 * v:.0f}%")
    for r in rows:
        if "error" in r:
            table.add_row(r["kind"], str(r["np"]), r["compression"], "[red]failed[/]",
                          *[""] * (len(table.columns) - 4))
            continue
        spread = (pct(r.get("spread")),) if rounds else ()
        table.add_row(r["kind"], str(r["np"]), r["compression"], f"{r['images_per_s']:,.0f}",
                      *spread, f"{r['images_per_s_per_rank']:,.0f}", pct(r["efficiency"]),
                      f"{r['allreduce_mb_per_step']:.2f}", pct(r["allreduce_wait_share"]))
    return table


def print_bench(console: Console, rows: list[dict], title: str, path: Path) -> None:
    console.print(bench_table(rows, title))
    console.print("grads: compression on the wire (ddp: its comm hook); eff.: images/s over np x "
                  "the np=1 run of the same kind; wait: share of the step waiting for the "
                  "allreduce (hvdtrain only; DDP overlaps it inside backward)", style="dim")
    for r in rows:
        if "error" in r:
            console.print(f"[red]{r['kind']} np={r['np']} {r['compression']}: {escape(r['error'])}[/]")
    console.print(f"results: {escape(str(path))}")


def forecast_table(result: dict) -> Table:
    """`hvdtrain forecast`: one row per world size and compression; fits 80 columns."""
    link = result["link"]
    table = Table(title=f"{result['recipe']}: batch {result['batch_size']}/rank, "
                        f"{result['ranks_per_host']} rank(s)/host, link {link['name']}",
                  title_justify="left")
    for name, justify in (("np", "right"), ("hosts", "right"), ("grads", "left"),
                          ("img/s", "right"), ("band", "right"), ("eff.", "right"),
                          ("compute", "right"), ("comm", "right"), ("use", "left")):
        table.add_column(name, justify=justify, no_wrap=True)
    for r in result["forecasts"]:
        slow, fast = r["band"]
        table.add_row(str(r["np"]), str(r["hosts"]), r["compression"], f"{r['images_per_s']:,.0f}",
                      f"{slow:,.0f}-{fast:,.0f}", f"{100 * r['efficiency']:.0f}%",
                      f"{1e3 * r['compute_s']:.1f}", f"{1e3 * r['exposed_s']:.1f}",
                      "<-" if r["recommended"] and r["np"] > 1 else "")
    return table


def print_forecast(console: Console, result: dict) -> None:
    console.print(forecast_table(result))
    link, prof = result["link"], result["profile"]
    where = ("measured between the hosts" if link["measured"] else
             "assumed (or --link measured --hosts ...)")
    console.print(f"link: {link['gbit']:.3g} Gbit/s, {1e6 * link['latency_s']:.0f} us latency, "
                  f"{where}", style="dim")
    if result["loopback"]:
        lb = result["loopback"]
        console.print(f"one host: measured loopback, {lb['gbit']:.3g} Gbit/s, "
                      f"{1e6 * lb['latency_s']:.0f} us latency", style="dim")
    console.print(f"compute: measured on this machine, {prof['threads']} thread(s)/rank, "
                  f"{prof['ranks']} rank(s) sharing it ({str(prof.get('measured_at'))[:16]})",
                  style="dim")
    console.print("img/s: the point estimate; band: communication not hidden at all .. fully "
                  "hidden behind backward; eff.: img/s over np x one rank; compute, comm: ms a "
                  "step (comm: what backward does not hide); <-: the compression to use "
                  "(a simpler one when within 3 %)", style="dim")
    print_warnings(console, result["notes"])
