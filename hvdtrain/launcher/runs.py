"""`hvdtrain runs [DIR]`: the run directories under DIR (default: runs/), newest first, read from
their manifests and metrics only (no torch), so it works on a copied runs/ folder too."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from hvdtrain.manifest import EPOCH_NUMBERS, Status, records, setting, status_of
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


def _seconds(stamp: object) -> float | None:
    try:
        return time.mktime(time.strptime(stamp if isinstance(stamp, str) else "",
                                         "%Y-%m-%dT%H:%M:%S%z"))
    except (ValueError, OverflowError):
        return None


def _typed(value: object, kind: type | tuple[type, ...]) -> Any:
    """``value`` if it has the type a reader expects, else None (an edited or foreign file)."""
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def describe(folder: Path) -> dict[str, Any] | None:
    """One run directory as a row, or None when ``folder`` is not one (no readable manifest).
    Records and fields of the wrong type are left out, never a crash."""
    info = RunDir(folder).read_manifest()
    if not isinstance(info, dict) or "argv" not in info:
        return _queued(folder)
    status = status_of(info, alive=_alive(info.get("launcher_pid")))
    epochs, _ = records(RunDir(folder).read_metrics()[0], "epoch", EPOCH_NUMBERS)
    accs = [e["eval_acc"] for e in epochs if _typed(e.get("eval_acc"), (int, float)) is not None]
    start, end = _seconds(info.get("start_time")), _seconds(info.get("end_time"))
    wall = None if not start or (end is None and status is not Status.RUNNING) else \
        (end or time.time()) - start  # a killed run's end is unknown
    hosts = info.get("hosts") if isinstance(info.get("hosts"), list) else []
    return {"run_dir": str(folder), "name": folder.name, "recipe": _typed(info.get("recipe"), str),
            "status": status.value, "np": _typed(info.get("np"), int),
            "hosts": [str(h.get("host")) for h in hosts if isinstance(h, dict)],
            "epochs_done": max((e["epoch"] for e in epochs), default=0),
            "epochs": _typed(setting(info, "train", "epochs"), int),
            "best_eval_acc": max(accs) if accs else None, "wall_seconds": wall,
            "start_time": _typed(info.get("start_time"), str)}


def unreadable(folder: Path, why: str) -> dict[str, Any]:
    """The row of a folder that looks like a run but cannot be read: listed, not fatal."""
    return {"run_dir": str(folder), "name": folder.name, "recipe": None,
            "status": f"unreadable ({why})", "np": None, "hosts": [], "epochs_done": 0,
            "epochs": None, "best_eval_acc": None, "wall_seconds": None, "start_time": None}


def list_runs(folder: Path) -> list[dict[str, Any]]:
    """Every run directory directly under ``folder``, newest first; other folders are skipped,
    one that cannot be read is listed as unreadable with the reason."""
    rows = []
    for d in folder.iterdir():
        try:
            row = describe(d) if d.is_dir() else None
        except Exception as exc:  # noqa: BLE001 - one bad folder must not hide the others
            row = unreadable(d, f"{type(exc).__name__}: {exc}"[:120])
        if row is not None:
            rows.append(row)
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
        return unreadable(folder, "slurm.json or recipe.yaml cannot be read")
    if not isinstance(slurm, dict) or not isinstance(slurm.get("recipe"), str):
        return unreadable(folder, "slurm.json is not one hvdtrain sbatch wrote")
    options = slurm.get("options") if isinstance(slurm.get("options"), dict) else {}
    return {"run_dir": str(folder), "name": folder.name, "recipe": Path(slurm["recipe"]).stem,
            "status": f"{Status.QUEUED} (Slurm job {slurm.get('job_id')})",
            "np": (options.get("nodes") or 0) * (options.get("ntasks_per_node") or 0),
            "hosts": [], "epochs_done": 0, "epochs": recipe.train.epochs, "best_eval_acc": None,
            "wall_seconds": None, "start_time": slurm.get("submitted")}
