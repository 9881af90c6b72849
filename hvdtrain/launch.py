"""Run the planned horovodrun argv (no shell), stream its output into the renderer, and keep the
run directory: resolved recipe, manifest, metrics, checkpoints, per-rank logs."""

from __future__ import annotations

import json
import os
import platform
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from hvdtrain import __version__
from hvdtrain.errors import UserError
from hvdtrain.events import Line, parse_line
from hvdtrain.horovod_build import installed_version
from hvdtrain.plan import Plan, build_plan
from hvdtrain.recipe import Recipe, load_recipe

# Keys a checkpoint depends on: changing them between runs makes the saved state unusable.
RESUME_BOUND = ("model", "data.dataset", "data.synthetic.image_shape", "data.synthetic.num_classes",
                "optimizer.name")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}


def resume_conflicts(saved: Recipe, new: Recipe) -> list[str]:
    """Dotted keys (with old -> new values) that differ where the checkpoint depends on them."""
    a, b = _flatten(saved.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == bound or key.startswith(bound + ".") for bound in RESUME_BOUND) \
                and a.get(key) != b.get(key):
            out.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return out


def resume_plan(run_dir: str, recipe: str, overrides: list[str], np: int | None,
                hosts: str | None, hostfile: str | None) -> Plan:
    """The plan for continuing ``run_dir``: same directory, compatible recipe, worker --resume."""
    folder = Path(run_dir).resolve()
    saved_path = folder / "recipe.yaml"
    if not saved_path.is_file():
        raise UserError(f"cannot resume {run_dir}: no recipe.yaml there (is it an hvdtrain run "
                        "directory?)")
    loaded = load_recipe(recipe, overrides)
    saved = Recipe.model_validate(yaml.safe_load(saved_path.read_text()))
    conflicts = resume_conflicts(saved, loaded.recipe)
    if conflicts:
        raise UserError(f"cannot resume {run_dir}: the recipe changes what its checkpoints depend "
                        "on; use the original values or start a new run:", conflicts)
    return build_plan(loaded, np=np, hosts=hosts, hostfile=hostfile, run_dir=folder, resume=True)


class RankLogs:
    """Per-rank logs demultiplexed from horovodrun's prefixed stream: rank.N/stdout|stderr, plus
    horovodrun.log for the launcher's own lines."""

    def __init__(self, folder: Path, np: int) -> None:
        self.folder = folder
        self.files: dict[tuple[int | None, str], Any] = {}
        for rank in range(np):  # every rank gets both files, even if it never prints
            for stream in ("stdout", "stderr"):
                self._open(rank, stream)

    def _open(self, rank: int | None, stream: str) -> Any:
        path = (self.folder / "horovodrun.log" if rank is None
                else self.folder / f"rank.{rank}" / stream)
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


def manifest(plan: Plan, started: float) -> dict[str, Any]:
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
        "exit_status": None,
    }


