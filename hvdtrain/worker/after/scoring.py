"""`hvdtrain eval`: score a checkpoint on the run's own held-out split (through the very source
and shards the run evaluated with, so the numbers are the run's) or on another folder of the same
classes. Every sample is counted once: each rank scores ``eval_shard``'s share, no padding.

Every Horovod call carries a ``# Horovod:`` comment saying why it is there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hvdtrain.card import ModelCard
from hvdtrain.errors import UserError
from hvdtrain.recipe import DataConfig
from hvdtrain.worker.data import eval_shard
from hvdtrain.worker.images import collate
from hvdtrain.worker.sources import Batch, open_source

Reduce = Callable[[torch.Tensor, str], torch.Tensor]


def world() -> tuple[int, int, Reduce]:
    """(rank, size, sum over ranks): one process without horovodrun, else the Horovod job."""
    if "HOROVOD_RANK" not in os.environ:
        return 0, 1, lambda t, _name: t
    import horovod.torch as hvd

    # Horovod: join the job horovodrun started (Gloo rendezvous with the other ranks).
    hvd.init()
    # Horovod: each rank scored its own shard; the sums and the confusion matrix add up.
    return hvd.rank(), hvd.size(), lambda t, name: hvd.allreduce(t, op=hvd.Sum, name=name)


Split = tuple[Iterator[Batch], int, Callable[[], list[Any]]]  # batches, samples, skipped files


def own_split(card: ModelCard, rank: int, size: int) -> Split:
    """The run's held-out split, through the run's own data source (same preprocessing, same
    batches)."""
    source = open_source(DataConfig.model_validate(card["data"]), card["seed"], pin_memory=False)
    check_fits(card, tuple(source.input_shape), source.num_classes, "the run's data")
    shard = eval_shard(source.eval_size, rank, size).tolist()
    return source.eval_batches(shard), source.eval_size, source.take_skipped


def other_folder(card: ModelCard, folder: Path, rank: int, size: int) -> Split:
    """Another data folder: an image folder of the model's classes (matched by name), or the
    built-in set's files (MNIST, CIFAR-10) in another directory (their held-out split)."""
    data = card["data"]
    if data["dataset"] != "imagefolder":
        if data["dataset"] not in ("mnist", "cifar10"):
            raise UserError(f"--data: this model was trained on {data['dataset']}, which has no "
                            "files to point at: leave --data out")
        return own_split({**card, "data": {**data, "data_dir": str(folder)}}, rank, size)
    from hvdtrain.imagefolder import labelled
    from hvdtrain.worker.images import ImageDataset

    samples = labelled(folder, card["classes"] or [])
    ds = ImageDataset(samples, data["image_size"], False, False, tuple(card["mean"]),
                      tuple(card["std"]))
    shard = eval_shard(len(samples), rank, size).tolist()
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, shard),
                                         batch_size=data["eval_batch_size"], collate_fn=collate)
    skipped: list[Any] = []

    def batches() -> Iterator[Batch]:
        for x, y, bad in loader:
            skipped.extend(bad)
            yield x, y
    return batches(), len(samples), lambda: skipped


def check_fits(card: ModelCard, shape: tuple[int, ...], classes: int, what: str) -> None:
    if list(shape) != list(card["input_shape"]) or classes != card["num_classes"]:
        raise UserError(f"the checkpoint's model takes {tuple(card['input_shape'])} inputs and "
                        f"gives {card['num_classes']} classes, but {what} has {shape} and "
                        f"{classes}: score it with a checkpoint of a run on this data")


def score(model: torch.nn.Module, batches: Iterator[Batch], classes: int,
          reduce: Reduce) -> dict[str, Any]:
    """Loss, top-1 and top-k hits and the confusion matrix (true x predicted), over all ranks."""
    k = min(5, classes)
    sums = torch.zeros(4, dtype=torch.float64)  # loss, top-1 hits, top-k hits, samples
    confusion = torch.zeros(classes * classes, dtype=torch.int64)
    with torch.no_grad():
        for x, y in batches:
            if not len(y):  # no image of this batch decoded
                continue
            out = model(x).float()
            top = out.topk(k, dim=1).indices
            # the same per-batch sum the run's evaluation adds up (worker/loop.py)
            sums += torch.tensor([F.cross_entropy(out, y, reduction="sum").item(),
                                  (out.argmax(1) == y).sum().item(),
                                  (top == y[:, None]).any(1).sum().item(), len(y)],
                                 dtype=torch.float64)
            confusion += torch.bincount(y * classes + out.argmax(1), minlength=classes * classes)
    total, matrix = reduce(sums, "eval.sums"), reduce(confusion, "eval.confusion")
    n = int(total[3].item())
    if n == 0:
        raise UserError("no sample could be scored: every image failed to decode")
    return {"samples": n, "loss": (total[0] / total[3]).item(), "top1": (total[1] / n).item(),
            "topk": (total[2] / n).item(), "k": k,
            "confusion": matrix.view(classes, classes).tolist()}
