"""Baseline for `make bench`: a plain single-process PyTorch loop with the same model, data,
batch size, batch order and thread count as hvdtrain's loop at np=1. Prints images/s per epoch.

With HVDTRAIN_BENCH_GATE set it waits for its turn before each epoch's timer starts, as the
worker does with tests/bench/gate (see tests/bench/turns.py)."""

from __future__ import annotations

import json
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

from hvdtrain.recipe import load_recipe
from hvdtrain.schedule import steps_per_epoch
from hvdtrain.worker.data import load_dataset
from hvdtrain.worker.models import build_model
from turns import wait_for_turn  # (this script's folder is on sys.path)


def main(recipe_name: str, threads: int, *overrides: str) -> None:
    recipe = load_recipe(recipe_name, list(overrides)).recipe
    torch.set_num_threads(threads)
    torch.manual_seed(recipe.train.seed)
    data = load_dataset(recipe.data, recipe.train.seed)
    spe = steps_per_epoch(len(data.train_y), 1, recipe)
    model = build_model(recipe.model, data.input_shape, data.num_classes)
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
        order = list(range(len(data.train_y)))  # Horovod's ElasticSampler order at np=1
        random.Random(recipe.train.seed + epoch).shuffle(order)
        for idx in torch.tensor(order[:spe * batch]).split(batch):
            opt.zero_grad()
            out = model(data.train_x[idx])
            loss = F.cross_entropy(out, data.train_y[idx])
            loss.backward()
            opt.step()
            loss.item()
        seconds = time.perf_counter() - t0
        print(json.dumps({"epoch": epoch + 1, "images_per_s": spe * batch / seconds}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
