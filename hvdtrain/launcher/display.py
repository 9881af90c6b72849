"""Everything hvdtrain draws with rich lives here; other modules hand it plain data."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table

from hvdtrain.machine import classify_interface
from hvdtrain.manifest import STOPPED_EXIT, Status

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
    r = plan.recipe
    rows = [
        ("recipe", f"{plan.recipe_name}: {r.description}"),
        ("data", f"{r.data.dataset}, {plan.train_samples} train / {plan.eval_samples} eval samples"),
        ("model", r.model.component or f"{r.model.arch} (width {r.model.width})"),
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
        ("environment", ", ".join(f"{k}={v}" for k, v in plan.env.items()) or "(inherited only)"),
        ("run dir", str(plan.run_dir)),
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


# --- live run views: rich when stdout is a terminal, plain lines otherwise, JSON for --json ----

def _fmt_acc(x: object) -> str:
    """A fraction as a percentage; "-" for a value not measured (an epoch without evaluation)."""
    return "-" if x is None else f"{x * 100:.2f}%" if isinstance(x, (int, float)) else str(x)


def _fmt(x: object, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec) if isinstance(x, (int, float)) else str(x)


def header_lines(plan: Plan) -> list[str]:
    r = plan.recipe
    hosts = ", ".join(f"{h.name}:{h.slots}" for h in plan.hosts)
    if r.elastic and r.elastic.host_discovery_script:
        hosts = f"hosts from {r.elastic.host_discovery_script} (elastic, min {r.elastic.min_np})"
    elif r.elastic:
        hosts += f" (elastic, min {r.elastic.min_np})"
    return [
        f"hvdtrain run {plan.recipe_name}: {plan.np} workers on {hosts}",
        f"  compression {r.horovod.compression}, op {r.horovod.op}; batch {plan.batch_size}/worker "
        f"({plan.global_batch} global), {plan.steps_per_epoch} steps/epoch, {r.train.epochs} epochs",
        f"  LR {plan.base_lr:g} -> peak {plan.peak_lr:g} over {plan.warmup_steps} warmup steps "
        f"({r.optimizer.decay} decay)",
        f"  run dir {plan.run_dir}",
    ]


def summary_table(rows: list[dict]) -> Table:
    table = Table(title="epochs")
    for col in ("epoch", "train loss", "train acc", "eval loss", "eval acc", "time", "images/s"):
        table.add_column(col, justify="right")
    for e in rows:
        table.add_row(str(e["epoch"]), _fmt(e["train_loss"]), _fmt_acc(e["train_acc"]),
                      _fmt(e["eval_loss"]), _fmt_acc(e["eval_acc"]), f"{e['seconds']:.2f}s",
                      f"{e['images_per_s']:,.0f}")
    return table


def epoch_line(e: dict) -> str:
    return (f"epoch {e['epoch']}/{e['epochs']}: train loss {_fmt(e['train_loss'])} "
            f"acc {_fmt_acc(e['train_acc'])} | eval loss {_fmt(e['eval_loss'])} "
            f"acc {_fmt_acc(e['eval_acc'])} | {e['seconds']:.2f}s, {e['images_per_s']:,.0f} images/s")


def reset_line(e: dict) -> str:
    """An elastic reset: who left or joined, the new world, where training continues."""
    changes = [f"{what}: {', '.join(e[what])}" for what in ("left", "joined") if e[what]]
    return (f"elastic reset #{e['number']}: world size {e['old_size']} -> {e['new_size']}"
            + (f" ({'; '.join(changes)})" if changes else "")
            + f", continuing from the last commit at epoch {e['epoch']} step {e['step']} "
            f"(global step {e['global_step']}); the LR follows the new size")


def step_stats(e: dict) -> str:
    return (f"loss {_fmt(e['loss'])} acc {_fmt_acc(e['acc'])} lr {e['lr']:.5g} "
            f"{e['images_per_s']:,.0f} img/s")


def position(e: dict) -> str:
    """'epoch 3' after a whole epoch, else 'epoch 2 + 45 steps' (a mid-epoch stop)."""
    step = e.get("step") or 0
    return f"epoch {e['epoch']}" + (f" + {step} step{'s' if step != 1 else ''}" if step else "")


class PlainView:
    """Plain log lines, no control codes: for CI logs and pipes."""

    def __init__(self, plan: Plan, out=None) -> None:
        self.plan, self.out = plan, out or sys.stdout
        self.epochs: list[dict] = []
        self.done: dict | None = None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def begin(self) -> None:
        for line in header_lines(self.plan):
            self.say(line)
        self.say(f"  command: {self.plan.command}")

    def event(self, e: dict) -> None:
        kind = e["event"]
        if kind == "start":
            c = e["wire"]
            devices = ", ".join(sorted(set(e["devices"])))
            self.say(f"started: {e['world_size']} ranks on {', '.join(sorted(set(e['hosts'])))}, "
                     f"{e['params']:,} parameters on {devices} in {e['precision']}, "
                     f"gradients {c['wire_dtype']} on the wire "
                     f"({c['wire_bytes']:,} of {c['grad_bytes']:,} bytes)")
        elif kind == "step":
            self.say(f"epoch {e['epoch']} step {e['step']}/{e['steps']}: {step_stats(e)}")
        elif kind == "epoch":
            self.epochs.append(e)
            self.say(epoch_line(e))
        elif kind == "checkpoint":
            self.say(f"checkpoint: {position(e)} -> {e['path']}")
        elif kind == "stopped":
            self.say(f"stopped on request after {position(e)} (global step {e['global_step']}): "
                     f"checkpoint {e['path']}")
        elif kind == "resumed":
            same = len(set(e["optimizer_hashes"])) == 1
            self.say(f"resumed from {e['path']} after {position(e)}: model and optimizer "
                     f"state restored on "
                     f"{len(e['optimizer_hashes'])} ranks ({'identical' if same else 'DIFFERENT'})")
        elif kind == "reset":
            self.say(reset_line(e))
        elif kind == "warning":
            self.say(f"warning: {e['message']}")
        elif kind == "error":
            self.say(f"error: {e['message']}")
        elif kind == "done":
            self.done = e

    def output(self, line) -> None:
        who = "horovodrun" if line.rank is None else f"rank {line.rank}"
        self.say(f"[{who}] {line.text}")

    def closing(self, code: int) -> str:
        if code == STOPPED_EXIT:
            return f"run stopped with a checkpoint (exit code {code}); run dir {self.plan.run_dir}"
        if code in (129, 130, 143):  # SIGHUP, SIGINT, SIGTERM
            return f"run interrupted (exit code {code}); run dir {self.plan.run_dir}"
        if code != 0:
            return f"run failed (exit code {code}); run dir {self.plan.run_dir}"
        if self.done:
            same = "identical" if self.done.get("replicas_identical") else "DIFFERENT"
            return (f"finished: eval accuracy {_fmt_acc(self.done['eval_acc'])}, model replicas "
                    f"{same} on all ranks; run dir {self.plan.run_dir}")
        return f"finished; run dir {self.plan.run_dir}"

    def end(self, code: int, failure: list[str] | None = None) -> None:
        for line in failure or []:
            self.say(line)
        self.say(self.closing(code))


class LiveView(PlainView):
    """rich progress bars (epochs and steps) with throughput, loss, accuracy, LR and ETA."""

    def __init__(self, plan: Plan, console: Console) -> None:
        super().__init__(plan)
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.console = console
        self.progress = Progress(TextColumn("{task.description:>6}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                                 TimeRemainingColumn(), console=console)
        self.epoch_task = self.step_task = None

    def say(self, text: str) -> None:
        self.progress.console.print(escape(text), highlight=False, soft_wrap=True)

    def begin(self) -> None:
        self.console.rule(escape(header_lines(self.plan)[0]))
        for line in header_lines(self.plan)[1:]:
            self.console.print(escape(line), highlight=False)
        self.progress.start()

    def event(self, e: dict) -> None:
        kind = e["event"]
        if kind == "start":
            self.epoch_task = self.progress.add_task("epoch", total=e["epochs"],
                                                     completed=e["start_epoch"], stats="")
            self.step_task = self.progress.add_task("step", total=e["steps_per_epoch"],
                                                    completed=e["start_step"], stats="")
            super().event(e)
        elif kind == "step" and self.step_task is not None:
            self.progress.update(self.step_task, completed=e["step"], stats=step_stats(e))
        elif kind == "epoch" and self.epoch_task is not None:
            self.progress.update(self.epoch_task, completed=e["epoch"],
                                 stats=f"eval acc {_fmt_acc(e['eval_acc'])}")
            if e["epoch"] < e["epochs"]:  # keep the last epoch's full bar on screen
                self.progress.reset(self.step_task, total=self.progress.tasks[1].total, stats="")
            super().event(e)
        else:
            super().event(e)

    def output(self, line) -> None:
        who = "horovodrun" if line.rank is None else f"rank {line.rank}"
        style = "red" if line.stream == "stderr" else "dim"
        self.progress.console.print(f"[{style}]\\[{who}][/] {escape(line.text)}", highlight=False,
                                    soft_wrap=True)

    def end(self, code: int, failure: list[str] | None = None) -> None:
        from rich.panel import Panel

        self.progress.stop()
        if self.epochs:
            self.console.print(summary_table(self.epochs))
        if failure:
            self.console.print(Panel(escape("\n".join(failure)), title="what went wrong",
                                     border_style="red"))
        style = "green" if code == 0 else "bold red"
        self.console.print(f"[{style}]{escape(self.closing(code))}[/]")


class JsonView:
    """``run --json``: every event as one JSON line on stdout; worker output on stderr."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def begin(self) -> None:
        print(json.dumps({"event": "plan", "argv": self.plan.argv, "run_dir": str(self.plan.run_dir),
                          "np": self.plan.np}), flush=True)

    def event(self, e: dict) -> None:
        print(json.dumps(e), flush=True)

    def output(self, line) -> None:
        who = "horovodrun" if line.rank is None else f"rank {line.rank}"
        print(f"[{who}] {line.text}", file=sys.stderr, flush=True)

    def end(self, code: int, failure: list[str] | None = None) -> None:
        print(json.dumps({"event": "exit", "code": code, "run_dir": str(self.plan.run_dir),
                          "failure": failure or []}), flush=True)


def make_view(plan: Plan, as_json: bool = False):
    if as_json:
        return JsonView(plan)
    console = Console(highlight=False)
    return LiveView(plan, console) if console.is_terminal else PlainView(plan)


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
