"""`hvdtrain forecast`'s compute measurement: ``python -m hvdtrain.worker.profile --recipe JSON
--threads T [--horovod] [--warmup W] [--steps S] [--classes C]``. The recipe's model and
optimizer on a synthetic batch of its shape (as `bench` does, hvdtrain/worker/bench.py), timed
phase by phase: forward + loss, backward, optimizer step; in turns with them (``CHUNK`` steps
each, so both see the machine alike) the same steps with PowerSGD's reduce between backward and
the update (error feedback, the two products, the orthonormalisation, P Q^T: what a compressed
step adds to the compute); and the cost of adding
two gradient-sized buffers (the reduction an allreduce does on the CPU). Prints one ``profile``
event.

For K ranks that will share one host the launcher runs it under ``horovodrun -np K`` on this
machine (``--horovod``): each step ends with a Horovod allreduce of one number, and PowerSGD's
steps run its real reduce (its allreduces are the lockstep; the factors are small, so their
loopback transport is a small part of it). Ranks of a job run in lockstep, each collective
waiting for the slowest, so the measured step includes the sharing of cores and memory bandwidth, the waiting, and
Horovod's own cost per collective (its background loop, the negotiation) that K ranks on one host
see; the bytes of the gradients are left to the forecast's wire term.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from collections.abc import Callable

import torch
import torch.nn.functional as F

from hvdtrain import events
from hvdtrain.recipe import Recipe
from hvdtrain.worker.bench import batch, model_of

SUM_ELEMENTS = 1 << 20  # buffers added to time the reduction (4 MB in float32)
CHUNK = 5  # steps: plain and PowerSGD steps are measured in turns of this many


def phases(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
           y: torch.Tensor, steps: int, sync: Callable[[], None],
           reduce: Callable[[], None] | None = None) -> list[list[float]]:
    """Per step: [forward + loss, backward, ``reduce()`` (PowerSGD's, when given) and the
    optimizer step, the whole step from one ``sync()`` to the next] in seconds. ``sync`` is the
    lockstep an allreduce imposes on ranks that share a host (a no-op for one rank)."""
    out = []
    sync()
    t_sync = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if reduce is not None:
            reduce()
        optimizer.step()
        t3 = time.perf_counter()
        sync()
        now = time.perf_counter()
        out.append([t1 - t0, t2 - t1, t3 - t2, now - t_sync])
        t_sync = now
    return out


def powersgd_reduce(model: torch.nn.Module, recipe: Recipe,
                    real: bool) -> Callable[[], None] | None:
    """PowerSGD's reduce for these gradients. ``real`` (ranks sharing a host, under horovodrun):
    its allreduces run on loopback (they are the step's lockstep, with Horovod's cost per
    collective and the CPU the transport takes; the factors' bytes are small beside a link's);
    else a rank's own arithmetic, each collective a no-op. None: it factors no layer."""
    from hvdtrain.worker import powersgd as ps

    class Local(ps.PowerSGD):  # one process, nothing to average
        @staticmethod
        def _average(t: torch.Tensor, name: str, rest: torch.Tensor | None = None) -> None:
            pass

    psgd = (ps.PowerSGD if real else Local)(model, recipe.horovod.powersgd, recipe.train.seed)
    psgd.warmup = 0
    return psgd.reduce if psgd.low else None


def sum_seconds_per_byte(steps: int) -> dict[str, float]:
    """Seconds per byte of ``a += b`` on this CPU, float32 and float16 (what an allreduce's
    reduction costs a rank, besides the wire)."""
    out = {}
    for dtype in (torch.float32, torch.float16):
        a, b = torch.randn(SUM_ELEMENTS).to(dtype), torch.randn(SUM_ELEMENTS).to(dtype)
        times = []
        for _ in range(steps + 2):
            t0 = time.perf_counter()
            a.add_(b)
            times.append(time.perf_counter() - t0)
        out[str(dtype).removeprefix("torch.")] = statistics.median(times[2:]) / (
            SUM_ELEMENTS * a.element_size())
    return out


def measure(recipe: Recipe, threads: int, warmup: int, steps: int, classes: int | None,
            rank: int, sync: Callable[[], None], real: bool = False) -> dict:
    """One rank's steps without and with PowerSGD's reduce (rank 0's also the sum costs and the
    shapes)."""
    torch.set_num_threads(threads)
    from hvdtrain.worker.optim import make_optimizer

    model = model_of(recipe, classes)
    optimizer = make_optimizer(model, recipe.optimizer)
    x, y = batch(recipe, rank, classes)
    phases(model, optimizer, x, y, warmup, sync)  # warm up (timings discarded)
    reduce = powersgd_reduce(model, recipe, real)
    if reduce is not None:  # (its collectives are the lockstep: no other sync)
        phases(model, optimizer, x, y, 2, lambda: None, reduce)
    out: dict = {"rank": rank, "steps": [], "powersgd": []}
    # Plain and PowerSGD steps alternate in chunks: a machine whose speed drifts by a third
    # within seconds (a shared VM) gave the two, measured one after the other, different speeds,
    # and the forecast compares them (which compression to use).
    for done in range(0, steps, CHUNK):
        n = min(CHUNK, steps - done)
        out["steps"] += phases(model, optimizer, x, y, n, sync)
        if reduce is not None:
            out["powersgd"] += phases(model, optimizer, x, y, n, lambda: None, reduce)
    if rank == 0:
        from hvdtrain.worker.probe import shapes

        out["sums"], out["shapes"] = sum_seconds_per_byte(steps), shapes(model)
    return out


def spread(values: list[float]) -> list[float]:
    """[10th percentile, median, 90th percentile]."""
    v = sorted(values)
    return [v[len(v) // 10], statistics.median(v), v[(9 * len(v)) // 10]]


def combine(ranks: list[dict], threads: int, batch_size: int) -> dict:
    """The ``profile`` event's fields: each phase's median on the slowest rank; the whole step's
    spread without and with PowerSGD (on the slowest rank: a job runs at its pace)."""
    def median(values: list[float]) -> float:
        return statistics.median(values) if values else 0.0

    slow = max(ranks, key=lambda r: median([s[3] for s in r["steps"]]))
    first = next(r for r in ranks if r["rank"] == 0)
    psgd = max(ranks, key=lambda r: median([s[3] for s in r["powersgd"]]))["powersgd"]
    return {"forward_s": median([s[0] for s in slow["steps"]]),
            "backward_s": median([s[1] for s in slow["steps"]]),
            "update_s": median([s[2] for s in slow["steps"]]),
            "step_s": spread([s[3] for s in slow["steps"]]),
            "powersgd_step_s": spread([s[3] for s in psgd]) if psgd else None,
            "sum_s_per_byte": first["sums"], "threads": threads, "ranks": len(ranks),
            "batch_size": batch_size, "shapes": first["shapes"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hvdtrain.worker.profile")
    parser.add_argument("--recipe", type=Path, required=True, help="the recipe as JSON")
    parser.add_argument("--threads", type=int, required=True, help="torch threads per rank")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--classes", type=int, default=None)
    parser.add_argument("--horovod", action="store_true",
                        help="under horovodrun: the host's ranks in lockstep")
    args = parser.parse_args(argv)
    recipe = Recipe.model_validate_json(args.recipe.read_text())
    from hvdtrain.worker.memory import keep_freed_memory

    keep_freed_memory()  # as the training worker does: no page faults to refill freed buffers
    if not args.horovod:
        ranks = [measure(recipe, args.threads, args.warmup, args.steps, args.classes, 0,
                         lambda: None)]
    else:
        import horovod.torch as hvd

        # Horovod: join the host's other ranks (Gloo on loopback).
        hvd.init()
        one = torch.zeros(1)

        def sync() -> None:
            # Horovod: the lockstep every collective imposes, at Horovod's own cost (its
            # background loop, the negotiation, Gloo), on this host's shared cores.
            hvd.allreduce_(one, op=hvd.Sum, name="profile.sync")

        mine = measure(recipe, args.threads, args.warmup, args.steps, args.classes, hvd.rank(),
                       sync, real=True)
        # Horovod: every rank's numbers to rank 0, which reports the slowest.
        ranks = hvd.allgather_object(mine)
        if hvd.rank() != 0:
            return 0
    events.emit("profile", **combine(ranks, args.threads, recipe.data.batch_size))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # (as bench's worker: Horovod's teardown can race a peer's; the result is out)
