"""The run directory: the one module that knows its layout. Both sides use it: the launcher creates
the directory and keeps the manifest, metrics and logs; rank 0 writes checkpoints into it.

    <run dir>/recipe.yaml                 the resolved recipe the workers load
    <run dir>/manifest.json               argv, hosts, versions, times, exit status, failure
    <run dir>/metrics.jsonl               one record per step window and per epoch
    <run dir>/checkpoints/epoch-NNNN.pt   rank 0's checkpoints after NNNN epochs (temp files: .tmp-*)
    <run dir>/checkpoints/epoch-NNNN-step-SSSSSS.pt   ... and SSSSSS steps into the next (a stop)
    <run dir>/checkpoints/best.pt         the weights with the highest eval accuracy so far
    <run dir>/stop-request                the launcher asks the workers to checkpoint and stop
    <run dir>/job.sbatch, slurm.json      `hvdtrain sbatch`: the batch script and the submission
    <run dir>/logs/rank.N/stdout|stderr   every rank's output
    <run dir>/logs/horovodrun.log         horovodrun's own lines
    <run dir>/tensorboard/                TensorBoard event files (rank 0)

Standard library, PyYAML and the recipe schema only: no torch.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hvdtrain.manifest import Manifest
from hvdtrain.recipe import Recipe
from hvdtrain.recipe_files import LoadedRecipe

CHECKPOINT_NAME = re.compile(r"^epoch-(\d{4,})(?:-step-(\d{6,}))?\.pt$")
BEST_NAME = "best.pt"
CHECKPOINT_TMP_PREFIX = ".tmp-"  # a write in progress (or killed): never a valid checkpoint


def default_run_dir(loaded: LoadedRecipe, now: float | None = None, prefix: str = "") -> Path:
    """``<launch.output_dir>/<prefix><recipe>-<YYYYmmdd-HHMMSS>``, absolute (workers may cd
    elsewhere); `hvdtrain bench` uses the prefix ``bench-``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return (Path(loaded.recipe.launch.output_dir) / f"{prefix}{loaded.name}-{stamp}").resolve()


def resume_command(path: Path) -> str:
    """What a user types to continue the run in ``path`` (its own recipe, overrides optional)."""
    return f"hvdtrain run --resume {shlex.quote(str(path))}"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temp file and ``os.replace``: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def checkpoint_path(folder: Path, epoch: int, step: int = 0) -> Path:
    """After ``epoch`` complete epochs (and ``step`` steps into the next: a mid-epoch stop)."""
    return folder / (f"epoch-{epoch:04d}-step-{step:06d}.pt" if step else f"epoch-{epoch:04d}.pt")


