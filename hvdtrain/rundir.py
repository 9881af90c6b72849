"""The run directory: the one module that knows its layout. Both sides use it: the launcher creates
the directory and keeps the manifest, metrics and logs; rank 0 writes checkpoints into it.

    <run dir>/recipe.yaml                 the resolved recipe the workers load
    <run dir>/manifest.json               argv, hosts, versions, times, exit status, failure
    <run dir>/metrics.jsonl               one record per step window and per epoch
    <run dir>/checkpoints/epoch-NNNN.pt   rank 0's checkpoints after NNNN epochs (temp files: .tmp-*)
    <run dir>/checkpoints/epoch-NNNN-step-SSSSSS.pt   ... and SSSSSS steps into the next (a stop)
    <run dir>/stop-request                the launcher asks the workers to checkpoint and stop
    <run dir>/job.sbatch, slurm.json      `hvdtrain sbatch`: the batch script and the submission
    <run dir>/logs/rank.N/stdout|stderr   every rank's output
    <run dir>/logs/horovodrun.log         horovodrun's own lines
    <run dir>/tensorboard/                TensorBoard event files (rank 0)

Standard library, PyYAML and the recipe schema only: no torch.
"""

from __future__ import annotations

import json
import os
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hvdtrain.manifest import Manifest
from hvdtrain.recipe import Recipe
from hvdtrain.recipe_files import LoadedRecipe

CHECKPOINT_NAME = re.compile(r"^epoch-(\d{4,})(?:-step-(\d{6,}))?\.pt$")
CHECKPOINT_TMP_PREFIX = ".tmp-"  # a write in progress (or killed): never a valid checkpoint


def default_run_dir(loaded: LoadedRecipe, now: float | None = None, prefix: str = "") -> Path:
    """``<launch.output_dir>/<prefix><recipe>-<YYYYmmdd-HHMMSS>``, absolute (workers may cd
    elsewhere); `hvdtrain bench` uses the prefix ``bench-``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return (Path(loaded.recipe.launch.output_dir) / f"{prefix}{loaded.name}-{stamp}").resolve()


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
    found = [(pos, p) for p in folder.iterdir() if (pos := checkpoint_position(p)) is not None]
    return [(pos[0], p) for pos, p in sorted(found)]


def is_complete_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a whole torch checkpoint file (a zip archive with its central directory:
    a zero-byte or truncated write is not), judged without torch."""
    try:
        return path.stat().st_size > 0 and zipfile.is_zipfile(path)
    except OSError:
        return False


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
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

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
        try:
            lines = self.metrics_file.read_text().splitlines()
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
