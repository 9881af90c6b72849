"""Run the planned horovodrun argv (no shell), stream its output into the renderer, and keep the
run directory: resolved recipe, manifest, metrics, checkpoints, per-rank logs."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from hvdtrain import __version__
from hvdtrain.errors import UserError
from hvdtrain.events import Line, parse_line
from hvdtrain.plan import Plan, build_plan
from hvdtrain.recipe import Recipe, load_recipe

# Keys a checkpoint depends on: changing them between runs makes the saved state unusable.
RESUME_BOUND = ("model", "data.dataset", "data.synthetic.image_shape", "data.synthetic.num_classes",
                "optimizer.name")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


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
    plan = build_plan(loaded, np=np, hosts=hosts, hostfile=hostfile, run_dir=folder)
    plan.argv.append("--resume")
    return plan


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
        "versions": {"hvdtrain": __version__, "torch": _version("torch"),
                     "horovod": _version("horovod"), "python": platform.python_version()},
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


def launch(plan: Plan, resume: bool = False, as_json: bool = False) -> int:
    """Run horovodrun for ``plan``; returns its exit code. Draws progress while it runs."""
    from hvdtrain.display import make_view

    prepare_run_dir(plan, resume)
    started = time.time()
    info = manifest(plan, started)
    man_path = plan.run_dir / "manifest.json"
    if resume and man_path.is_file():
        info["previous"] = json.loads(man_path.read_text())
    write_json_atomic(man_path, info)
    view = make_view(plan, as_json=as_json)
    env = {**os.environ, **plan.env, "PYTHONUNBUFFERED": "1"}
    code = 1
    logs = RankLogs(plan.run_dir / "logs", plan.np)
    with (plan.run_dir / "metrics.jsonl").open("a") as metrics, logs:
        view.begin()
        proc = subprocess.Popen(plan.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, text=True, bufsize=1,
                                errors="replace")
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = parse_line(raw)
                logs.write(line)
                if line.event is not None:
                    ev = line.event
                    if ev["event"] in ("step", "epoch"):
                        metrics.write(json.dumps({"time": time.time(), **ev}) + "\n")
                        metrics.flush()
                    if ev["event"] == "start":
                        info["compression"] = ev.get("compression")
                        info["worker_hosts"] = ev.get("hosts")
                    if ev["event"] == "done":
                        info["param_hashes"] = ev.get("param_hashes")
                        info["replicas_identical"] = ev.get("replicas_identical")
                        info["final_eval_acc"] = ev.get("eval_acc")
                    view.event(ev)
                else:
                    view.output(line)
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
            view.end(code)
    info["end_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    info["exit_status"] = code
    write_json_atomic(man_path, info)
    return code
