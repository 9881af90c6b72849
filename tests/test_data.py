"""Data readers on small files written in the real formats, and the per-rank batch order."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from hvdtrain.worker.data import (
    DataError,
    Dataset,
    eval_shard,
    load_cifar10,
    load_dataset,
    load_digits_split,
    load_mnist,
)
from datafiles import write_cifar, write_mnist
from hvdtrain.launcher.plan import DATASET_SIZES
from hvdtrain.recipe import DataConfig


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


def rank_shares(monkeypatch, n: int, size: int, seed: int, epoch: int,
                processed: int = 0) -> list[list[int]]:
    """Each rank's share of an epoch from Horovod's ElasticSampler (the loop's one data order),
    with the world size faked: ``horovod.torch.elastic.sampler`` reads rank() and size()."""
    from horovod.torch.elastic import sampler as hvd_sampler

    monkeypatch.setattr(hvd_sampler, "size", lambda: size)
    shares = []
    for r in range(size):
        monkeypatch.setattr(hvd_sampler, "rank", lambda r=r: r)
        s = hvd_sampler.ElasticSampler(range(n), shuffle=True, seed=seed)
        s.processed_num = processed
        s.set_epoch(epoch) if not processed else s.reset()
        shares.append(list(s))
    return shares


def in_memory(n: int, batch: int):
    """The loop's in-memory source over n samples whose labels are their indices."""
    from hvdtrain.worker.sources import InMemory

    ids = torch.arange(n)
    data = Dataset("ids", ids.view(n, 1, 1, 1).float(), ids, ids.view(n, 1, 1, 1).float(), ids, n)
    return InMemory(data, batch, batch)


def test_rank_batches_are_disjoint_equal_in_number_and_reshuffled(monkeypatch) -> None:
    n, batch, size = 103, 8, 3  # 103 does not divide by 3 x 8
    steps = (n // size) // batch
    shares = rank_shares(monkeypatch, n, size, seed=7, epoch=2)
    batches = [list(in_memory(n, batch).train_batches(share[:steps * batch])) for share in shares]
    assert [len(b) for b in batches] == [steps] * size  # the same number of steps on every rank
    flat = [int(i) for b in batches for _, idx in b for i in idx]
    assert len(flat) == len(set(flat)) == steps * batch * size  # disjoint across ranks
    assert rank_shares(monkeypatch, n, size, seed=7, epoch=2) == shares  # same seed: same order
    assert rank_shares(monkeypatch, n, size, seed=7, epoch=3) != shares  # reshuffled per epoch


def test_after_a_reset_only_unprocessed_samples_are_reshared(monkeypatch) -> None:
    n, batch, done_steps = 96, 4, 3
    before = rank_shares(monkeypatch, n, 3, seed=1, epoch=0)
    seen = {i for share in before for i in share[:done_steps * batch]}
    after = rank_shares(monkeypatch, n, 2, seed=1, epoch=0, processed=done_steps * batch * 3)
    rest = [i for share in after for i in share]
    assert len(rest) == n - len(seen) and not seen & set(rest)
    _, first = next(in_memory(n, batch).train_batches(after[0]))
    assert first.tolist() == after[0][:batch]  # the rest of the epoch starts at its share


def test_eval_shards_cover_every_sample_once() -> None:
    parts = [eval_shard(11, r, 3).tolist() for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(11))


class _RunsCode:
    """A pickle payload that calls os.system when loaded (what a crafted data_batch_1 can do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_cifar_batches_cannot_run_code(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    with (tmp_path / "data_batch_2").open("wb") as fh:
        pickle.dump({b"data": _RunsCode(marker), b"labels": [0]}, fh)
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path)
    assert str(info.value) == (f"CIFAR-10 file {tmp_path}/data_batch_2: refused to load "
                               "posix.system: a CIFAR-10 batch holds only dicts, lists, bytes, "
                               "numbers and numpy arrays (the file is not an official batch, or "
                               "was crafted to run code)")
    assert not marker.exists()


def test_cifar_batches_pickled_by_python2_numpy1_load(tmp_path: Path) -> None:
    """The official files name numpy.core.multiarray (numpy 1) and use protocol 2."""
    write_cifar(tmp_path)
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    raw = pickle.dumps({b"data": data, b"labels": [3, 4], b"batch_label": b"x"}, protocol=2)
    raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (tmp_path / "test_batch").write_bytes(raw)
    ds = load_cifar10(tmp_path)
    assert ds.eval_y.tolist() == [3, 4]


def test_the_digits_split_is_kept_in_a_cache_file_and_rebuilt_when_unreadable(
        tmp_path: Path, monkeypatch) -> None:
    """Workers read the split from a file an earlier one wrote (importing scikit-learn's datasets
    took 1.2 s of each worker's start); the same arrays as scikit-learn's own split."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from hvdtrain.worker.data import _digits_arrays

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    digits = load_digits()
    expected = train_test_split(digits.images.reshape(-1, 1, 8, 8), digits.target, test_size=0.2,
                                stratify=digits.target, random_state=0)
    first = _digits_arrays()
    (cache,) = (tmp_path / "hvdtrain").iterdir()
    assert cache.name.startswith("digits-split-sklearn") and cache.suffix == ".npz"
    cache.write_bytes(cache.read_bytes()[:100])  # a cut-off file: split again, write again
    for got in (first, _digits_arrays(), _digits_arrays()):
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(got, expected))
    assert sorted(p.name for p in (tmp_path / "hvdtrain").iterdir()) == [cache.name]
