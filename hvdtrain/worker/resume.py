"""Resume and start: rank 0 restores its newest valid checkpoint and every rank learns the
position (``restore``), then the ``resumed`` and ``start`` events (``announce_start``).

Every Horovod call carries a ``# Horovod:`` comment saying why it is there.
"""

from __future__ import annotations

import horovod.torch as hvd
import torch

from hvdtrain import events
from hvdtrain.errors import UserError
from hvdtrain.events import WorkerExit
from hvdtrain.schedule import peak_lr
from hvdtrain.worker import checkpoint
from hvdtrain.worker.job import Counters, Job
from hvdtrain.worker.optim import compression_report, is_fused, optimizer_hash

def restore(job: Job, counters: Counters, collective: bool = True) -> tuple[WorkerExit, str]:
    """Continue after rank 0's newest valid checkpoint: rank 0 loads it into the model and
    optimizer (the caller's broadcast or state sync spreads them) and sets ``counters`` and the
    sampler (a mid-epoch checkpoint continues its epoch's data order after the samples already
    trained on); returns (outcome, path). ``collective``: every rank learns rank 0's position by a
    broadcast (normal mode); elastic mode leaves that to the state sync, since a worker joining
    later restores nothing."""
    where, path, rng, psgd = (restore_checkpoint(job) if hvd.rank() == 0
                              else ([0, 0, 0], "", None, None))
    if collective:
        # Horovod: every rank resumes at rank 0's position (epoch -1: rank 0 could not load one).
        where = hvd.broadcast(torch.tensor(where), root_rank=0, name="start_position").tolist()
        # Horovod: and continues its own random stream (dropout, augmentation) where it stopped.
        rng = hvd.broadcast_object(rng, root_rank=0, name="rng_states")
        if rng is not None and len(rng) == hvd.size():  # (a new world size draws anew)
            torch.set_rng_state(rng[hvd.rank()])
        if job.powersgd is not None:
            # Horovod: PowerSGD's Q (alike on every rank) and every rank's own error buffers.
            psgd = hvd.broadcast_object(psgd, root_rank=0, name="powersgd_state")
            errors = (psgd or {}).get("errors")
            job.powersgd.load(psgd, errors[hvd.rank()] if errors and len(errors) == hvd.size()
                              else None)
    epoch, global_step, processed = where
    if epoch < 0:
        return WorkerExit.NO_CHECKPOINT, ""
    # Horovod: the sampler skips the ``processed`` samples of this epoch's permutation and shards
    # the rest over the current world (which may differ from the one that wrote the checkpoint).
    job.sampler.load_state_dict({"epoch": epoch, "processed_num": processed})
    counters.epoch, counters.batch = epoch, processed // (job.per_step * hvd.size())
    counters.global_step = global_step or epoch * job.steps_per_epoch()
    return WorkerExit.OK, path


def restore_checkpoint(job: Job) -> tuple[list[int], str, list[torch.Tensor] | None,
                                          dict | None]:
    """Rank 0: load the newest valid checkpoint; returns ([complete epochs (-1 on failure), global
    step (0: unknown), samples of the next epoch already trained on], path, every rank's RNG
    state when saved)."""
    folder = job.run_dir.checkpoints
    checkpoint.clean_stray_temp_files(folder)
    try:
        loaded = checkpoint.load_latest(folder)
    except checkpoint.CheckpointError as exc:
        events.emit("warning", message=f"cannot resume: {exc}")
        return [-1, 0, 0], "", None, None
    if loaded is None:
        events.emit("warning", message=f"no checkpoint in {folder}: starting from epoch 1")
        return [0, 0, 0], "", None, None
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
             int(state.get("processed_samples", 0))], str(loaded.path), state.get("rng"),
            state.get("powersgd"))


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
                    classes=job.data.classes, num_classes=job.data.num_classes)
