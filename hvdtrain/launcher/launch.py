"""Run the planned horovodrun argv (no shell), stream its output into the renderer, and keep the
run directory (layout: hvdtrain/rundir.py): resolved recipe, manifest, metrics, per-rank logs."""

from __future__ import annotations

import json
import os
import platform
import shlex
import signal
import subprocess
import time
from typing import Any

from hvdtrain import __version__
from hvdtrain.errors import UserError
from hvdtrain.events import BEAT_INTERVAL, Event, Line, parse_line
from hvdtrain.launcher.guard import Guard
from hvdtrain.launcher.plan import Plan
from hvdtrain.machine import installed_version
from hvdtrain.manifest import STOPPED_EXIT, Manifest, Status, status_of_exit
from hvdtrain.rundir import Busy, RunDir, checkpoint_position, resume_command


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


class RankLogs:
    """Per-rank logs demultiplexed from horovodrun's prefixed stream: rank.N/stdout|stderr, plus
    horovodrun.log for the launcher's own lines."""

    def __init__(self, folder: RunDir, np: int) -> None:
        self.folder = folder
        self.files: dict[tuple[int | None, str], Any] = {}
        self._open(None, "launcher")  # horovodrun.log, also when horovodrun says nothing
        for rank in range(np):  # every rank gets both files, even if it never prints
            for stream in ("stdout", "stderr"):
                self._open(rank, stream)

    def _open(self, rank: int | None, stream: str) -> Any:
        path = self.folder.rank_log(rank, stream)
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.files[(rank, stream)] = path.open("a", buffering=1)
        return fh

    def write(self, line: Line) -> None:
        fh = self.files.get((line.rank, line.stream)) or self._open(line.rank, line.stream)
        fh.write(line.text + "\n")

    def __enter__(self) -> RankLogs:
        return self

    def __exit__(self, *exc: object) -> None:
        for fh in self.files.values():
            fh.close()


def manifest(plan: Plan, started: float) -> Manifest:
    return {
        "recipe": plan.recipe_name,
        "argv": plan.argv,
        "np": plan.np,
        "hosts": [{"host": h.name, "slots": h.slots} for h in plan.hosts],
        "env": plan.env,
        "versions": {"hvdtrain": __version__, "torch": installed_version("torch"),
                     "horovod": installed_version("horovod"), "python": platform.python_version()},
        "git_commit": _git_commit(),
        "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "end_time": None,
        "status": Status.RUNNING,
        "exit_status": None,
        "launcher_pid": os.getpid(),
        "recipe_resolved": plan.recipe.model_dump(mode="json"),  # what the checkpoints depend on
    }


def create_run_dir(plan: Plan) -> RunDir:
    """The run directory, created if new (empty: ``prepare_run_dir`` fills it, under the lock)."""
    folder = RunDir(plan.run_dir)
    if folder.path.exists() and not folder.path.is_dir():
        raise UserError(f"run directory {folder.path} is a file: choose another --run-dir "
                        "(or launch.output_dir)")
    try:
        folder.path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create run directory {folder.path}: {exc.strerror}: choose "
                        "another --run-dir (or launch.output_dir)") from None
    return folder


def prepare_run_dir(plan: Plan, folder: RunDir) -> None:
    """Refuse a directory this launch may not use, then write the recipe; nothing is launched
    before this, and it runs holding the directory's lock."""
    queued = folder.is_queued()  # written by `hvdtrain sbatch` for this very run
    if not plan.resume and not queued and folder.path.exists() and any(folder.path.iterdir()):
        raise UserError(f"run directory {folder.path} already exists and is not empty: choose "
                        "another --run-dir, or continue it with --resume")
    if queued and not plan.resume and folder.read_recipe() != plan.recipe:
        raise UserError(f"the recipe differs from {folder.recipe_file}, which `hvdtrain sbatch` "
                        "resolved when the job was submitted (was the recipe file edited since?): "
                        "submit again, or restore the recipe")
    try:
        folder.checkpoints.mkdir(parents=True, exist_ok=True)
        folder.stop_file.unlink(missing_ok=True)  # an old request must not stop this launch
        folder.write_recipe(plan.recipe)
    except OSError as exc:
        raise UserError(f"cannot create run directory {folder.path}: {exc.strerror}: choose "
                        "another --run-dir (or launch.output_dir)") from None


