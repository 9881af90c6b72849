"""Checkpoints: atomic writes, keep-last-K, corrupt newest falls back with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hvdtrain.worker import checkpoint


def state(epoch: int) -> dict:
    return {"epoch": epoch, "model": {"w": torch.full((4,), float(epoch))}}


def test_save_keeps_last_k_and_leaves_no_temp_files(tmp_path: Path) -> None:
    for e in range(1, 6):
        checkpoint.save(tmp_path, e, state(e), keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0004.pt", "epoch-0005.pt"]
    loaded = checkpoint.load_latest(tmp_path)
    assert loaded is not None and loaded.state["epoch"] == 5 and loaded.skipped == []


def test_truncated_newest_falls_back_to_previous(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, 1, state(1), keep=3)
    newest = checkpoint.save(tmp_path, 2, state(2), keep=3)
    newest.write_bytes(newest.read_bytes()[:100])
    loaded = checkpoint.load_latest(tmp_path)
    assert loaded is not None and loaded.state["epoch"] == 1
    assert [p.name for p, _ in loaded.skipped] == ["epoch-0002.pt"]


def test_all_corrupt_is_an_error_not_a_restart(tmp_path: Path) -> None:
    (tmp_path / "epoch-0003.pt").write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match=r"^no valid checkpoint in .*: epoch-0003.pt: "):
        checkpoint.load_latest(tmp_path)
    assert checkpoint.load_latest(tmp_path / "empty") is None


def test_failed_write_never_replaces_the_previous_checkpoint(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, 1, state(1), keep=3)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        checkpoint.save(tmp_path, 2, {"epoch": 2, "model": Unpicklable()}, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.pt"]


def test_stray_temp_files_are_cleaned(tmp_path: Path) -> None:
    (tmp_path / ".tmp-abc.pt").write_bytes(b"half")
    checkpoint.save(tmp_path, 1, state(1), keep=3)
    assert [p.name for p in checkpoint.clean_stray_temp_files(tmp_path)] == [".tmp-abc.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.pt"]


def test_weights_only_refuses_arbitrary_objects(tmp_path: Path) -> None:
    import os

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"epoch": 9, "model": Evil()}, tmp_path / "epoch-0009.pt")
    checkpoint.save(tmp_path, 1, state(1), keep=3)
    loaded = checkpoint.load_latest(tmp_path)
    assert loaded is not None and loaded.state["epoch"] == 1
    assert not marker.exists()
    assert loaded.skipped == [(tmp_path / "epoch-0009.pt", (
        "not a checkpoint hvdtrain wrote: it holds Python objects beyond tensors, which the safe "
        "loader refuses to run"))]  # never torch's advice to load with weights_only=False


def test_the_launcher_names_only_a_complete_checkpoint(tmp_path: Path) -> None:
    """Without torch: a zero-byte or truncated newest file is not "epoch N complete"."""
    from hvdtrain.rundir import RunDir

    folder = RunDir(tmp_path)
    checkpoint.save(folder.checkpoints, 1, state(1), keep=3)
    second = checkpoint.save(folder.checkpoints, 2, state(2), keep=3)
    third = checkpoint.save(folder.checkpoints, 3, state(3), keep=3)
    assert folder.newest_complete_checkpoint() == (3, third)
    third.write_bytes(b"")
    second.write_bytes(second.read_bytes()[:-30])
    assert folder.newest_complete_checkpoint() == (1, folder.checkpoints / "epoch-0001.pt")
