"""The files the built-in MNIST and CIFAR-10 data sets are read from, and what is missing from a
folder: the launcher refuses a run before launch with the same message a worker would raise."""

from __future__ import annotations

from pathlib import Path

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "eval_images": "t10k-images-idx3-ubyte",
    "eval_labels": "t10k-labels-idx1-ubyte",
}
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_EVAL = "test_batch"


def mnist_file(folder: Path, stem: str) -> Path | None:
    """The IDX file ``stem`` or ``stem.gz`` in ``folder`` (None: neither is a file)."""
    return next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)


def missing(dataset: str, folder: Path) -> str | None:
    """Why ``folder`` cannot hold ``dataset`` ("mnist" or "cifar10"), or None when every file is
    there (their contents are checked when a worker reads them)."""
    if dataset == "mnist":
        expected = ", ".join(f"{v}[.gz]" for v in MNIST_FILES.values())
        if not folder.is_dir():
            return (f"MNIST data directory not found: {folder} (expected the IDX files "
                    f"{expected}; set data.data_dir)")
        absent = [stem for stem in MNIST_FILES.values() if mnist_file(folder, stem) is None]
        if absent:
            return (f"MNIST file missing: {folder / absent[0]}[.gz] (expected in {folder}: "
                    f"{expected})")
        return None
    expected = ", ".join([*CIFAR_TRAIN, CIFAR_EVAL])
    if not folder.is_dir():
        return (f"CIFAR-10 data directory not found: {folder} (expected the python batches "
                f"{expected} from cifar-10-python.tar.gz; set data.data_dir)")
    absent = [n for n in (*CIFAR_TRAIN, CIFAR_EVAL) if not (folder / n).is_file()]
    if absent:
        return f"CIFAR-10 file missing: {folder / absent[0]} (expected in {folder}: {expected})"
    return None
