"""The one training core both modes call: epochs of ``train_step`` (worker/step.py), metric
windows, ``end_epoch`` (eval, epoch event, checkpoint), ``stop`` and ``finish``.

The normal mode (worker/fixed.py) calls ``train_epochs`` once; the elastic mode (worker/elastic.py)
calls it inside ``hvd.elastic.run`` and adds only what Horovod's elastic API needs, through
``after_step`` and ``after_epoch``. The job and its counters: worker/job.py; resume and the start
events: worker/resume.py.

The order of collective calls is a contract between the ranks: every rank makes each call below,
in this order, or the run deadlocks (Horovod matches collectives by name, Gloo waits for all). What
only rank 0 does (events, checkpoint files, TensorBoard) comes after the collective that gathers
its input, never around one: moving a gather under ``if rank == 0`` hangs the other ranks.

    start   restore: broadcast start_position, broadcast_object rng_states, with PowerSGD
            broadcast_object powersgd_state (--resume, normal mode)
            fixed:   broadcast_optimizer_state, broadcast_parameters (elastic: state.sync())
            share_cores: allgather_object hosts; announce_start: [allgather_object optimizer
            hashes, when resumed], allgather_object devices
    step    the gradient allreduces (DistributedOptimizer's hooks; Adasum: allreduce "finite";
            PowerSGD: allreduces "powersgd.warmup", or "powersgd.rest", ".p", ".q")
    window  allreduce "train_window" every log_interval steps: metrics and the stop flag, so all
            ranks stop at the same step; on a non-finite stop: allgather_object of the losses
    epoch   when evaluating: sync_buffers (allreduce per BN buffer), allreduce "eval_sums";
            image folders with on_bad_image=skip: allreduce "skipped"; when a checkpoint is due:
            allgather_object rng states (and PowerSGD's error buffers), *before* rank 0
            alone writes the checkpoint
    stop    mid-epoch: sync_buffers, allgather_object rng states; then barrier
    finish  sync_buffers, allgather_object model hashes, allgather_object step counts

A single rank (np=1) skips the allreduces of ``allreduce_sum`` and ``sync_buffers``: there is
nothing to sum, and each costs a background cycle. Every Horovod call carries a ``# Horovod:``
comment saying why it is there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import horovod.torch as hvd
import torch
import torch.nn.functional as F

from hvdtrain import events
from hvdtrain.events import WorkerExit
from hvdtrain.recipe import IN_MEMORY
from hvdtrain.rundir import checkpoint_path
from hvdtrain.schedule import lr_at
from hvdtrain.worker.board import open_board
from hvdtrain.worker.data import DataError, eval_shard
from hvdtrain.worker.job import Counters, Job
from hvdtrain.worker.optim import state_hash
from hvdtrain.worker.saving import keep_best, rank_states, save_checkpoint
from hvdtrain.worker.sources import Batch
from hvdtrain.worker.step import (
    Meter,
    NonFinite,
    allreduce_sum,
    ratio,
    report_nonfinite,
    train_step,
)

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
            parts = train_step(job, micro, epoch, step + 1, lr, rank, counters.global_step)
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
                              train__images_per_s=rate)
            job.board.learning_rates(counters.global_step,
                                     lambda i: lr_at(i, spe, size, job.cfg))
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
    if not meter.epoch[2] and meter.epoch_steps:  # (all ranks: the counts are allreduced)
        raise DataError(f"epoch {epoch}: no training image could be decoded (data.on_bad_image: "
                        "skip skipped them all): check the files in data.data_dir")
    due = epoch % train.checkpoint_every == 0 or last or meter.stop
    rng = rank_states(job) if due else None
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
        save_checkpoint(job, epoch, counters.global_step, rng=rng,
                        eval_acc=counters.eval_acc if evaluated else None)
    if evaluated:
        keep_best(job, epoch, counters.global_step, counters.eval_acc)


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
        rng = rank_states(job)
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
    total, empty = (int(n) for n in allreduce_sum(
        torch.tensor([len(skipped), job.data.take_empty()]), "skipped").tolist())
    if total and hvd.rank() == 0:
        example = f"; e.g. on rank 0: {skipped[0].path} ({skipped[0].reason})" if skipped else ""
        batches = (f"; {empty} batch(es) had no image left, so their rank's share of that step "
                   "was zero" if empty else "")
        events.emit("warning", message=f"epoch {epoch}: skipped {total} image(s) that failed to "
                                       f"decode (data.on_bad_image: skip){example}{batches}")


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
            if not len(y):  # data.on_bad_image: skip, and no image of this batch decoded
                continue
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
