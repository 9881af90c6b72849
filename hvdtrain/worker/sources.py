"""Where a rank's batches come from. The loop asks a ``Source`` for the micro-batches of a list of
sample indices (its share of the epoch, from Horovod's ElasticSampler) and never cares which kind:

- ``InMemory``: digits, synthetic, MNIST, CIFAR-10, whole in every worker; batches are tensor slices;
- ``Loaded``: an image folder or a data component, read by a ``DataLoader`` with
  ``data.loader_workers`` persistent processes (pinned memory on GPU), one sampler per split whose
  indices the loop sets each epoch, so the worker processes live as long as the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from hvdtrain.recipe import IN_MEMORY, DataConfig
from hvdtrain.worker.data import DataError, Dataset, load_dataset
from hvdtrain.worker.images import BadImage, collate

Batch = tuple[torch.Tensor, torch.Tensor]


class Source(Protocol):
    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    classes: list[str] | None  # class names (image folders), saved with the checkpoints
    train_size: int
    eval_size: int
    # what each channel is normalised with (the model card's mean/std); None: a data component
    norm: tuple[tuple[float, ...], tuple[float, ...]] | None

    def train_batches(self, indices: list[int]) -> Iterator[Batch]: ...

    def eval_batches(self, indices: list[int]) -> Iterator[Batch]: ...

    def take_skipped(self) -> list[BadImage]: ...

    def take_empty(self) -> int: ...


@dataclass
class InMemory:
    data: Dataset
    batch: int
    eval_batch: int
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        self.name, self.num_classes = self.data.name, self.data.num_classes
        self.input_shape = self.data.input_shape
        self.train_size, self.eval_size = len(self.data.train_y), len(self.data.eval_y)
        self.norm = (self.data.mean, self.data.std)

    def train_batches(self, indices: list[int]) -> Iterator[Batch]:
        for part in torch.tensor(indices, dtype=torch.long).split(self.batch):
            yield self.data.train_x[part], self.data.train_y[part]

    def eval_batches(self, indices: list[int]) -> Iterator[Batch]:
        for part in torch.tensor(indices, dtype=torch.long).split(self.eval_batch):
            yield self.data.eval_x[part], self.data.eval_y[part]

    def take_skipped(self) -> list[BadImage]:
        return []

    def take_empty(self) -> int:
        return 0


class _Indices(torch.utils.data.Sampler):
    """A sampler whose indices the loop replaces before each pass."""

    def __init__(self) -> None:
        self.indices: list[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class Loaded:
    name: str
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    num_classes: int
    cfg: DataConfig
    pin_memory: bool = False
    classes: list[str] | None = None
    skipped: list[BadImage] = field(default_factory=list)
    empty: int = 0  # training batches in which no image decoded, since the last take_skipped

    def __post_init__(self) -> None:
        self.train_size, self.eval_size = len(self.train), len(self.val)
        self.norm = ((tuple(self.cfg.mean), tuple(self.cfg.std)) if self.cfg.dataset ==
                     "imagefolder" else None)
        self._loaders = {}
        for split, ds, batch in (("train", self.train, self.cfg.batch_size),
                                 ("eval", self.val, self.cfg.eval_batch_size)):
            sampler = _Indices()
            self._loaders[split] = (sampler, torch.utils.data.DataLoader(
                ds, batch_size=batch, sampler=sampler, num_workers=self.cfg.loader_workers,
                persistent_workers=self.cfg.loader_workers > 0, pin_memory=self.pin_memory,
                collate_fn=collate))
        self.input_shape = self._first_shape()

    def _first_shape(self) -> tuple[int, ...]:
        """The input shape, from the first training image that decodes (with on_bad_image: skip
        a bad first image is skipped here too)."""
        for i in range(len(self.train)):
            item = self.train[i]
            if not isinstance(item, BadImage):
                return tuple(item[0].shape)
            if self.cfg.on_bad_image == "stop":
                raise DataError(f"cannot decode image {item.path} ({item.reason}): fix or remove "
                                "the file, or set data.on_bad_image: skip")
        raise DataError(f"none of the {len(self.train)} training images can be decoded: check "
                        "data.data_dir")

    def _batches(self, split: str, indices: list[int]) -> Iterator[Batch]:
        sampler, loader = self._loaders[split]
        sampler.indices = indices
        for x, y, bad in loader:
            for b in bad:
                if self.cfg.on_bad_image == "stop":
                    raise DataError(f"cannot decode image {b.path} ({b.reason}): fix or remove the "
                                    "file, or set data.on_bad_image: skip")
                self.skipped.append(b)
            if not len(y):  # nothing decoded: an empty batch of the right shape (step.py)
                x = torch.zeros((0, *self.input_shape))
                self.empty += split == "train"
            yield x, y

    def train_batches(self, indices: list[int]) -> Iterator[Batch]:
        return self._batches("train", indices)

    def eval_batches(self, indices: list[int]) -> Iterator[Batch]:
        return self._batches("eval", indices)

    def take_skipped(self) -> list[BadImage]:
        out, self.skipped = self.skipped, []
        return out

    def take_empty(self) -> int:
        """Training batches with no decodable image since the last call (each a zero step)."""
        out, self.empty = self.empty, 0
        return out


def loaded_datasets(cfg: DataConfig) -> tuple[str, torch.utils.data.Dataset,
                                               torch.utils.data.Dataset, int, list[str] | None]:
    """(name, train, val, classes, class names) of an image folder or a data component."""
    if cfg.dataset == "imagefolder":
        from hvdtrain.imagefolder import scan
        from hvdtrain.worker.images import datasets

        folder = scan(cfg.data_dir or ".")
        train, val = datasets(folder, cfg.image_size, cfg.augment, cfg.mean, cfg.std)
        return "imagefolder", train, val, len(folder.classes), folder.classes
    from hvdtrain.worker.components import data_component

    train, val, classes = data_component(cfg.component or "", cfg.kwargs)
    return cfg.component or "component", train, val, classes, None


def open_source(cfg: DataConfig, seed: int, pin_memory: bool) -> Source:
    """This rank's data source for the recipe's ``data`` section."""
    if cfg.dataset not in IN_MEMORY:  # an image folder or a data component
        name, train, val, classes, names = loaded_datasets(cfg)
        return Loaded(name, train, val, classes, cfg, pin_memory, names)
    return InMemory(load_dataset(cfg, seed), cfg.batch_size, cfg.eval_batch_size)

