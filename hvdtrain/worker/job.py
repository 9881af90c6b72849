"""What one rank trains with: the ``Job`` (data, model, optimizer, sampler, device), built once
per process by ``build_job``, and the counters of where training stands (``Progress``, or
Horovod's ``TorchState`` in elastic mode: both are ``Counters``).

Every Horovod call carries a ``# Horovod:`` comment saying why it is there.
"""

from __future__ import annotations

import math
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import horovod.torch as hvd
import torch

from hvdtrain.recipe import Recipe, lr_config, recipe_steps_per_epoch
from hvdtrain.rundir import RunDir
from hvdtrain.schedule import LRConfig
from hvdtrain.worker.board import Board
from hvdtrain.worker.devices import Seen, autocast, choose_device
from hvdtrain.worker.faults import Hooks
from hvdtrain.worker.heartbeat import Heartbeat
from hvdtrain.worker.memory import keep_freed_memory
from hvdtrain.worker.models import build_model
from hvdtrain.worker.optim import FiniteCheck, distributed_optimizer
from hvdtrain.worker.sources import Source, open_source

class Counters(Protocol):
    """Where training stands: a ``Progress`` (normal mode) or Horovod's ``TorchState`` (elastic
    mode, which commits, restores and broadcasts them)."""

    epoch: int
    batch: int
    global_step: int
    eval_loss: float
    eval_acc: float
    resets: int


@dataclass
class Progress:
    """Where training stands. Elastic mode keeps the same attributes in a ``TorchState``."""

    epoch: int = 0  # completed epochs
    batch: int = 0  # steps completed in the current epoch
    global_step: int = 0
    eval_loss: float = math.nan  # of the last evaluation
    eval_acc: float = math.nan
    resets: int = 0  # elastic resets survived


@dataclass
class Job:
    """What one rank trains with, built once per process by ``build_job``."""

    recipe: Recipe
    run_dir: RunDir
    data: Source
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    sampler: Any  # hvd.elastic.ElasticSampler: one data order for both modes
    hooks: Hooks
    beat: Heartbeat
    device: torch.device
    host_memory: str  # what memory.keep_freed_memory() did: kept / default / unavailable
    scaler: torch.amp.GradScaler | None = None  # precision fp16 only
    board: Board = field(default_factory=Board)  # rank 0's TensorBoard writer (or a no-op)
    best_acc: float | None = None  # rank 0: best.pt's eval accuracy (None: not read yet)
    cfg: LRConfig = field(init=False)
    grads_finite: FiniteCheck = field(init=False)
    adasum: bool = field(init=False)

    def __post_init__(self) -> None:
        self.cfg = lr_config(self.recipe)
        self.grads_finite = FiniteCheck([p for p in self.model.parameters() if p.requires_grad])
        # Horovod: Adasum (at np > 1; one rank gets the plain optimizer) reduces in step().
        self.adasum = self.recipe.horovod.op == "adasum" and hvd.size() > 1

    @property
    def powersgd(self) -> Any:
        """worker/powersgd.PowerSGD with horovod.compression: powersgd, else None."""
        return getattr(self.optimizer, "powersgd", None)

    def autocast(self) -> AbstractContextManager:
        return autocast(self.device, self.recipe.train.precision)

    @property
    def per_step(self) -> int:
        """Samples one rank consumes per optimizer step (k micro-batches)."""
        return self.recipe.data.batch_size * self.recipe.horovod.backward_passes_per_step

    def steps_per_epoch(self) -> int:
        # Horovod: the current world size (it may change between epochs in elastic mode).
        return recipe_steps_per_epoch(self.recipe, self.data.train_size, hvd.size())


def pick_device(recipe: Recipe) -> torch.device:
    """This rank's device; on CUDA, Horovod's pattern: one GPU per process, by local rank."""
    cuda = torch.cuda.is_available()
    # Horovod: local rank and size place this process among the ranks of its host.
    seen = Seen(cuda, torch.cuda.device_count() if cuda else 0, hvd.local_rank(),
                hvd.local_size(), os.environ.get("HOROVOD_HOSTNAME", os.uname().nodename))
    device = choose_device(recipe.train.device, recipe.train.precision, seen)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def build_job(recipe: Recipe, run_dir: RunDir, hooks: Hooks, beat: Heartbeat) -> Job:
    """Device, data, model, optimizer and data order for this rank (after ``hvd.init()``)."""
    # Horovod: the rank seeds this process's dropout; weights and optimizer state come from rank 0.
    rank = hvd.rank()
    host_memory = keep_freed_memory()  # before the first step's allocations
    torch.manual_seed(recipe.train.seed + rank)
    device = pick_device(recipe)
    data = open_source(recipe.data, recipe.train.seed, pin_memory=device.type == "cuda")
    model = build_model(recipe.model, data.input_shape, data.num_classes).to(device)
    model = hooks.model_built(rank, model)
    # Horovod: a sampler that shards each epoch's permutation (same seed on every rank) by rank,
    # and re-shards the not-yet-processed samples when the world changes (elastic).
    sampler = hvd.elastic.ElasticSampler(range(data.train_size), shuffle=True,
                                         seed=recipe.train.seed)
    scaler = torch.amp.GradScaler("cuda") if recipe.train.precision == "fp16" else None
    optimizer = distributed_optimizer(model, recipe.optimizer, recipe.horovod, recipe.train.seed)
    return Job(recipe, run_dir, data, model, optimizer, sampler, hooks,
               beat, device, host_memory, scaler)


def share_cores() -> list[str]:
    """Give this rank its share of the machine's cores (cores / ranks on the same machine);
    returns each rank's host as horovodrun named it.

    Counted by real node name, not Horovod's local_size: two "hosts" that are the same machine
    (localhost and 127.0.0.1, or network namespaces) would otherwise oversubscribe the cores.
    """
    node = os.uname().nodename
    # Horovod: every rank's machine and the host name horovodrun gave it, in rank order.
    seen = hvd.allgather_object((node, os.environ.get("HOROVOD_HOSTNAME", node)))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // [n for n, _ in seen].count(node)))
    return [host for _, host in seen]