def checkpoint_position(path: Path) -> tuple[int, int] | None:
    """(complete epochs, steps into the next) that a checkpoint file name says, or None."""
    m = CHECKPOINT_NAME.match(path.name)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(complete epochs, path) for every checkpoint file in ``folder``, oldest first (a mid-epoch
    checkpoint sorts after its epoch's and before the next)."""
    if not folder.is_dir():
        return []
    # Regular files only: opening a FIFO named like a checkpoint blocks the reader for good.
    found = [(pos, p) for p in folder.iterdir()
             if (pos := checkpoint_position(p)) is not None and p.is_file()]
    return [(pos[0], p) for pos, p in sorted(found)]


def odd_checkpoint_names(folder: Path) -> list[Path]:
    """Entries named like checkpoints that are not regular files (FIFOs, sockets, folders): the
    readers skip them."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if checkpoint_position(p) and not p.is_file())


def is_complete_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a whole torch checkpoint file (a zip archive with its central directory:
    a zero-byte or truncated write is not), judged without torch."""
    try:
        return path.stat().st_size > 0 and zipfile.is_zipfile(path)
    except OSError:
        return False


class Busy(Exception):
    """Another hvdtrain launch holds the run directory."""


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory, and reading/writing its recipe and manifest."""

    path: Path

    @property
    def recipe_file(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def manifest_file(self) -> Path:
        return self.path / "manifest.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best_checkpoint(self) -> Path:
        """Model and card only (no optimizer): never a resume point, so --resume ignores it."""
        return self.checkpoints / BEST_NAME

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def tracking(self) -> Path:
        """MLflow (hvdtrain/launcher/tracking.py): what to log, and how far it got per server."""
        return self.path / "tracking"

    @property
    def tracking_outbox(self) -> Path:
        """The run's own records for MLflow (start, resume, end); metrics come from metrics.jsonl."""
        return self.tracking / "mlflow.jsonl"

    @property
    def tracking_state(self) -> Path:
        return self.tracking / "mlflow-state.json"

    @property
    def stop_file(self) -> Path:
        """Written by the launcher (SIGUSR1: preemption, time limit); rank 0 polls it."""
        return self.path / "stop-request"

    @property
    def sbatch_script(self) -> Path:
        return self.path / "job.sbatch"

    @property
    def slurm_file(self) -> Path:
        """`hvdtrain sbatch`: job id, options and time of the submission."""
        return self.path / "slurm.json"

    def slurm_output(self, job_id: str = "%j") -> Path:
        return self.logs / f"slurm-{job_id}.out"

    def is_queued(self) -> bool:
        """Whether this directory holds only what `hvdtrain sbatch` wrote before the job started."""
        names = {p.name for p in self.path.iterdir()} if self.path.is_dir() else set()
        if not names or not names <= {"recipe.yaml", "job.sbatch", "slurm.json", "logs"}:
            return False
        logs = list(self.logs.iterdir()) if self.logs.is_dir() else []
        return "job.sbatch" in names and all(p.name.startswith("slurm-") for p in logs)

    def rank_log(self, rank: int | None, stream: str) -> Path:
        """``logs/rank.N/<stream>``; rank None is horovodrun itself (``logs/horovodrun.log``)."""
        return self.logs / "horovodrun.log" if rank is None else self.logs / f"rank.{rank}" / stream

    def list_checkpoints(self) -> list[tuple[int, Path]]:
        return list_checkpoints(self.checkpoints)

    def newest_complete_checkpoint(self) -> tuple[int, Path] | None:
        """(epoch, path) of the newest checkpoint file that is whole, or None."""
        return next(((e, p) for e, p in reversed(self.list_checkpoints())
                     if is_complete_checkpoint(p)), None)

    @contextmanager
    def locked(self) -> Iterator[int]:
        """Hold this directory for one launch (``flock`` on the directory itself: the kernel lets
        go when the last process holding the descriptor ends, however it ends, so a lock is never
        stale). Yields the descriptor (not inherited unless passed on); raises ``Busy``."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Busy(self.path) from None
            yield fd
        finally:
            os.close(fd)

    def in_use(self) -> bool:
        """Whether another launch holds this directory now (see ``locked``)."""
        try:
            with self.locked():
                return False
        except Busy:
            return True
        except OSError:
            return False

    def write_recipe(self, recipe: Recipe) -> None:
        self.recipe_file.write_text(recipe.to_yaml())

    def read_recipe(self) -> Recipe:
        """The recipe saved in this run directory (raises pydantic/YAML errors if edited badly)."""
        return Recipe.from_yaml(self.recipe_file.read_text())

    def write_manifest(self, info: Manifest) -> None:
        write_json_atomic(self.manifest_file, info)

    def read_metrics(self) -> tuple[list[dict[str, Any]], int]:
        """The records of metrics.jsonl, and how many lines were unreadable (cut off by a killed
        writer); no file means no records."""
        try:  # bytes: a line of binary garbage is one bad record, not an unreadable file
            lines = self.metrics_file.read_bytes().decode("utf-8", "replace").splitlines()
        except OSError:
            return [], 0
        records, bad = [], 0
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(record, dict):
                records.append(record)
        return records, bad

    def read_manifest(self) -> Manifest | None:
        """The manifest (see hvdtrain.manifest), None when missing or not a JSON object."""
        try:
            info = json.loads(self.manifest_file.read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None