class StopRequest:
    """SIGUSR1 (Slurm's ``--signal=B:USR1@N`` before preemption or the time limit, or a user's
    ``kill -USR1``): ask the workers to checkpoint and stop, by the run directory's stop file that
    rank 0 polls. Installed when `hvdtrain run` starts, so an early signal is kept, not fatal."""

    requested = False
    folder: RunDir | None = None

    @classmethod
    def install(cls) -> None:
        signal.signal(signal.SIGUSR1, cls._on_signal)

    @classmethod
    def _on_signal(cls, _signum: int, _frame: object) -> None:
        cls.requested = True
        cls._write()

    @classmethod
    def attach(cls, folder: RunDir) -> None:
        cls.folder = folder
        cls._write()

    @classmethod
    def _write(cls) -> None:
        if cls.requested and cls.folder is not None:
            cls.folder.stop_file.write_text(f"SIGUSR1 at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


class _Stream:
    """Everything the launcher does with one line of horovodrun's output: per-rank logs, failure
    analysis, heartbeats, metrics and manifest facts, and the view."""

    def __init__(self, plan: Plan, info: Manifest, view: Any, metrics: Any,
                 logs: RankLogs) -> None:
        from hvdtrain.launcher.divergence import Watch
        from hvdtrain.launcher.failure import Diagnosis, TracebackFolder

        self.info, self.view, self.metrics, self.logs = info, view, metrics, logs
        self.diagnosis = Diagnosis(
            hosts={p.rank: (p.host, p.local_rank) for p in plan.placement},
            settings={"gloo_timeout": plan.recipe.horovod.gloo_timeout_seconds,
                      "start_timeout": plan.recipe.launch.start_timeout,
                      "elastic": plan.recipe.elastic is not None})
        self.beats: dict[int, tuple[float, dict[str, Any]]] = {}
        self.last_progress = time.monotonic()
        self.launcher_traceback = False
        self.tracebacks = TracebackFolder()  # worker tracebacks: exception line on screen
        self.divergence = Watch(plan.base_lr, plan.peak_lr, plan.np,
                                plan.recipe.optimizer.warmup_epochs)
        self.tracker: Any = None  # launcher/tracking.Tracker when the recipe logs to MLflow

    def feed(self, raw: str) -> None:
        line = parse_line(raw)
        self.logs.write(line)
        self.diagnosis.feed(line)
        for event in line.events:
            self._event(event, raw)
        for problem in line.problems:  # an event this launcher cannot read: say which field
            self.view.output(Line(None, "launcher", f"malformed event from rank {line.rank}: "
                                  f"{problem}"))
        if line.events:
            self.metrics.flush()  # once per line: a held write carries many events
            if self.tracker is not None:
                self.tracker.poke()  # its thread uploads what metrics.jsonl gained
        elif line.rank is None and (self.launcher_traceback or _starts_traceback(line.text)):
            self.launcher_traceback = True  # horovodrun's own traceback: kept in the log only
        elif line.rank is None or line.stream != "stderr" or \
                self.tracebacks.show(line.rank, line.text):
            self.view.output(line)

    def tick(self) -> None:
        """Between lines: what the MLflow thread has to say, shown from this thread."""
        for message in self.tracker.said() if self.tracker is not None else []:
            self.view.event({"event": "warning", "message": message})

    def _event(self, event: Event, raw: str) -> None:
        if event["event"] == "beat":
            self.beats[int(event["rank"])] = (time.monotonic(), event)
            return
        self.last_progress = time.monotonic()
        _record(event, self.info, self.metrics)
        try:
            self.view.event(event)
            self._judge(event)
        except (KeyError, TypeError, ValueError) as exc:  # never die on a bad event
            self.view.output(Line(None, "launcher", f"unreadable event ({exc!r}): {raw}"))

    def _judge(self, event: Event) -> None:
        """Divergence (launcher/divergence.py): one warning on screen and in the manifest."""
        if event["event"] == "start":
            self.divergence.start(event["num_classes"])
        elif event["event"] == "epoch":
            said = self.divergence.epoch(event["epoch"], event["eval_loss"], event["eval_acc"])
            if said:
                self.info["diverged"] = said
                self.view.event({"event": "warning", "message": said})


def launch(plan: Plan, as_json: bool = False) -> int:
    """Run horovodrun for ``plan``; returns the run's exit code. Draws progress while it runs.

    Failures end with one block naming the first failing rank (host, exit code or signal, last
    stderr lines); SIGINT/SIGTERM stop every worker and exit 130/143; a run that makes no progress
    for ``train.watchdog_seconds`` is stopped (exit 124). No worker outlives this function.
    """
    folder = create_run_dir(plan)
    try:
        with folder.locked() as lock:  # a second launch here is refused, never mixed in
            return _launch(plan, folder, lock, as_json)
    except Busy:
        from hvdtrain.launcher.checks import in_use

        raise UserError(in_use(str(folder.path), (folder.read_manifest() or {})
                               .get("launcher_pid"))) from None


def _launch(plan: Plan, folder: RunDir, lock: int, as_json: bool) -> int:
    from hvdtrain.launcher.runview import make_view
    from hvdtrain.launcher.tracking import Tracker

    prepare_run_dir(plan, folder)
    info = manifest(plan, time.time())
    previous = folder.read_manifest() if plan.resume else None
    if previous is not None:
        info["previous"] = previous
        if "best" in previous:  # best.pt stays until a resumed epoch beats it
            info["best"] = previous["best"]
    if plan.resume:
        info["resume_changes"] = plan.resume_changes
    folder.write_manifest(info)
    StopRequest.attach(folder)
    view = make_view(plan, as_json=as_json)
    guard = Guard(folder, lock)
    with folder.metrics_file.open("a") as metrics, RankLogs(folder, plan.np) as logs:
        stream = _Stream(plan, info, view, metrics, logs)
        stream.tracker = Tracker.start(folder, plan, info)
        view.begin()
        code, notes = _supervise(plan, stream, spare=(guard.proc.pid,))
    lines = notes + (stream.diagnosis.summary(code) if code not in (0, 124) and code < 128 else [])
    if code == 124:
        lines += [x for x in stream.diagnosis.summary(code) if x.startswith("Horovod stall")]
    if code == 0 and info.get("stopped"):
        code = STOPPED_EXIT  # checkpointed and stopped on request: not finished
    if code != 0:
        lines += _resume_hint(plan)
    info["end_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    info["status"] = status_of_exit(code)
    info["exit_status"] = code
    info["failure"] = lines or None
    folder.write_manifest(info)
    notes = stream.tracker.finish(info["status"], code) if stream.tracker is not None else []
    guard.release()
    if code == STOPPED_EXIT and os.environ.get("SLURM_JOB_ID"):
        lines += _requeue(folder, info)
    view.end(code, lines, notes)
    return code


def _requeue(folder: RunDir, info: Manifest) -> list[str]:
    """Inside a Slurm job that was asked to stop: requeue it, so it starts again and resumes this
    run directory by itself (job.sbatch resumes when it finds a manifest). The manifest is final
    before Slurm ends this job; its SIGTERM is ignored for the moment this takes."""
    from hvdtrain.launcher.slurm import requeue

    job = os.environ["SLURM_JOB_ID"]
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the requeue ends this job: finish first
    ok, why = requeue(job)
    info["requeued"] = ok
    if ok:
        lines = [f"requeued Slurm job {job}: when it starts again it resumes {folder.path} "
                 "from the checkpoint above"]
    else:
        again = (f"sbatch {shlex.quote(str(folder.sbatch_script))} (it resumes the run)"
                 if folder.sbatch_script.exists() else "the resume command above")
        lines = [f"could not requeue Slurm job {job}: {why}",
                 f"the checkpoint is written; resume by hand with: {again}"]
    info["failure"] = (info.get("failure") or []) + lines
    folder.write_manifest(info)
    return lines


def _supervise(plan: Plan, stream: _Stream, spare: tuple[int, ...]) -> tuple[int, list[str]]:
    """Run horovodrun and feed its lines to ``stream`` until it ends, is interrupted, or the
    watchdog stops it; returns (exit code, notes for the failure block)."""
    from hvdtrain.launcher.failure import stall_report
    from hvdtrain.launcher.supervisor import Supervisor

    def on_signal(signum: int, _frame: object) -> None:
        raise _Interrupted(signum)

    handlers = {sig: signal.signal(sig, on_signal)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    announced = False
    env = {**os.environ, **plan.env, "PYTHONUNBUFFERED": "1"}
    watchdog = float(plan.recipe.train.watchdog_seconds)  # 0: off
    sup: Supervisor | None = None
    try:
        sup = Supervisor(plan.argv, env, spare)
        while True:
            try:
                raw = sup.next_line(timeout=0.5)
            except EOFError:
                break
            stream.tick()
            if StopRequest.requested and not announced:
                announced = True
                stream.view.output(Line(None, "launcher", "SIGUSR1: asked the workers to "
                                        "checkpoint and stop at the next log interval"))
            if raw is not None:
                stream.feed(raw)
            elif watchdog and time.monotonic() - stream.last_progress > watchdog:
                sup.stop()
                return 124, [f"no progress from the workers for {watchdog:.0f} s "
                             f"(train.watchdog_seconds={watchdog:.0f}): stopped the run",
                             *stall_report(stream.beats, time.monotonic(), plan.np, BEAT_INTERVAL)]
        code = sup.wait()
        if sup.descendants():
            sup.stop(grace=5)  # workers horovodrun left behind
        return code, []
    except _Interrupted as exc:
        stopped = sup.stop() if sup is not None else 0
        return 128 + exc.signum, [f"interrupted by {signal.Signals(exc.signum).name}: "
                                  f"stopped {stopped} process(es)"]
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if sup is not None and sup.proc.poll() is None:
            sup.stop()


def _starts_traceback(text: str) -> bool:
    return text.startswith("Traceback (most recent call last)") or \
        text.startswith("Exception in thread")


def _record(ev: Event, info: Manifest, metrics: Any) -> None:
    """Keep what the run directory needs from an event: metrics lines and manifest facts."""
    kind = ev["event"]
    if kind in ("step", "epoch", "reset"):
        metrics.write(json.dumps({"time": time.time(), **ev}) + "\n")
    if kind == "reset":
        info.setdefault("resets", []).append(ev)
    elif kind == "start":
        info.update(wire=ev["wire"], fused=ev["fused"], worker_hosts=ev["hosts"],
                    devices=ev["devices"], host_memory=ev["host_memory"], classes=ev["classes"])
    elif kind == "stopped":
        info["stopped"] = ev
    elif kind == "best":
        info["best"] = {"epoch": ev["epoch"], "eval_acc": ev["eval_acc"], "path": ev["path"]}
    elif kind == "done":
        info.update(param_hashes=ev["param_hashes"], replicas_identical=ev["replicas_identical"],
                    final_eval_acc=ev["eval_acc"])


def _resume_hint(plan: Plan) -> list[str]:
    found = RunDir(plan.run_dir).newest_complete_checkpoint()
    if found is None:
        return ["no complete checkpoint was written: nothing to resume"]
    epoch, path = found
    step = (checkpoint_position(path) or (epoch, 0))[1]
    return [f"last checkpoint: {path} (epoch {epoch} complete"
            + (f", and {step} steps of epoch {epoch + 1})" if step else ")"),
            f"resume with: {resume_command(plan.run_dir)}"]
