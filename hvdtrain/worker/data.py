"""Data sets as in-memory tensors, and the per-rank batch order.

``load_dataset`` returns float images (N, C, H, W) normalised to roughly zero mean / unit variance
and int64 labels, for a train and a held-out split. Readers for MNIST (IDX, raw or .gz) and CIFAR-10
(python pickle batches) read the real file formats from a local directory; a missing or malformed
directory raises ``DataError`` saying which files are expected where.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hvdtrain.builtin_files import CIFAR_EVAL, CIFAR_TRAIN, MNIST_FILES, missing, mnist_file
from hvdtrain.errors import UserError
from hvdtrain.recipe import DataConfig

DIGITS_EVAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


class DataError(UserError):
    """The data directory is missing, incomplete or malformed."""


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    num_classes: int
    # per-channel normalisation applied to the file's pixel values (the training split's)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]


def _normalise(train: np.ndarray, evalx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor,
                                                             tuple[float, ...], tuple[float, ...]]:
    """Per-channel standardisation with the training split's statistics (returned too: the
    checkpoint's model card carries them, so `predict` normalises new arrays the same way)."""
    train_t = torch.from_numpy(np.ascontiguousarray(train, dtype=np.float32))
    eval_t = torch.from_numpy(np.ascontiguousarray(evalx, dtype=np.float32))
    mean = train_t.mean(dim=(0, 2, 3), keepdim=True)
    std = train_t.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return ((train_t - mean) / std, (eval_t - mean) / std, tuple(mean.flatten().tolist()),
            tuple(std.flatten().tolist()))


def load_digits_split() -> Dataset:
    """scikit-learn's embedded 8x8 digits with a fixed stratified 80/20 split."""
    xtr, xev, ytr, yev = _digits_arrays()
    train_x, eval_x, mean, std = _normalise(xtr, xev)
    return Dataset("digits", train_x, torch.from_numpy(ytr).long(), eval_x,
                   torch.from_numpy(yev).long(), 10, mean, std)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The split, from a cache file when an earlier worker wrote one: importing scikit-learn's
    datasets (scipy with it) took 1.2 s of every worker's start, for 1797 fixed images."""
    from importlib.metadata import version

    cache = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hvdtrain"
             / f"digits-split-sklearn{version('scikit-learn')}-seed{DIGITS_SPLIT_SEED}"
               f"-eval{DIGITS_EVAL_FRACTION}.npz")
    try:
        with np.load(cache, allow_pickle=False) as f:
            arrays = (f["xtr"], f["xev"], f["ytr"], f["yev"])
        if sum(len(a) for a in arrays[:2]) == 1797:
            return arrays
    except Exception:  # noqa: BLE001 - missing, cut off, not a zip, wrong keys: split again
        pass
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    xtr, xev, ytr, yev = train_test_split(digits.images.reshape(-1, 1, 8, 8), digits.target,
                                          test_size=DIGITS_EVAL_FRACTION, stratify=digits.target,
                                          random_state=DIGITS_SPLIT_SEED)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp.npz")
    try:  # best effort, atomic (every rank may write at once): a read-only home just splits again
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, xtr=xtr, xev=xev, ytr=ytr, yev=yev)
        os.replace(tmp, cache)
    except OSError:
        tmp.unlink(missing_ok=True)
    return xtr, xev, ytr, yev


def make_synthetic(cfg: DataConfig, seed: int) -> Dataset:
    """Random tensors of the recipe's shape (same on every rank: seeded by the recipe, not the rank)."""
    s = cfg.synthetic
    g = torch.Generator().manual_seed(seed)
    shape = tuple(s.image_shape)
    return Dataset("synthetic",
                   torch.randn((s.train_samples, *shape), generator=g),
                   torch.randint(0, s.num_classes, (s.train_samples,), generator=g),
                   torch.randn((s.eval_samples, *shape), generator=g),
                   torch.randint(0, s.num_classes, (s.eval_samples,), generator=g),
                   s.num_classes, (0.0,) * shape[0], (1.0,) * shape[0])


