"""The one training core both modes call: ring-allreduce SGD with fp16 gradient compression and the
linearly scaled, gradually warmed-up learning rate.

``train_epochs`` runs epochs of ``train_step`` (k micro-batches, allreduce, non-finite check, update),
metric windows, ``end_epoch`` (eval, epoch event, checkpoint) and ``finish``. The normal mode
(worker/fixed.py) calls it once; the elastic mode (worker/elastic.py) calls it inside
``hvd.elastic.run`` and adds only what Horovod's elastic API needs, through ``after_step`` and
``after_epoch``. Counters live in a ``Progress`` (normal) or Horovod's ``TorchState`` (elastic):
both have the same attributes.

Every Horovod call carries a ``# Horovod:`` comment saying why it is there.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import horovod.torch as hvd
import torch
import torch.nn.functional as F

from hvdtrain import events
from hvdtrain.events import WorkerExit
from hvdtrain.errors import UserError
from hvdtrain.recipe import IN_MEMORY, Recipe, lr_config, recipe_steps_per_epoch
from hvdtrain.rundir import RunDir, checkpoint_path
from hvdtrain.schedule import LRConfig, lr_at, peak_lr
from hvdtrain.worker import checkpoint
from hvdtrain.worker.board import Board, open_board
from hvdtrain.worker.data import eval_shard
from hvdtrain.worker.devices import Seen, autocast, choose_device
from hvdtrain.worker.faults import Hooks
from hvdtrain.worker.heartbeat import Heartbeat
from hvdtrain.worker.memory import keep_freed_memory
from hvdtrain.worker.models import build_model
from hvdtrain.worker.sources import Batch, Source, open_source
from hvdtrain.worker.optim import (
    compression_report,
    FiniteCheck,
    distributed_optimizer,
    is_fused,
    optimizer_hash,
    reduces_gradients,
    set_lr,
    state_hash,
)


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
    cfg: LRConfig = field(init=False)
    grads_finite: FiniteCheck = field(init=False)
    adasum: bool = field(init=False)

    def __post_init__(self) -> None:
        self.cfg = lr_config(self.recipe)
        self.grads_finite = FiniteCheck([p for p in self.model.parameters() if p.requires_grad])
        # Horovod: Adasum (at np > 1; one rank gets the plain optimizer) reduces in step().
        self.adasum = self.recipe.horovod.op == "adasum" and hvd.size() > 1

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
    return Job(recipe, run_dir, data, model, distributed_optimizer(model, recipe), sampler, hooks,
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


# --- resume and start ---------------------------------------------------------------------------

def restore(job: Job, counters: Counters, collective: bool = True) -> tuple[WorkerExit, str]:
    """Continue after rank 0's newest valid checkpoint: rank 0 loads it into the model and
    optimizer (the caller's broadcast or state sync spreads them) and sets ``counters`` and the
    sampler (a mid-epoch checkpoint continues its epoch's data order after the samples already
    trained on); returns (outcome, path). ``collective``: every rank learns rank 0's position by a
    broadcast (normal mode); elastic mode leaves that to the state sync, since a worker joining
    later restores nothing."""
    where, path, rng = restore_checkpoint(job) if hvd.rank() == 0 else ([0, 0, 0], "", None)
    if collective:
        # Horovod: every rank resumes at rank 0's position (epoch -1: rank 0 could not load one).
        where = hvd.broadcast(torch.tensor(where), root_rank=0, name="start_position").tolist()
        # Horovod: and continues its own random stream (dropout, augmentation) where it stopped.
        rng = hvd.broadcast_object(rng, root_rank=0, name="rng_states")
        if rng is not None and len(rng) == hvd.size():  # (a new world size draws anew)
            torch.set_rng_state(rng[hvd.rank()])
    epoch, global_step, processed = where
    if epoch < 0:
        return WorkerExit.NO_CHECKPOINT, ""
    # Horovod: the sampler skips the ``processed`` samples of this epoch's permutation and shards
    # the rest over the current world (which may differ from the one that wrote the checkpoint).
    job.sampler.load_state_dict({"epoch": epoch, "processed_num": processed})
    counters.epoch, counters.batch = epoch, processed // (job.per_step * hvd.size())
    counters.global_step = global_step or epoch * job.steps_per_epoch()
    return WorkerExit.OK, path


def restore_checkpoint(job: Job) -> tuple[list[int], str, list[torch.Tensor] | None]:
    """Rank 0: load the newest valid checkpoint; returns ([complete epochs (-1 on failure), global
    step (0: unknown), samples of the next epoch already trained on], path, every rank's RNG
    state when saved)."""
    folder = job.run_dir.checkpoints
    checkpoint.clean_stray_temp_files(folder)
    try:
        loaded = checkpoint.load_latest(folder)
    except checkpoint.CheckpointError as exc:
        events.emit("warning", message=f"cannot resume: {exc}")
        return [-1, 0, 0], "", None
    if loaded is None:
        events.emit("warning", message=f"no checkpoint in {folder}: starting from epoch 1")
        return [0, 0, 0], "", None
    for path, why in loaded.skipped:
        events.emit("warning", message=f"skipped unusable checkpoint {path.name} ({why}); "
                                       f"using {loaded.path.name}")
    saved_classes = loaded.state.get("classes")
    if saved_classes is not None and saved_classes != job.data.classes:
        raise UserError(f"cannot resume: the classes changed since {loaded.path.name} was saved "
                        f"(added: {sorted(set(job.data.classes or []) - set(saved_classes))}, "
                        f"removed: {sorted(set(saved_classes) - set(job.data.classes or []))}); "
                        "class indices would no longer match: restore the class folders or start "
                        "a new run")
    job.model.load_state_dict(loaded.state["model"])
    job.optimizer.load_state_dict(loaded.state["optimizer"])
    state = loaded.state
    return ([int(state["epoch"]), int(state.get("global_step", 0)),
             int(state.get("processed_samples", 0))], str(loaded.path), state.get("rng"))


def announce_start(job: Job, counters: Counters, hosts: list[str], restored_from: str) -> None:
    """Every rank, once synchronised: ``resumed`` (with every rank's optimizer-state hash, to show
    the restore reached all of them) and rank 0's ``start`` event."""
    if counters.epoch > 0 or counters.batch > 0:
        # Horovod: each rank's optimizer-state hash after the broadcast/sync.
        hashes = hvd.allgather_object(optimizer_hash(job.optimizer))
        if hvd.rank() == 0:
            events.emit("resumed", epoch=counters.epoch, step=counters.batch,
                        path=restored_from, optimizer_hashes=hashes)
    # Horovod: every rank's device, for the start line (cpu, or cuda:<local rank>).
    devices = hvd.allgather_object(str(job.device))
    if hvd.rank() == 0:
        r, hv, size = job.recipe, job.recipe.horovod, hvd.size()
        events.emit("start", schema=events.SCHEMA, epochs=r.train.epochs,
                    start_epoch=counters.epoch,
                    start_step=counters.batch,
                    steps_per_epoch=job.steps_per_epoch(), world_size=size,
                    threads=torch.get_num_threads(), hosts=hosts, devices=devices,
                    host_memory=job.host_memory,
                    precision=r.train.precision,
                    wire=compression_report(job.optimizer, job.model), op=hv.op,
                    fused=is_fused(job.optimizer),
                    base_lr=r.optimizer.base_lr, peak_lr=peak_lr(job.cfg, size),
                    params=sum(p.numel() for p in job.model.parameters()),
                    train_samples=job.data.train_size, eval_samples=job.data.eval_size,
                    classes=job.data.classes)


# --- the step -----------------------------------------------------------------------------------

# One micro-batch's metrics, kept as tensors until the log window ends: (mean loss, logits,
# labels). Summing loss and correct answers per step took ~50 us of small tensor ops, over 1 % of
# a digits step; per window it is one stack, one argmax and one comparison.
Part = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Meter:
    """Loss / correct / count sums of this rank's batches, allreduced once per log window.

    The same allreduce carries the stop request (rank 0 sees the launcher's stop file), so every
    rank learns it at the same step without a collective of its own.
    """

    def __init__(self, images_per_step: int, stop_file: Path | None = None) -> None:
        self.images_per_step = images_per_step
        self.stop_file = stop_file  # rank 0 only
        self.stop = False  # every rank: a stop was asked for, as of the last flush
        self.parts: list[Part] = []  # this window's micro-batches
        self.epoch = [0.0, 0.0, 0.0]  # loss sum, correct, count of the epoch, all ranks
        self.steps = self.epoch_steps = 0
        self.data_wait = 0.0  # seconds this rank waited for batches this epoch
        self.t0 = self.t_window = time.perf_counter()

    @staticmethod
    def part(loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> Part:
        """One micro-batch's metrics, still tensors: no Python round trip (no GPU sync)."""
        return loss.detach(), out.detach(), y

    def add(self, parts: list[Part]) -> None:
        """Count one completed step (a skipped step's metrics are left out)."""
        self.parts += parts
        self.steps += 1

    def window(self) -> torch.Tensor:
        """This rank's (loss sum, correct, count, stop) of the window, float64 on the CPU."""
        loss_sum = correct = count = 0.0
        if self.parts:  # one transfer (and GPU sync) per window
            losses, logits, labels = zip(*self.parts)
            counts = [len(y) for y in labels]
            loss_sum = float(torch.stack(losses).double().cpu()
                             @ torch.tensor(counts, dtype=torch.float64))
            correct = float((torch.cat(logits).argmax(1) == torch.cat(labels)).sum())
            count = sum(counts)
        stop = self.stop_file is not None and self.stop_file.exists()
        return torch.tensor([loss_sum, correct, count, float(stop)], dtype=torch.float64)

    def flush(self) -> tuple[float, float, float]:
        """Every rank: (loss, acc, images/s) of the window across all ranks; starts a new one."""
        # Metrics (and the stop flag) summed over all ranks, once per log interval.
        loss, correct, count, stop = allreduce_sum(self.window(), "train_window").tolist()
        now = time.perf_counter()
        rate = self.steps * self.images_per_step / max(now - self.t_window, 1e-9)
        self.stop = self.stop or stop > 0
        self.epoch = [a + b for a, b in zip(self.epoch, (loss, correct, count), strict=True)]
        self.epoch_steps += self.steps
        self.parts = []
        self.steps, self.t_window = 0, now
        return ratio(loss, count), ratio(correct, count), rate


def ratio(total: float, count: float) -> float:
    """A mean over ``count`` samples; NaN when there were none (every image skipped)."""
    return total / count if count else math.nan


def train_step(job: Job, micro: list[Batch], epoch: int, step: int, lr: float,
               rank: int) -> list[Part] | None:
    """One optimizer step on this rank's k micro-batches. Returns their metrics, or None when
    the gradients were non-finite and the step was skipped; raises ``NonFinite`` to stop.

    Every line here runs once a step, and between big kernels each costs 2-4 times what it does
    in a micro-benchmark: on digits at np=1 (~2 ms steps) a plain step body calling this instead
    ran at 0.94-0.96 of the plain body (in turns, tests/bench/turns.py), where the micro-benchmarked
    extras add up to ~1 %. Hence ``rank`` from the caller (a call into Horovod), no
    ``synchronize()`` where nothing was hooked, argmax per log window (``Meter``) and the finite
    check's flag cleared only after a hit: np=1 vs a plain loop 0.962 -> 0.975 (5 runs of 40
    epochs; two identical sides differ by ~1 % over 5 runs)."""
    k, scaler = job.recipe.horovod.backward_passes_per_step, job.scaler
    set_lr(job.optimizer, lr)
    job.optimizer.zero_grad()  # Horovod 0.28 takes no set_to_none
    parts = []
    for x, y in micro:
        x, y = x.to(job.device, non_blocking=True), y.to(job.device, non_blocking=True)
        with job.autocast():
            out = job.model(x)
            loss = job.hooks.loss(rank, epoch, step, cross_entropy(out, y))
        part = loss / k if k > 1 else loss  # k passes make one step
        (scaler.scale(part) if scaler else part).backward()
        parts.append(Meter.part(loss, out, y))
    job.beat.at("allreduce", epoch, step)
    if job.adasum:
        return _adasum_step(job, epoch, step, loss, parts)
    # Horovod: wait for this step's gradient allreduces, so the check below sees the averaged
    # gradients. Averaging spreads one rank's Inf/NaN to every rank, so all ranks take the same
    # decision at the same step without another collective.
    if reduces_gradients(job.optimizer):  # (not at np=1: Horovod hooked no gradient there)
        job.optimizer.synchronize()
    if scaler is not None:  # Horovod's AMP pattern: unscale the averaged gradients, then step
        scaler.unscale_(job.optimizer)
    if not job.grads_finite():
        return _skip_or_stop(job, epoch, step, loss)
    if scaler is not None:
        # Horovod: already synchronized above; step without allreducing again.
        with job.optimizer.skip_synchronize():
            scaler.step(job.optimizer)
        scaler.update()
    else:
        # Horovod: already synchronized above, so the wrapped optimizer's own step (Horovod's
        # step() would check that and call it, a second profiled wrapper: ~15 us a step).
        super(type(job.optimizer), job.optimizer).step()
    return parts


def _adasum_step(job: Job, epoch: int, step: int, loss: torch.Tensor,
                 parts: list[Part]) -> list[Part] | None:
    """op: adasum at np > 1: Horovod's Adasum optimizer reduces in ``step()`` (it has no separate
    synchronize), so each rank checks its own gradients and the ranks agree before stepping."""
    # Horovod: a rank with Inf/NaN gradients makes every rank skip (or stop) the same step.
    finite = hvd.allreduce(torch.tensor(float(job.grads_finite())), op=hvd.Min, name="finite")
    if not finite.item():
        return _skip_or_stop(job, epoch, step, loss)
    if job.scaler is not None:
        job.scaler.step(job.optimizer)
        job.scaler.update()
    else:
        job.optimizer.step()  # Horovod: Adasum-combines every rank's update
    return parts


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; 0 (with a graph) for an empty micro-batch (every image skipped)."""
    return F.cross_entropy(out, y) if len(y) else out.sum() * 0.0


def _skip_or_stop(job: Job, epoch: int, step: int, loss: torch.Tensor) -> None:
    """Non-finite averaged gradients: fp16 loss scaling lowers its scale (as AMP does); otherwise
    ``train.on_nonfinite`` says whether to skip the step or stop every rank."""
    job.optimizer.zero_grad()
    if job.scaler is not None:
        job.scaler.update()  # finds the inf recorded by unscale_ and halves the scale
        return None
    if job.recipe.train.on_nonfinite == "stop":
        raise NonFinite(loss)
    if hvd.rank() == 0:
        events.emit("warning", message=f"non-finite gradients at epoch {epoch} step {step}: "
                                       "step skipped")
    return None


class NonFinite(Exception):
    """Inf/NaN gradients with ``train.on_nonfinite: stop``; carries this rank's last loss."""

    def __init__(self, loss: torch.Tensor) -> None:
        super().__init__("non-finite gradients")
        self.loss = loss


def report_nonfinite(job: Job, epoch: int, step: int, global_step: int,
                     loss: torch.Tensor) -> None:
    """Every rank stops here at the same step; rank 0 says why and which ranks' losses blew up."""
    # Horovod: gather which ranks saw a non-finite local loss, to name them in the message.
    bad = hvd.allgather_object(not bool(torch.isfinite(loss.detach())))
    if hvd.rank() != 0:
        return
    culprits = [r for r, b in enumerate(bad) if b]
    who = (f"local loss non-finite on rank(s) {', '.join(map(str, culprits))}" if culprits
           else "local losses finite: the overflow happened in the gradient allreduce")
    fix = ("set horovod.gradient_predivide_factor (e.g. to the number of workers) so fp16 sums "
           "stay in range, or lower optimizer.base_lr" if job.recipe.horovod.compression == "fp16"
           else "lower optimizer.base_lr or the warmup's peak")
    events.emit("error", message=f"non-finite gradients at epoch {epoch} step {step} (global "
                                 f"step {global_step + 1}); {who}. Stopped every rank before the "
                                 f"update, so checkpoints hold only finite weights. Fix: {fix}, "
                                 "or set train.on_nonfinite=skip")


# --- epochs -------------------------------------------------------------------------------------

def epoch_batches(job: Job, counters: Counters, spe: int,
                  meter: Meter) -> Iterator[tuple[int, list[Batch]]]:
    """(0-based step, its k micro-batches) for the rest of the current epoch: from step
    ``counters.batch`` up to ``spe``, cut from this rank's share of the not-yet-processed samples.
    Time spent waiting for batches is added to ``meter.data_wait``."""
    indices = list(job.sampler)
    first, k = counters.batch, job.recipe.horovod.backward_passes_per_step
    steps = max(0, min(len(indices) // job.per_step, spe - first))
    micro = job.data.train_batches(indices[:steps * job.per_step])

    def steps_of() -> Iterator[tuple[int, list[Batch]]]:
        for i in range(steps):
            t0 = time.perf_counter()
            group = [next(micro) for _ in range(k)]
            meter.data_wait += time.perf_counter() - t0
            yield first + i, group

    return steps_of()


def run_steps(job: Job, counters: Counters, spe: int, meter: Meter,
              after_step: Callable[[int], None] | None) -> float:
    """The steps of the current epoch; emits ``step`` events; returns the last LR."""
    epoch, rank, size = counters.epoch + 1, hvd.rank(), hvd.size()
    log_interval, lr, per_step = job.recipe.train.log_interval, math.nan, job.per_step
    for step, micro in epoch_batches(job, counters, spe, meter):
        job.beat.at("compute", epoch, step + 1)
        job.hooks.before_step(rank, epoch, step + 1)
        lr = lr_at(counters.global_step, spe, size, job.cfg)
        try:
            parts = train_step(job, micro, epoch, step + 1, lr, rank)
        except NonFinite as exc:
            report_nonfinite(job, epoch, step + 1, counters.global_step, exc.loss)
            raise
        counters.global_step += 1
        counters.batch = step + 1
        # Horovod: count the samples this step consumed (a reset or a mid-epoch checkpoint
        # continues after them).
        job.sampler.record_batch(step, per_step)
        if parts is not None:
            meter.add(parts)
        if after_step is not None:
            after_step(step)
        if (step + 1) % log_interval == 0 or step + 1 == spe:
            loss, acc, rate = meter.flush()
            job.board.scalars(counters.global_step, train__loss=loss, train__accuracy=acc,
                              train__images_per_s=rate, train__lr=lr)
            if rank == 0:
                events.emit("step", epoch=epoch, step=step + 1, steps=spe,
                            global_step=counters.global_step, loss=loss, acc=acc, lr=lr,
                            images_per_s=rate)
            if meter.stop:  # every rank saw the flag in the same allreduce: stop together
                break
    if counters.batch % log_interval and counters.batch != spe:  # ended off the log grid
        meter.flush()  # (elastic: the world shrank mid-epoch); every rank ran the same steps
    return lr


def end_epoch(job: Job, counters: Counters, meter: Meter, lr: float) -> None:
    """Every rank: evaluation when due; rank 0: the ``epoch`` event and the checkpoint when due
    (always when a stop was asked for)."""
    epoch, train = counters.epoch + 1, job.recipe.train
    last = epoch == train.epochs
    seconds = time.perf_counter() - meter.t0
    job.beat.at("eval", epoch, counters.batch)
    evaluated = epoch % train.eval_every == 0 or last
    if evaluated:
        sync_buffers(job.model)
        counters.eval_loss, counters.eval_acc = evaluate(job)
    report_skipped(job, epoch)
    due = epoch % train.checkpoint_every == 0 or last or meter.stop
    rng = rng_states() if due else None
    if hvd.rank() != 0:
        return
    sums = meter.epoch
    rate = meter.epoch_steps * meter.images_per_step / max(seconds, 1e-9)
    waiting = meter.data_wait / max(seconds, 1e-9)
    job.board.scalars(counters.global_step, eval__loss=counters.eval_loss if evaluated else None,
                      eval__accuracy=counters.eval_acc if evaluated else None,
                      epoch__seconds=seconds, epoch__images_per_s=rate,
                      epoch__data_wait_share=waiting)
    job.board.flush(force=last or meter.stop)
    events.emit("epoch", epoch=epoch, epochs=train.epochs,
                train_loss=ratio(sums[0], sums[2]), train_acc=ratio(sums[1], sums[2]),
                eval_loss=counters.eval_loss if evaluated else None,
                eval_acc=counters.eval_acc if evaluated else None, seconds=seconds,
                images_per_s=rate,
                data_wait_share=waiting,
                lr=lr, global_step=counters.global_step, world_size=hvd.size())
    if due:
        save_checkpoint(job, epoch, counters.global_step, rng=rng)


def train_epochs(job: Job, counters: Counters, after_step: Callable[[int], None] | None = None,
                 after_epoch: Callable[[], None] | None = None) -> int:
    """Train from ``counters`` to the last epoch, then ``finish``. Returns a ``WorkerExit``."""
    rank = hvd.rank()
    if job.board.writer is None:  # rank 0, once per process (elastic re-entries keep it)
        job.board = open_board(job.run_dir.tensorboard, job.recipe.train.tensorboard, rank,
                               counters.global_step)
    while counters.epoch < job.recipe.train.epochs:
        spe = job.steps_per_epoch()
        job.hooks.epoch_start(rank, counters.epoch + 1)
        job.model.train()
        meter = Meter(job.per_step * hvd.size(), job.run_dir.stop_file if rank == 0 else None)
        try:
            lr = run_steps(job, counters, spe, meter, after_step)
        except NonFinite:
            job.board.flush(force=True)  # the curves up to the divergence
            return WorkerExit.NONFINITE
        if meter.stop and counters.batch < spe:
            return stop(job, counters)
        end_epoch(job, counters, meter, lr)
        counters.epoch, counters.batch = counters.epoch + 1, 0
        # Horovod: the sampler's next epoch (a new permutation; clears the processed samples).
        job.sampler.set_epoch(counters.epoch)
        if after_epoch is not None:
            after_epoch()
        if meter.stop and counters.epoch < job.recipe.train.epochs:
            return stop(job, counters)
    finish(job, counters)
    return WorkerExit.OK


def stop(job: Job, counters: Counters) -> int:
    """The launcher asked to stop (SIGUSR1: preemption, time limit): rank 0 makes sure a checkpoint
    holds every completed step (a mid-epoch one if the epoch is not over), then every rank ends
    cleanly; `hvdtrain run --resume` continues at the next step."""
    if counters.batch:
        sync_buffers(job.model)  # the checkpoint then holds every rank's BN statistics, averaged
        rng = rng_states()
    if hvd.rank() == 0:
        path = (save_checkpoint(job, counters.epoch, counters.global_step, counters.batch, rng)
                if counters.batch else  # else end_epoch has just written the epoch's checkpoint
                str(checkpoint_path(job.run_dir.checkpoints, counters.epoch)))
        events.emit("stopped", epoch=counters.epoch, step=counters.batch,
                    global_step=counters.global_step, path=path)
        job.board.flush(force=True)
    # Horovod: no rank exits before rank 0's checkpoint is on disk (horovodrun stops the others
    # as soon as one rank ends).
    hvd.barrier()
    return WorkerExit.OK


def report_skipped(job: Job, epoch: int) -> None:
    """``data.on_bad_image: skip``: every rank's count of images that failed to decode."""
    if job.recipe.data.on_bad_image != "skip" or job.recipe.data.dataset in IN_MEMORY:
        return
    skipped = job.data.take_skipped()
    # Horovod: the ranks' counts summed, so rank 0 can report the whole epoch.
    total = int(allreduce_sum(torch.tensor(len(skipped)), "skipped").item())
    if total and hvd.rank() == 0:
        example = f"; e.g. on rank 0: {skipped[0].path} ({skipped[0].reason})" if skipped else ""
        events.emit("warning", message=f"epoch {epoch}: skipped {total} image(s) that failed to "
                                       f"decode (data.on_bad_image: skip){example}")


def rng_states() -> list[torch.Tensor]:
    """Every rank: all ranks' CPU RNG states (dropout, augmentation), for a checkpoint."""
    # Horovod: gathered to rank 0, which writes them; a resume gives each rank its own back.
    return hvd.allgather_object(torch.get_rng_state())


def save_checkpoint(job: Job, epoch: int, global_step: int, step: int = 0,
                    rng: list[torch.Tensor] | None = None) -> str:
    """Rank 0: the durable checkpoint after ``epoch`` completed epochs (and ``step`` steps of the
    next, whose first ``processed_samples`` of the epoch's permutation are done), then its event."""
    path = checkpoint.save(job.run_dir.checkpoints, epoch, {
        "epoch": epoch, "step": step, "global_step": global_step, "world_size": hvd.size(),
        "rng": rng,
        "processed_samples": job.sampler.processed_num if step else 0,
        "model": job.model.state_dict(), "optimizer": job.optimizer.state_dict(),
        "recipe_model": job.recipe.model.model_dump(mode="json"),
        "classes": job.data.classes,
    }, keep=job.recipe.train.keep_checkpoints,
        before_replace=lambda: job.hooks.before_checkpoint_replace(0, epoch), step=step)
    events.emit("checkpoint", epoch=epoch, step=step, path=str(path))
    return str(path)


def allreduce_sum(t: torch.Tensor, name: str) -> torch.Tensor:
    """``t`` summed over all ranks (a new tensor). A single rank skips Horovod: an allreduce waits
    for the background thread's next cycle, ~0.3 ms, 5-8 % of a digits step at np=1."""
    # Horovod: the ranks' sums, once per log window / epoch (never per step).
    return hvd.allreduce(t, op=hvd.Sum, name=name) if hvd.size() > 1 else t.clone()


def sync_buffers(model: torch.nn.Module) -> None:
    """Average BatchNorm running statistics so every rank evaluates (and saves) the same model."""
    if hvd.size() == 1:  # Horovod: nothing to average (and each call costs a background cycle)
        return
    for name, buf in model.named_buffers():
        if buf.is_floating_point():
            # Horovod: BN statistics are per-rank (gradients are averaged, buffers are not).
            hvd.allreduce_(buf, op=hvd.Average, name=f"buffer.{name}")


def evaluate(job: Job) -> tuple[float, float]:
    """Held-out loss and accuracy over every eval sample, each rank scoring its own shard."""
    job.model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    shard = eval_shard(job.data.eval_size, hvd.rank(), hvd.size()).tolist()
    with torch.no_grad():
        for x, y in job.data.eval_batches(shard):
            x, y = x.to(job.device, non_blocking=True), y.to(job.device, non_blocking=True)
            with job.autocast():
                out = job.model(x)
            sums += torch.tensor([F.cross_entropy(out.float(), y, reduction="sum").item(),
                                  (out.argmax(1) == y).sum().item(), len(y)], dtype=torch.float64)
    # Each rank saw a different shard; sum the counts to get the global loss/accuracy.
    total = allreduce_sum(sums, "eval_sums")
    return (total[0] / total[2]).item(), (total[1] / total[2]).item()


def finish(job: Job, counters: Counters) -> None:
    """Every rank: prove the replicas agree and ran the same steps; rank 0 reports ``done``."""
    job.beat.at("finish", counters.epoch, counters.batch)
    sync_buffers(job.model)
    # Horovod: gather every rank's model hash to prove the replicas never diverged.
    hashes = hvd.allgather_object(state_hash(job.model))
    # Horovod: and every rank's step count, to show they all ran the same number of steps.
    steps = hvd.allgather_object(counters.global_step)
    if hvd.rank() == 0:
        events.emit("done", epochs=job.recipe.train.epochs, eval_acc=counters.eval_acc,
                    eval_loss=counters.eval_loss, param_hashes=hashes,
                    replicas_identical=len(set(hashes)) == 1, steps_per_rank=steps,
                    world_size=hvd.size(), resets=counters.resets)
