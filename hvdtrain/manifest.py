"""The run's ``manifest.json``: one typed structure and its ``Status``, written by the launcher
(launch.py) and its guard (guard.py), read by ``runs``, ``report`` and the resume checks.

Settings live once, in ``recipe_resolved`` (the recipe the workers ran); the other keys are facts
of the launch (argv, hosts, versions, times) and of the run (what the workers reported).
"""

from __future__ import annotations

import signal
from enum import Enum
from typing import Any, TypedDict

# `hvdtrain run` on SIGUSR1 (Slurm's warning before preemption or the time limit): the workers
# checkpoint and stop; the run ends with this code (128 + SIGUSR1, as for the other signals).
STOPPED_EXIT = 128 + int(signal.SIGUSR1)
# 128 + SIGHUP, SIGINT, SIGTERM: the user (or the system) interrupted the run.
INTERRUPTS = (128 + int(signal.SIGHUP), 128 + int(signal.SIGINT), 128 + int(signal.SIGTERM))


class Status(str, Enum):
    """A run's state. The manifest stores RUNNING to STOPPED; ``runs`` also shows the last three
    (REQUEUED: stopped and requeued by Slurm, QUEUED: submitted, not started)."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    KILLED = "killed"  # the hvdtrain process died before recording the end (guard.py)
    STOPPED = "stopped"  # checkpointed and stopped on request (SIGUSR1)
    REQUEUED = "requeued"
    QUEUED = "queued"

    def __str__(self) -> str:
        return self.value


def status_of_exit(code: int) -> Status:
    """The status a run ends in, from `hvdtrain run`'s exit code."""
    if code == 0:
        return Status.FINISHED
    if code == STOPPED_EXIT:
        return Status.STOPPED
    return Status.INTERRUPTED if code in INTERRUPTS else Status.FAILED


class Host(TypedDict):
    host: str
    slots: int


class Wire(TypedDict):
    """What one allreduce of the whole gradient puts on the wire (measured in the worker)."""

    wire_dtype: str
    grad_bytes: int
    wire_bytes: int


class Best(TypedDict):
    epoch: int
    eval_acc: float
    path: str


class Manifest(TypedDict, total=False):
    """``manifest.json``. Launch facts first (written before horovodrun starts), then the
    workers' (from their start/stopped/done events), then the end."""

    recipe: str
    argv: list[str]
    np: int
    hosts: list[Host]
    env: dict[str, str]
    versions: dict[str, str | None]
    git_commit: str | None
    start_time: str
    end_time: str | None
    status: Status
    exit_status: int | None
    launcher_pid: int
    recipe_resolved: dict[str, Any]  # the one copy of every setting
    previous: Manifest  # --resume: the manifest this launch replaced
    resume_changes: list[str]  # --resume: "key: old -> new" against the run's own recipe
    wire: Wire
    fused: bool  # the optimizer stepped with PyTorch's fused kernel
    worker_hosts: list[str]
    devices: list[str]
    host_memory: str  # glibc's freed memory kept for reuse or not (worker/memory.py)
    classes: list[str] | None  # image folders: what the checkpoints' indices mean
    resets: list[dict[str, Any]]
    stopped: dict[str, Any]
    requeued: bool
    param_hashes: list[str]
    replicas_identical: bool
    final_eval_acc: float | None
    best: Best  # checkpoints/best.pt: the epoch with the highest eval accuracy so far
    diverged: str  # the launcher's divergence warning (launcher/divergence.py), when it gave one
    failure: list[str] | None


def status_of(info: Manifest, alive: bool) -> Status:
    """The status to show: a RUNNING run whose launcher is gone (``alive`` False) was killed; a
    stopped run that Slurm requeued is REQUEUED."""
    try:
        status = Status(info.get("status"))
    except ValueError:  # a manifest from before statuses were recorded
        status = Status.FINISHED if info.get("exit_status") == 0 else Status.FAILED
    if status is Status.RUNNING and not alive:
        return Status.KILLED
    if status is Status.STOPPED and info.get("requeued"):
        return Status.REQUEUED
    return status


def setting(info: Manifest, section: str, key: str) -> Any:
    """One setting of the run (``recipe_resolved[section][key]``), None when not recorded."""
    recipe = info.get("recipe_resolved")
    part = recipe.get(section) if isinstance(recipe, dict) else None
    return part.get(key) if isinstance(part, dict) else None


# The numbers every reader of an epoch record uses (runs, report): a record without them is
# counted as unreadable by both, so the two never disagree on how many epochs a run did.
EPOCH_NUMBERS = ("epoch", "train_loss", "train_acc", "images_per_s")


def records(rows: list[dict[str, Any]], kind: str, numeric: tuple[str, ...]) -> tuple[list, int]:
    """The metrics records of one ``kind`` whose ``numeric`` fields are numbers (what readers
    plot and sum), and how many records of that kind were not (edited or from another version)."""
    mine = [r for r in rows if r.get("event") == kind]
    good = [r for r in mine if all(isinstance(r.get(f), (int, float)) and
                                   not isinstance(r.get(f), bool) for f in numeric)]
    return good, len(mine) - len(good)
