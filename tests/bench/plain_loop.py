"""Baseline for `make bench`: a plain single-process PyTorch loop with the same model, data,
batch size, batch order and thread count as hvdtrain's loop at np=1. Prints images/s per epoch.

In-memory data sets (digits, synthetic, MNIST, CIFAR-10) are indexed a batch at a time; an image
folder or a data component goes through a DataLoader with the recipe's loader workers (persistent,
as hvdtrain's), the model comes from the recipe (a model component too).

With HVDTRAIN_BENCH_GATE set it waits for its turn before each epoch's timer starts, as the
worker does with tests/bench/gate (see tests/bench/turns.py)."""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from hvdtrain.recipe import IN_MEMORY, Recipe, recipe_steps_per_epoch

from hvdtrain.recipe_files import load_recipe
from hvdtrain.worker.data import load_dataset
from hvdtrain.worker.models import build_model
from hvdtrain.worker.sources import loaded_datasets
from turns import wait_for_turn  # (this script's folder is on sys.path)


def in_memory(recipe: Recipe):
    """(train size, input shape, classes, batches(order))."""
    data = load_dataset(recipe.data, recipe.train.seed)

    def batches(order: list[int]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in torch.tensor(order).split(recipe.data.batch_size):
            yield data.train_x[idx], data.train_y[idx]

    return len(data.train_y), data.input_shape, data.num_classes, batches


def loaded(recipe: Recipe):
    """The same, through a DataLoader over the image folder's or the component's training set."""
    cfg = recipe.data
    _, train, _, classes, _ = loaded_datasets(cfg)  # the datasets hvdtrain's worker builds
    order: list[int] = []
    loader = torch.utils.data.DataLoader(train, batch_size=cfg.batch_size, sampler=order,
                                         num_workers=cfg.loader_workers,
                                         persistent_workers=cfg.loader_workers > 0)

    def batches(epoch_order: list[int]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order[:] = epoch_order  # the loader's sampler iterates this list anew each epoch
        return iter(loader)

    return len(train), tuple(train[0][0].shape), classes, batches


def main(recipe_name: str, threads: int, *overrides: str) -> None:
    sys.path.insert(0, os.getcwd())  # components are found from here, as hvdtrain finds them
    recipe = load_recipe(recipe_name, list(overrides)).recipe
    torch.set_num_threads(threads)
    torch.manual_seed(recipe.train.seed)
    size, shape, classes, batches = (in_memory if recipe.data.dataset in IN_MEMORY
                                     else loaded)(recipe)
    spe = recipe_steps_per_epoch(recipe, size, 1)
    model = build_model(recipe.model, shape, classes)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.optimizer.base_lr,
                          momentum=recipe.optimizer.momentum,
                          weight_decay=recipe.optimizer.weight_decay)
    batch = recipe.data.batch_size
    gate = os.environ.get("HVDTRAIN_BENCH_GATE")
    for epoch in range(recipe.train.epochs):
        if gate:
            wait_for_turn(gate)
        model.train()
        t0 = time.perf_counter()
        order = list(range(size))  # Horovod's ElasticSampler order at np=1
        random.Random(recipe.train.seed + epoch).shuffle(order)
        for x, y in batches(order[:spe * batch]):
            opt.zero_grad()
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            opt.step()
            loss.item()
        seconds = time.perf_counter() - t0
        print(json.dumps({"epoch": epoch + 1, "images_per_s": spe * batch / seconds}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