def _read_maybe_gz(folder: Path, stem: str) -> bytes:
    path = mnist_file(folder, stem)
    if path is None:
        raise FileNotFoundError(stem)
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.suffix == ".gz" else raw


def read_idx(raw: bytes, what: str) -> np.ndarray:
    """Parse an IDX file (big-endian magic: 0x0000, type 0x08 = ubyte, ndim)."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{what}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    expected = int(np.prod(dims))
    if body.size != expected:
        raise ValueError(f"{what}: header says {dims} ({expected} bytes) but the file has {body.size}")
    return body.reshape(dims)


def load_mnist(folder: Path) -> Dataset:
    problem = missing("mnist", folder)
    if problem:
        raise DataError(problem)
    arrays = {}
    for key, stem in MNIST_FILES.items():
        try:
            arrays[key] = read_idx(_read_maybe_gz(folder, stem), stem)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"MNIST file malformed in {folder}: {exc}") from None
    for split in ("train", "eval"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab or arrays[f"{split}_images"].ndim != 3:
            raise DataError(f"MNIST {split} split in {folder}: {n_img} images of shape "
                            f"{arrays[f'{split}_images'].shape[1:]} but {n_lab} labels")
    tr, ev, mean, std = _normalise(arrays["train_images"][:, None], arrays["eval_images"][:, None])
    return Dataset("mnist", tr, torch.from_numpy(arrays["train_labels"].astype(np.int64)), ev,
                   torch.from_numpy(arrays["eval_labels"].astype(np.int64)), 10, mean, std)


# Everything the official CIFAR-10 python batches (and re-pickled copies of them) reference:
# numpy array reconstruction and bytes. Any other global is refused, so a crafted "batch" cannot
# run code (pickle calls whatever global a file names).
CIFAR_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class RefusedPickle(pickle.UnpicklingError):
    """A pickle names a global that the data format never needs."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise RefusedPickle(f"refused to load {module}.{name}: a CIFAR-10 batch holds only "
                                "dicts, lists, bytes, numbers and numpy arrays (the file is not an "
                                "official batch, or was crafted to run code)")
        return super().find_class(module, name)


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open("rb") as fh:
        batch = _RestrictedUnpickler(fh, encoding="bytes").load()
    if not isinstance(batch, dict):
        raise ValueError(f"{path.name}: expected a dict of b'data' and b'labels', got "
                         f"{type(batch).__name__}")
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if data is None or labels is None:
        raise ValueError(f"{path.name}: no b'data'/b'labels' entries")
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path.name}: expected N x 3072 uint8 data and N labels, got {data.shape}")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def load_cifar10(folder: Path) -> Dataset:
    problem = missing("cifar10", folder)
    if problem:
        raise DataError(problem)
    parts = []
    for name in CIFAR_TRAIN + [CIFAR_EVAL]:
        path = folder / name
        try:
            parts.append(_cifar_batch(path))
        except RefusedPickle as exc:
            raise DataError(f"CIFAR-10 file {path}: {exc}") from None
        except (ValueError, OSError, EOFError, pickle.UnpicklingError, AttributeError,
                TypeError) as exc:
            raise DataError(f"CIFAR-10 file malformed: {path}: {exc}") from None
    train_x = np.concatenate([p[0] for p in parts[:-1]])
    train_y = np.concatenate([p[1] for p in parts[:-1]])
    tr, ev, mean, std = _normalise(train_x, parts[-1][0])
    return Dataset("cifar10", tr, torch.from_numpy(train_y), ev, torch.from_numpy(parts[-1][1]), 10,
                   mean, std)


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    if cfg.dataset == "digits":
        return load_digits_split()
    if cfg.dataset == "synthetic":
        return make_synthetic(cfg, seed)
    folder = Path(cfg.data_dir or ".").expanduser()
    return load_mnist(folder) if cfg.dataset == "mnist" else load_cifar10(folder)


def eval_shard(n: int, rank: int, size: int) -> torch.Tensor:
    """Every eval sample exactly once across ranks (shards may differ in size by one)."""
    return torch.arange(rank, n, size)
