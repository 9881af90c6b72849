"""Checkpoints: atomic writes, keep-last-K, and loading the newest *valid* one.

A write goes to a temp file in the same directory and is ``os.replace``d into place, so a job killed
mid-write never replaces the previous checkpoint. Loading uses ``torch.load(weights_only=True)``;
a corrupt or truncated newest file is skipped with a warning, never a silent restart from epoch 0.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hvdtrain.rundir import CHECKPOINT_TMP_PREFIX, checkpoint_path, list_checkpoints


class CheckpointError(Exception):
    """Checkpoints exist but none is usable."""


@dataclass
class Loaded:
    path: Path
    state: dict[str, Any]
    skipped: list[tuple[Path, str]]  # newer files that failed to load, with the reason


def clean_stray_temp_files(folder: Path) -> list[Path]:
    """Remove temp files left by a write that was killed (they are never valid checkpoints)."""
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(CHECKPOINT_TMP_PREFIX):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def save(folder: Path, epoch: int, state: dict[str, Any], keep: int,
         before_replace: Callable[[], object] | None = None, step: int = 0) -> Path:
    """Atomically write ``state`` as the checkpoint after ``epoch`` epochs (and ``step`` steps
    into the next: a mid-epoch stop) and prune to the last ``keep``.

    ``before_replace`` runs between the complete temp file and the rename (fault-injection hook).
    """
    final = write_atomic(checkpoint_path(folder, epoch, step), state, before_replace)
    for _, old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def write_atomic(final: Path, state: dict[str, Any],
                 before_replace: Callable[[], object] | None = None) -> Path:
    """``torch.save`` to a temp file beside ``final``, fsync, then rename over it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=CHECKPOINT_TMP_PREFIX, suffix=".pt", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def unusable(exc: Exception) -> str:
    """Why a checkpoint file did not load, in hvdtrain's words: torch's own advice for the safe
    loader's refusal is to turn the safety off, which a checkpoint hvdtrain wrote never needs."""
    text = str(exc)
    if "weights_only" in text or "Weights only load failed" in text:
        return ("not a checkpoint hvdtrain wrote: it holds Python objects beyond tensors, which "
                "the safe loader refuses to run")
    first_line = (text.splitlines() or ["(no message)"])[0][:200]
    return f"{type(exc).__name__}: {first_line}"


def load_latest(folder: Path, required: tuple[str, ...] = ("epoch", "model")) -> Loaded | None:
    """The newest checkpoint that loads and has the ``required`` keys, or None if there is none."""
    skipped: list[tuple[Path, str]] = []
    for _, path in reversed(list_checkpoints(folder)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated zip, bad pickle, I/O error: all mean "not usable"
            skipped.append((path, unusable(exc)))
            continue
        missing = [k for k in required if not isinstance(state, dict) or k not in state]
        if missing:
            skipped.append((path, f"missing {', '.join(missing)}"))
            continue
        return Loaded(path, state, skipped)
    if skipped:  # checkpoints exist but none loads: never silently start again from epoch 0
        raise CheckpointError("no valid checkpoint in " + str(folder) + ": "
                              + "; ".join(f"{p.name}: {why}" for p, why in skipped))
    return None