def prepare_run_dir(plan: Plan, resume: bool) -> None:
    folder = plan.run_dir
    if not resume and folder.exists() and any(folder.iterdir()):
        raise UserError(f"run directory {folder} already exists and is not empty: choose another "
                        "--run-dir, or continue it with --resume")
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(plan.recipe.to_yaml())


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def launch(plan: Plan, resume: bool = False, as_json: bool = False) -> int:
    """Run horovodrun for ``plan``; returns the run's exit code. Draws progress while it runs.

    Failures end with one block naming the first failing rank (host, exit code or signal, last
    stderr lines); SIGINT/SIGTERM stop every worker and exit 130/143; a run that makes no progress
    for ``train.watchdog_seconds`` is stopped (exit 124). No worker outlives this function.
    """
    from hvdtrain.display import make_view
    from hvdtrain.failure import Diagnosis, TracebackFolder, stall_report
    from hvdtrain.heartbeat import INTERVAL as BEAT_INTERVAL
    from hvdtrain.supervisor import Supervisor

    prepare_run_dir(plan, resume)
    info = manifest(plan, time.time())
    man_path = plan.run_dir / "manifest.json"
    if resume and man_path.is_file():
        info["previous"] = json.loads(man_path.read_text())
    write_json_atomic(man_path, info)
    view = make_view(plan, as_json=as_json)
    diagnosis = Diagnosis(hosts={p.rank: (p.host, p.local_rank) for p in plan.placement},
                          settings={"gloo_timeout": plan.recipe.horovod.gloo_timeout_seconds,
                                    "start_timeout": plan.recipe.launch.start_timeout,
                                    "elastic": plan.recipe.elastic is not None})
    beats: dict[int, tuple[float, dict[str, Any]]] = {}
    env = {**os.environ, **plan.env, "PYTHONUNBUFFERED": "1"}
    watchdog = float(plan.recipe.train.watchdog_seconds)  # 0: off
    notes: list[str] = []
    code = 1

    def on_signal(signum: int, _frame: object) -> None:
        raise _Interrupted(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    logs = RankLogs(plan.run_dir / "logs", plan.np)
    sup: Supervisor | None = None
    try:
        with (plan.run_dir / "metrics.jsonl").open("a") as metrics, logs:
            view.begin()
            sup = Supervisor(plan.argv, env)
            last_progress = time.monotonic()
            launcher_traceback = False
            folder = TracebackFolder()  # worker tracebacks: exception line on screen, all in logs
            while True:
                try:
                    raw = sup.next_line(timeout=0.5)
                except EOFError:
                    break
                if raw is None:
                    if watchdog and time.monotonic() - last_progress > watchdog:
                        notes.append(f"no progress from the workers for {watchdog:.0f} s "
                                     f"(train.watchdog_seconds={watchdog:.0f}): stopped the run")
                        notes += stall_report(beats, time.monotonic(), plan.np, BEAT_INTERVAL)
                        sup.stop()
                        code = 124
                        break
                    continue
                line = parse_line(raw)
                logs.write(line)
                diagnosis.feed(line)
                if line.event is not None and line.event["event"] == "beat":
                    beats[int(line.event["rank"])] = (time.monotonic(), line.event)
                elif line.event is not None:
                    last_progress = time.monotonic()
                    _record(line.event, info, metrics)
                    try:
                        view.event(line.event)
                    except (KeyError, TypeError, ValueError) as exc:  # never die on a bad event
                        view.output(Line(None, "launcher", f"unreadable event ({exc!r}): {raw}"))
                elif line.rank is None and (launcher_traceback or _starts_traceback(line.text)):
                    launcher_traceback = True  # horovodrun's own traceback: kept in the log only
                elif line.rank is None or line.stream != "stderr" or \
                        folder.show(line.rank, line.text):
                    view.output(line)
            if code != 124:
                code = sup.wait()
                if sup.descendants():
                    sup.stop(grace=5)  # workers horovodrun left behind
    except _Interrupted as exc:
        name = signal.Signals(exc.signum).name
        stopped = sup.stop() if sup is not None else 0
        code = 128 + exc.signum
        notes.append(f"interrupted by {name}: stopped {stopped} process(es)")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if sup is not None and sup.proc.poll() is None:
            sup.stop()
    lines = diagnosis.summary(code) if code not in (0, 124) and code < 128 else []
    lines = notes + lines
    if code == 124:
        lines += [x for x in diagnosis.summary(code) if x.startswith("Horovod stall")]
    if code != 0:
        lines += _resume_hint(plan)
    info["end_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    info["exit_status"] = code
    info["failure"] = lines or None
    write_json_atomic(man_path, info)
    view.end(code, lines)
    return code


def _starts_traceback(text: str) -> bool:
    return text.startswith("Traceback (most recent call last)") or \
        text.startswith("Exception in thread")


def _record(ev: dict[str, Any], info: dict[str, Any], metrics: Any) -> None:
    """Keep what the run directory needs from an event: metrics lines and manifest facts."""
    kind = ev["event"]
    if kind in ("step", "epoch"):
        metrics.write(json.dumps({"time": time.time(), **ev}) + "\n")
        metrics.flush()
    elif kind == "start":
        info["compression"] = ev.get("compression")
        info["worker_hosts"] = ev.get("hosts")
    elif kind == "done":
        info["param_hashes"] = ev.get("param_hashes")
        info["replicas_identical"] = ev.get("replicas_identical")
        info["final_eval_acc"] = ev.get("eval_acc")


def _resume_hint(plan: Plan) -> list[str]:
    from hvdtrain import (
        checkpoint,  # light: torch is imported only when a checkpoint is loaded
    )

    found = checkpoint.list_checkpoints(plan.run_dir / "checkpoints")
    if not found:
        return ["no checkpoint was written; start again with the same command"]
    epoch, path = found[-1]
    recipe = shlex.quote(str(plan.run_dir / "recipe.yaml"))
    return [f"last checkpoint: {path} (epoch {epoch} complete)",
            f"resume with: hvdtrain run {recipe} --resume {shlex.quote(str(plan.run_dir))}"]
