"""Data readers on small files written in the real formats, and the per-rank batch order."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from hvdtrain.data import (
    CIFAR_EVAL,
    CIFAR_TRAIN,
    MNIST_FILES,
    DataError,
    eval_shard,
    load_cifar10,
    load_dataset,
    load_digits_split,
    load_mnist,
    shard_batches,
)
from hvdtrain.plan import DATASET_SIZES
from hvdtrain.recipe import DataConfig


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + \
        arr.astype(np.uint8).tobytes()


def write_mnist(folder: Path, n_train: int = 20, n_eval: int = 6, gz: bool = False) -> None:
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


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_reader(tmp_path: Path, gz: bool) -> None:
    write_mnist(tmp_path, gz=gz)
    ds = load_mnist(tmp_path)
    assert ds.train_x.shape == (20, 1, 28, 28) and ds.eval_x.shape == (6, 1, 28, 28)
    assert ds.train_y.tolist() == [i % 10 for i in range(20)]
    assert ds.train_x.dtype == torch.float32
    assert abs(ds.train_x.mean().item()) < 1e-4  # standardised with train statistics


def test_mnist_missing_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^MNIST data directory not found: .*nope \(expected the IDX "
                                        r"files train-images-idx3-ubyte\[\.gz\], "):
        load_mnist(tmp_path / "nope")
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path)
    assert str(info.value).startswith(f"MNIST file missing: {tmp_path}/t10k-labels-idx1-ubyte[.gz] "
                                      f"(expected in {tmp_path}: train-images-idx3-ubyte[.gz], ")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(DataError, match=r"header says \(9,\) \(9 bytes\) but the file has 3"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(DataError, match=r"not an unsigned-byte IDX file \(bad magic number\)"):
        load_mnist(tmp_path)


def write_cifar(folder: Path, per_batch: int = 4) -> None:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for name in CIFAR_TRAIN + [CIFAR_EVAL]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8),
                 b"labels": list(range(per_batch)), b"batch_label": name.encode()}
        with (folder / name).open("wb") as fh:
            pickle.dump(batch, fh)


def test_cifar_pickle_reader(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    ds = load_cifar10(tmp_path)
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.eval_x.shape == (4, 3, 32, 32)
    assert ds.train_y.tolist() == [0, 1, 2, 3] * 5
    assert ds.input_shape == (3, 32, 32)


def test_cifar_missing_and_malformed(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path)
    assert str(info.value) == (f"CIFAR-10 file missing: {tmp_path}/data_batch_3 (expected in "
                               f"{tmp_path}: data_batch_1, data_batch_2, data_batch_3, data_batch_4, "
                               "data_batch_5, test_batch)")
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"^CIFAR-10 file malformed: .*data_batch_3: "):
        load_cifar10(tmp_path)
    with pytest.raises(DataError, match=r"^CIFAR-10 data directory not found: "):
        load_dataset(DataConfig(dataset="cifar10", data_dir=str(tmp_path / "none")), 0)


def test_digits_split_matches_the_plan_constants() -> None:
    ds = load_digits_split()
    assert (len(ds.train_y), len(ds.eval_y)) == DATASET_SIZES["digits"]
    assert ds.input_shape == (1, 8, 8)
    assert torch.equal(ds.eval_y, load_digits_split().eval_y)  # fixed split


def test_shards_are_disjoint_equal_length_and_cover_the_even_part() -> None:
    n, batch, size = 103, 8, 3  # 103 does not divide by 3 x 8
    steps = (n // size) // batch
    shards = [list(shard_batches(n, batch, steps, r, size, seed=7, epoch=2)) for r in range(size)]
    assert [len(s) for s in shards] == [steps] * size  # same number of batches on every rank
    flat = [int(i) for s in shards for b in s for i in b]
    assert len(flat) == len(set(flat)) == steps * batch * size
    again = [list(shard_batches(n, batch, steps, 0, size, seed=7, epoch=2))]
    assert all(torch.equal(a, b) for a, b in zip(again[0], shards[0]))
    other = list(shard_batches(n, batch, steps, 0, size, seed=7, epoch=3))
    assert not all(torch.equal(a, b) for a, b in zip(other, shards[0]))  # reshuffled per epoch


def test_eval_shards_cover_every_sample_once() -> None:
    parts = [eval_shard(11, r, 3).tolist() for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(11))
