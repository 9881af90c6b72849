"""The run views: rich progress when stdout is a terminal, plain log lines otherwise, JSON lines
for ``--json``. They draw the typed events (hvdtrain/events.py) the launcher hands them."""

from __future__ import annotations

import json
import shlex
import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hvdtrain.events import (BestEvent, CheckpointEvent, DoneEvent, EpochEvent, Event, ResetEvent,
                             ResumedEvent, StepEvent, StoppedEvent)
from hvdtrain.launcher.display import _fmt, _fmt_acc, resume_text
from hvdtrain.manifest import INTERRUPTS, STOPPED_EXIT

if TYPE_CHECKING:
    from hvdtrain.launcher.plan import Plan


def header_lines(plan: Plan) -> list[str]:
    from hvdtrain.launcher.tracking import describe

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
        *([f"  powersgd {plan.wire}"] if plan.wire else []),
        f"  LR {plan.base_lr:g} -> peak {plan.peak_lr:g} over {plan.warmup_steps} warmup steps "
        f"({r.optimizer.decay} decay)",
        f"  run dir {plan.run_dir}",
        *([f"  resume: {resume_text(plan)}"] if plan.resume else []),
        *([f"  tracking: {tracked}"] if (tracked := describe(plan)) else []),
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


def epoch_line(e: EpochEvent) -> str:
    return (f"epoch {e['epoch']}/{e['epochs']}: train loss {_fmt(e['train_loss'])} "
            f"acc {_fmt_acc(e['train_acc'])} | eval loss {_fmt(e['eval_loss'])} "
            f"acc {_fmt_acc(e['eval_acc'])} | {e['seconds']:.2f}s, {e['images_per_s']:,.0f} images/s")


def reset_line(e: ResetEvent) -> str:
    """An elastic reset: who left or joined, the new world, where training continues."""
    changes = [f"{what}: {', '.join(e[what])}" for what in ("left", "joined") if e[what]]
    return (f"elastic reset #{e['number']}: world size {e['old_size']} -> {e['new_size']}"
            + (f" ({'; '.join(changes)})" if changes else "")
            + f", continuing from the last commit at epoch {e['epoch']} step {e['step']} "
            f"(global step {e['global_step']}); the LR follows the new size")


def step_stats(e: StepEvent) -> str:
    return (f"loss {_fmt(e['loss'])} acc {_fmt_acc(e['acc'])} lr {e['lr']:.5g} "
            f"{e['images_per_s']:,.0f} img/s")


def position(e: CheckpointEvent | StoppedEvent | ResumedEvent) -> str:
    """'epoch 3' after a whole epoch, else 'epoch 2 + 45 steps' (a mid-epoch stop)."""
    step = e.get("step") or 0
    return f"epoch {e['epoch']}" + (f" + {step} step{'s' if step != 1 else ''}" if step else "")


class PlainView:
    """Plain log lines, no control codes: for CI logs and pipes."""

    def __init__(self, plan: Plan, out=None) -> None:
        self.plan, self.out = plan, out or sys.stdout
        self.epochs: list[EpochEvent] = []
        self.done: DoneEvent | None = None
        self.best: BestEvent | None = None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def begin(self) -> None:
        for line in header_lines(self.plan):
            self.say(line)
        self.say(f"  command: {self.plan.command}")

    def event(self, e: Event) -> None:
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
        elif kind == "best":
            self.best = e

    def output(self, line) -> None:
        who = "horovodrun" if line.rank is None else f"rank {line.rank}"
        self.say(f"[{who}] {line.text}")

    def closing(self, code: int) -> str:
        if code == STOPPED_EXIT:
            return f"run stopped with a checkpoint (exit code {code}); run dir {self.plan.run_dir}"
        if code in INTERRUPTS:
            return f"run interrupted (exit code {code}); run dir {self.plan.run_dir}"
        if code != 0:
            return f"run failed (exit code {code}); run dir {self.plan.run_dir}"
        if self.done:
            same = "identical" if self.done.get("replicas_identical") else "DIFFERENT"
            return (f"finished: eval accuracy {_fmt_acc(self.done['eval_acc'])}, model replicas "
                    f"{same} on all ranks; run dir {self.plan.run_dir}")
        return f"finished; run dir {self.plan.run_dir}"

    def end(self, code: int, failure: list[str] | None = None,
            notes: list[str] | None = None) -> None:
        """``failure``: what went wrong; ``notes``: what else the launch did (MLflow)."""
        for line in failure or []:
            self.say(line)
        if self.best is not None and code == 0:
            self.say(f"best model: epoch {self.best['epoch']}, eval accuracy "
                     f"{_fmt_acc(self.best['eval_acc'])} -> {self.best['path']} (try: hvdtrain "
                     f"eval {shlex.quote(str(self.plan.run_dir))})")
        for line in notes or []:
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
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console
        self.progress = Progress(TextColumn("{task.description:>6}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 console=console)
        self.epoch_task = self.step_task = self.start_task = None

    def say(self, text: str) -> None:
        self.progress.console.print(escape(text), highlight=False, soft_wrap=True)

    def begin(self) -> None:
        self.console.rule(escape(header_lines(self.plan)[0]))
        for line in header_lines(self.plan)[1:]:
            self.console.print(escape(line), highlight=False)
        # Until rank 0's start event (horovodrun, the ranks' imports, the data: seconds), a
        # pulsing bar with the elapsed time says the run is alive.
        self.start_task = self.progress.add_task(
            "start", total=None, stats=f"starting {self.plan.np} worker(s): horovodrun, torch, data")
        self.progress.start()

    def event(self, e: Event) -> None:
        kind = e["event"]
        if kind == "start":
            if self.start_task is not None:
                self.progress.remove_task(self.start_task)
                self.start_task = None
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

    def end(self, code: int, failure: list[str] | None = None,
            notes: list[str] | None = None) -> None:
        from rich.panel import Panel

        self.progress.stop()
        if self.epochs:
            self.console.print(summary_table(self.epochs))
        if failure:
            self.console.print(Panel(escape("\n".join(failure)), title="what went wrong",
                                     border_style="red"))
        for line in notes or []:
            self.console.print(escape(line), highlight=False, soft_wrap=True)
        style = "green" if code == 0 else "bold red"
        self.console.print(f"[{style}]{escape(self.closing(code))}[/]")


class JsonView:
    """``run --json``: every event as one JSON line on stdout; worker output on stderr."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def begin(self) -> None:
        print(json.dumps({"event": "plan", "argv": self.plan.argv, "run_dir": str(self.plan.run_dir),
                          "np": self.plan.np}), flush=True)

    def event(self, e: Event) -> None:
        print(json.dumps(e), flush=True)

    def output(self, line) -> None:
        who = "horovodrun" if line.rank is None else f"rank {line.rank}"
        print(f"[{who}] {line.text}", file=sys.stderr, flush=True)

    def end(self, code: int, failure: list[str] | None = None,
            notes: list[str] | None = None) -> None:
        print(json.dumps({"event": "exit", "code": code, "run_dir": str(self.plan.run_dir),
                          "failure": failure or [], "notes": notes or []}), flush=True)


def make_view(plan: Plan, as_json: bool = False):
    if as_json:
        return JsonView(plan)
    console = Console(highlight=False)
    return LiveView(plan, console) if console.is_terminal else PlainView(plan)
