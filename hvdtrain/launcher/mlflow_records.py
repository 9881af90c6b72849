"""What hvdtrain logs to MLflow, as plain data (no mlflow import, no network): the run's params
and tags from its manifest, the records of its outbox, and the metric points of metrics.jsonl's
records, named like the TensorBoard curves rank 0 writes (hvdtrain/worker/board.py).
hvdtrain/launcher/mlflow_sync.py sends them."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from hvdtrain.launcher.checks import flatten
from hvdtrain.manifest import Manifest, Status
from hvdtrain.schedule import LRConfig, lr_at

# MLflow's limits (mlflow/utils/validation.py, 3.x): longer values are cut, with a mark.
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
STEP_METRICS = {"loss": "train/loss", "acc": "train/accuracy", "images_per_s": "train/images_per_s"}
EPOCH_METRICS = {"eval_loss": "eval/loss", "eval_acc": "eval/accuracy",
                 "train_loss": "epoch/train_loss", "train_acc": "epoch/train_accuracy",
                 "seconds": "epoch/seconds", "images_per_s": "epoch/images_per_s",
                 "data_wait_share": "epoch/data_wait_share", "epoch": "epoch"}
# hvdtrain's end of a launch -> MLflow's run status (a stopped run may be resumed: KILLED, and a
# resume sets it RUNNING again).
MLFLOW_STATUS = {Status.FINISHED: "FINISHED", Status.FAILED: "FAILED"}


def _cut(text: str, limit: int) -> str:
    mark = "... (cut off)"
    return text if len(text) <= limit else text[:limit - len(mark)] + mark


def _text(value: Any) -> str:
    """YAML's spelling of a setting: true, null, 0.05, [3, 32, 32]; strings as they are."""
    return value if isinstance(value, str) else json.dumps(value)


def params(info: Manifest) -> dict[str, str]:
    """The resolved recipe, flattened (``optimizer.base_lr``), and np: MLflow keeps a param's
    first value for good, so a resume logs what it changed as tags (``resume_tags``)."""
    flat = flatten(info.get("recipe_resolved") or {})
    flat["np"] = info.get("np")
    return {k: _cut(_text(v), MAX_PARAM_LENGTH) for k, v in flat.items()}


def tags(info: Manifest, run_dir: str) -> dict[str, str]:
    """Where and how the run trained: np, hosts, compression, versions, Slurm job, git commit."""
    versions = info.get("versions") or {}
    recipe = info.get("recipe_resolved") or {}
    out = {"hvdtrain.run_dir": run_dir, "hvdtrain.recipe": info.get("recipe"),
           "hvdtrain.np": info.get("np"),
           "hvdtrain.hosts": ",".join(f"{h['host']}:{h['slots']}" for h in info.get("hosts", [])),
           "hvdtrain.compression": (recipe.get("horovod") or {}).get("compression"),
           "slurm.job_id": os.environ.get("SLURM_JOB_ID"),
           "mlflow.source.git.commit": info.get("git_commit"),
           **{f"version.{name}": v for name, v in versions.items()}}
    return {k: _cut(_text(v), MAX_TAG_LENGTH) for k, v in out.items() if v is not None}


def start_record(info: Manifest, run_dir: str, experiment: str, run_name: str) -> dict[str, Any]:
    """The first record of a run's outbox: the MLflow run to create, with its params and tags."""
    return {"kind": "start", "time": time.time(), "experiment": experiment, "run_name": run_name,
            "params": params(info), "tags": tags(info, run_dir)}


def resume_record(info: Manifest, run_dir: str, launch: int) -> dict[str, Any]:
    """A later launch (--resume, a Slurm requeue) of a run already in the outbox."""
    changes = "; ".join(info.get("resume_changes") or []) or "(none)"
    return {"kind": "resume", "time": time.time(),
            "tags": {**tags(info, run_dir), "hvdtrain.launches": str(launch),
                     f"hvdtrain.resume.{launch - 1}.changes": _cut(changes, MAX_TAG_LENGTH)}}


def end_record(status: Status, code: int) -> dict[str, Any]:
    return {"kind": "end", "time": time.time(), "status": MLFLOW_STATUS.get(status, "KILLED"),
            "tags": {"hvdtrain.status": status.value, "hvdtrain.exit_status": str(code)}}


def _number(value: Any) -> float | None:
    """A metric value: numbers, and the "nan"/"inf" strings events carry (JSON has no NaN)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return float(value) if isinstance(value, str) and value in ("nan", "inf", "-inf") else None


@dataclass
class Cursor:
    """What the metric points of the next record depend on: the last step whose LR was logged,
    and the world size (elastic resets change it)."""

    lr_step: int = 0
    world_size: int | None = None


Point = tuple[str, float, int, int]  # key, value, step, timestamp in ms


def points(record: dict[str, Any], cursor: Cursor, cfg: LRConfig | None) -> list[Point]:
    """The metric points of one metrics.jsonl record (step, epoch, reset), at the global step.
    A step record also gives ``train/lr`` for every step since the last one (the schedule is a
    pure function of the step, so the warmup shows, as in TensorBoard), when ``cfg`` is known."""
    kind, step = record.get("event"), record.get("global_step")
    if not isinstance(step, int) or isinstance(step, bool):
        return []
    ms = int(1000 * record["time"]) if isinstance(record.get("time"), (int, float)) else 0
    if kind == "reset":
        cursor.world_size = record.get("new_size")
        return [("elastic/world_size", float(record["new_size"]), step, ms)] \
            if isinstance(record.get("new_size"), int) else []
    names = STEP_METRICS if kind == "step" else EPOCH_METRICS if kind == "epoch" else {}
    out = [(key, value, step, ms) for field, key in names.items()
           if (value := _number(record.get(field))) is not None]
    if kind == "epoch" and isinstance(record.get("world_size"), int):
        cursor.world_size = record["world_size"]
    if kind == "step":
        out += _learning_rates(record, step, ms, cursor, cfg)
    return out


def _learning_rates(record: dict[str, Any], step: int, ms: int, cursor: Cursor,
                    cfg: LRConfig | None) -> list[Point]:
    spe, size = record.get("steps"), cursor.world_size
    first = cursor.lr_step if cursor.lr_step < step else step - 1  # a resume may go back
    cursor.lr_step = step
    if cfg is None or not isinstance(spe, int) or spe < 1 or not isinstance(size, int) or size < 1:
        lr = _number(record.get("lr"))
        return [("train/lr", lr, step, ms)] if lr is not None else []
    # step i + 1 trained with lr_at(i) (hvdtrain/worker/loop.py)
    return [("train/lr", lr_at(i, spe, size, cfg), i + 1, ms) for i in range(first, step)]
