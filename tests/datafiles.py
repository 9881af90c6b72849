"""MNIST (IDX) and CIFAR-10 (python pickle batches) files of random pixels in the real formats,
for the readers' tests and for `make bench` (which has no network to download the real ones)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

from hvdtrain.builtin_files import CIFAR_EVAL, CIFAR_TRAIN, MNIST_FILES


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + \
        arr.astype(np.uint8).tobytes()


def write_mnist(folder: Path, n_train: int = 20, n_eval: int = 6, gz: bool = False) -> Path:
    """The four MNIST files in ``folder``; returns it."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train_images": rng.integers(0, 256, (n_train, 28, 28)),
              "train_labels": np.arange(n_train) % 10,
              "eval_images": rng.integers(0, 256, (n_eval, 28, 28)),
              "eval_labels": np.arange(n_eval) % 10}
    for key, stem in MNIST_FILES.items():
        raw = idx_bytes(arrays[key])
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)
    return folder


def write_cifar(folder: Path, per_batch: int = 4) -> Path:
    """The five training batches and the test batch, ``per_batch`` images each; returns
    ``folder``."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for name in CIFAR_TRAIN + [CIFAR_EVAL]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8),
                 b"labels": [i % 10 for i in range(per_batch)], b"batch_label": name.encode()}
        with (folder / name).open("wb") as fh:
            pickle.dump(batch, fh)
    return folder


def fake_run(folder: Path, overrides: list[str] | None = None, epochs_done: int = 3,
             checkpoint: bool = True) -> Path:
    """A run directory as `hvdtrain run digits-cnn OVERRIDES` leaves it after ``epochs_done``
    epochs (recipe.yaml, manifest.json, metrics.jsonl, checkpoints/), for the launcher's resume
    checks, which read files only. The checkpoint is a zip archive, as torch.save writes."""
    import json
    import zipfile

    from hvdtrain.recipe_files import load_recipe

    recipe = load_recipe("digits-cnn", overrides or []).recipe
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "recipe.yaml").write_text(recipe.to_yaml())
    (folder / "manifest.json").write_text(json.dumps({
        "recipe": "digits-cnn", "status": "failed", "exit_status": 1, "launcher_pid": 1,
        "recipe_resolved": recipe.model_dump(mode="json")}))
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"event": "epoch", "epoch": e}) + "\n" for e in range(1, epochs_done + 1)))
    if checkpoint and epochs_done:
        with zipfile.ZipFile(folder / "checkpoints" / f"epoch-{epochs_done:04d}.pt", "w") as z:
            z.writestr("archive/data.pkl", b"stand-in")
    return folder
