"""`hvdtrain runs [DIR]`: the run directories under DIR (default: runs/), newest first, read from
their manifests and metrics only (no torch), so it works on a copied runs/ folder too."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from hvdtrain.manifest import Status, setting, status_of
from hvdtrain.rundir import RunDir


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _seconds(stamp: str | None) -> float | None:
    try:
        return time.mktime(time.strptime(stamp or "", "%Y-%m-%dT%H:%M:%S%z"))
    except ValueError:
        return None


def describe(folder: Path) -> dict[str, Any] | None:
    """One run directory as a row, or None when ``folder`` is not one (no readable manifest)."""
    info = RunDir(folder).read_manifest()
    if not isinstance(info, dict) or "argv" not in info:
        return _queued(folder)
    status = status_of(info, alive=_alive(info.get("launcher_pid")))
    epochs = [r for r in RunDir(folder).read_metrics()[0] if r.get("event") == "epoch"]
    accs = [e["eval_acc"] for e in epochs if isinstance(e.get("eval_acc"), (int, float))]
    start, end = _seconds(info.get("start_time")), _seconds(info.get("end_time"))
    wall = None if not start or (end is None and status is not Status.RUNNING) else \
        (end or time.time()) - start  # a killed run's end is unknown
    total = setting(info, "train", "epochs")
    return {"run_dir": str(folder), "name": folder.name, "recipe": info.get("recipe"),
            "status": status.value, "np": info.get("np"),
            "hosts": [h.get("host") for h in info.get("hosts", []) if isinstance(h, dict)],
            "epochs_done": max((e.get("epoch", 0) for e in epochs), default=0),
            "epochs": total, "best_eval_acc": max(accs) if accs else None,
            "wall_seconds": wall, "start_time": info.get("start_time")}


def list_runs(folder: Path) -> list[dict[str, Any]]:
    """Every run directory directly under ``folder``, newest first; other folders are skipped."""
    rows = [row for d in folder.iterdir() if d.is_dir() and (row := describe(d)) is not None]
    return sorted(rows, key=lambda r: r["start_time"] or "", reverse=True)


def _queued(folder: Path) -> dict[str, Any] | None:
    """A run `hvdtrain sbatch` submitted whose job has not started yet (no manifest)."""
    run = RunDir(folder)
    if not run.is_queued():
        return None
    try:
        slurm = json.loads(run.slurm_file.read_text())
        recipe = run.read_recipe()
    except (OSError, ValueError):
        return None
    options = slurm.get("options") or {}
    return {"run_dir": str(folder), "name": folder.name, "recipe": Path(slurm["recipe"]).stem,
            "status": f"{Status.QUEUED} (Slurm job {slurm.get('job_id')})",
            "np": (options.get("nodes") or 0) * (options.get("ntasks_per_node") or 0),
            "hosts": [], "epochs_done": 0, "epochs": recipe.train.epochs, "best_eval_acc": None,
            "wall_seconds": None, "start_time": slurm.get("submitted")}
