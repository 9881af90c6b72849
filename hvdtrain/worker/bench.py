"""`hvdtrain bench`, one configuration on every rank: ``python -m hvdtrain.worker.bench --run-dir
DIR --warmup W --steps S`` under horovodrun (or, with ``--ddp HOOK``, under torchrun with
DistributedDataParallel: the reference). The recipe's model and optimizer on synthetic input of the
recipe's shape, the same batches in both; rank 0 prints one ``bench`` event with the timings.

Both sides time the same thing: ``S`` optimizer steps after ``W`` warm-up steps, with forward,
backward, the gradient allreduce and the update. The Horovod side also times how long the step
waited in ``synchronize()`` (the allreduce not hidden behind backward).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hvdtrain import events
from hvdtrain.recipe import Recipe
from hvdtrain.rundir import RunDir
from hvdtrain.worker.models import build_model

SHAPES = {"digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10)}


def input_shape(recipe: Recipe, classes: int | None) -> tuple[tuple[int, ...], int]:
    """(C, H, W) and classes of the recipe's data, without reading any file."""
    data = recipe.data
    if data.dataset == "synthetic":
        return tuple(data.synthetic.image_shape), data.synthetic.num_classes
    if data.dataset == "imagefolder":
        return (3, data.image_size, data.image_size), classes or 10
    return SHAPES[data.dataset]


def batch(recipe: Recipe, rank: int, classes: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed synthetic batch per rank (the same for Horovod and DDP)."""
    shape, n = input_shape(recipe, classes)
    gen = torch.Generator().manual_seed(recipe.train.seed + rank)
    x = torch.randn(recipe.data.batch_size, *shape, generator=gen)
    return x, torch.randint(0, n, (recipe.data.batch_size,), generator=gen)


def model_of(recipe: Recipe, classes: int | None) -> torch.nn.Module:
    shape, n = input_shape(recipe, classes)
    torch.manual_seed(recipe.train.seed)  # the same initial weights everywhere
    return build_model(recipe.model, shape, n)


def timed_steps(step, warmup: int, steps: int) -> tuple[float, float]:
    """Run ``warmup`` + ``steps`` calls of ``step()`` (which returns its seconds waiting for the
    allreduce); returns (wall seconds, waiting seconds) of the measured steps."""
    for _ in range(warmup):
        step()
    waited, t0 = 0.0, time.perf_counter()
    for _ in range(steps):
        waited += step()
    return time.perf_counter() - t0, waited


def horovod_run(recipe: Recipe, warmup: int, steps: int, classes: int | None) -> dict:
    import horovod.torch as hvd

    from hvdtrain.worker.job import share_cores
    from hvdtrain.worker.memory import keep_freed_memory
    from hvdtrain.worker.optim import compression_report, distributed_optimizer

    # Horovod: join the job (Gloo rendezvous with the other ranks).
    hvd.init()
    share_cores()
    keep_freed_memory()  # as the training worker does (the DDP reference runs as users run it)
    model = model_of(recipe, classes)
    optimizer = distributed_optimizer(model, recipe.optimizer, recipe.horovod, recipe.train.seed)
    x, y = batch(recipe, hvd.rank(), classes)

    def step() -> float:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        t = time.perf_counter()
        # Horovod: wait for the gradient allreduce (what was not overlapped with backward).
        optimizer.synchronize()
        waited = time.perf_counter() - t
        with optimizer.skip_synchronize():
            optimizer.step()
        return waited

    wall, waited = timed_steps(step, warmup, steps)
    report = compression_report(optimizer, model)
    # Horovod: every rank's timings, for rank 0's report.
    per_rank = hvd.allgather_object((wall, waited))
    return {"np": hvd.size(), "wire_bytes": report["wire_bytes"], "per_rank": per_rank,
            "threads": torch.get_num_threads(), "rank": hvd.rank()}


def ddp_run(recipe: Recipe, warmup: int, steps: int, classes: int | None, hook: str) -> dict:
    """The reference: torch.distributed (Gloo) + DistributedDataParallel, under torchrun."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))  # as hvdtrain's share_cores
    # PowerSGD's hook issues each bucket's second allreduce from a callback: on Gloo, with several
    # buckets, the ranks' collectives then come in different orders ("Received data size doesn't
    # match expected size"), so that reference runs with one bucket (all gradients).
    model = DistributedDataParallel(model_of(recipe, classes),
                                    **({"bucket_cap_mb": 1 << 12} if hook == "powersgd" else {}))
    wire_bytes = sum(p.numel() for p in model.parameters()) * (2 if hook == "fp16" else 4)
    if hook == "fp16":
        model.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif hook == "powersgd":
        wire_bytes = _ddp_powersgd(model, recipe)
    from hvdtrain.worker.optim import make_optimizer

    optimizer = make_optimizer(model, recipe.optimizer)
    x, y = batch(recipe, rank, classes)

    def step() -> float:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()  # DDP allreduces inside backward
        optimizer.step()
        return 0.0

    wall, _ = timed_steps(step, warmup, steps)
    per_rank: list = [None] * size
    dist.all_gather_object(per_rank, (wall, None))
    return {"np": size, "wire_bytes": wire_bytes, "per_rank": per_rank,
            "threads": torch.get_num_threads(), "rank": rank}


def _ddp_powersgd(model: torch.nn.Module, recipe: Recipe) -> int:
    """PyTorch's own PowerSGD hook at the recipe's rank, warm-up, rate, error feedback and warm
    start (what hvdtrain's powersgd is measured against); returns its bytes a step (the layers
    it leaves uncompressed go as float32)."""
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

    from hvdtrain.powersgd_layout import layout, wire

    cfg = recipe.horovod.powersgd
    state = psgd.PowerSGDState(process_group=None, matrix_approximation_rank=cfg.rank,
                               start_powerSGD_iter=cfg.uncompressed_steps(),
                               min_compression_rate=cfg.min_compression_rate,
                               use_error_feedback=cfg.error_feedback, warm_start=cfg.warm_start,
                               random_seed=recipe.train.seed)
    model.register_comm_hook(state, psgd.powerSGD_hook)
    shapes = [(n, tuple(p.shape)) for n, p in model.module.named_parameters() if p.requires_grad]
    return wire(layout(shapes, cfg.rank, cfg.min_compression_rate), cfg.rank, 4).wire_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hvdtrain.worker.bench")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--classes", type=int, default=None)
    parser.add_argument("--ddp", choices=("none", "fp16", "powersgd"), default=None,
                        help="run the torchrun + DDP reference with this comm hook")
    args = parser.parse_args(argv)
    recipe = RunDir(args.run_dir).read_recipe()
    if args.ddp is None:
        out = horovod_run(recipe, args.warmup, args.steps, args.classes)
    else:
        out = ddp_run(recipe, args.warmup, args.steps, args.classes, args.ddp)
    if out.pop("rank") == 0:
        events.emit("bench", **out, batch_size=recipe.data.batch_size, steps=args.steps)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # Leave without the libraries' teardown: DDP with a comm hook aborts in it ("terminate called
    # without an active exception"), Horovod's can race a peer's; the result is already out.
    os._exit(code)
