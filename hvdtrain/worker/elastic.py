"""The elastic mode (recipe section ``elastic``): workers may leave or join. It adds to the shared
core only what Horovod's elastic API needs: the loop runs under ``hvd.elastic.run``, model,
optimizer, sampler and counters live in a ``TorchState`` committed in memory every
``elastic.commit_every`` steps and at every epoch end, and after each reset rank 0 reports the new
world (a ``reset`` event: sizes, hosts that left or joined, where training continues). The LR is a
function of the current world size, so after a reset it follows the new size.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

import horovod.torch as hvd

from hvdtrain import events
from hvdtrain.events import WorkerExit
from hvdtrain.worker.job import Job, share_cores
from hvdtrain.worker.loop import train_epochs
from hvdtrain.worker.resume import announce_start, restore


@dataclass
class World:
    """What this process saw of the job before the last reset (TorchState's counters are restored
    from the last commit on a reset, so a reset count there would be lost)."""

    resets: int = 0
    hosts: list[str] = field(default_factory=list)
    reason: str = ""


def run(job: Job, resume: bool) -> int:
    assert job.recipe.elastic is not None
    # Horovod: model, optimizer, sampler and counters, committed in memory and synced on reset.
    state = hvd.elastic.TorchState(model=job.model, optimizer=job.optimizer, sampler=job.sampler,
                                   epoch=0, batch=0, global_step=0, eval_loss=math.nan,
                                   eval_acc=math.nan, resets=0, started=False)
    world = World()

    def on_reset() -> None:
        world.resets += 1

    state.register_reset_callbacks([on_reset])
    # Rank 0 restores; the first sync gives every rank (and any later joiner) its state.
    outcome, restored_from = (restore(job, state, collective=False) if resume
                              else (WorkerExit.OK, ""))
    if outcome != WorkerExit.OK:
        return outcome
    state.save()  # the first sync inside hvd.elastic.run broadcasts the *saved* state from rank 0
    return _train(state, job, restored_from, world)


@hvd.elastic.run
def _train(state, job: Job, restored_from: str, world: World) -> int:
    """Runs again from the last commit after every reset (Horovod re-synchronises ``state``)."""
    hosts = share_cores()  # again after every reset: the world may have changed
    if job.powersgd is not None:  # Q and the error buffers afresh, alike on every rank (joiners
        job.powersgd.reset()      # have none, and the model went back to the last commit)
    if not state.started:  # synced from rank 0: every rank, joiners too, takes the same branch
        announce_start(job, state, hosts, restored_from)
        state.started = True
        state.save()  # (nothing trained yet) so a reset before the first commit keeps it
    elif hvd.rank() == 0 and world.hosts:
        report_reset(state, world, hosts)
    world.hosts = hosts
    state.resets = world.resets
    commit_every = job.recipe.elastic.commit_every

    def after_step(step: int) -> None:
        # (run_steps has counted the step's samples in the sampler: a reset re-shards the rest.)
        if (step + 1) % commit_every == 0:
            # Horovod: commit in-memory state and pick up host changes at a safe point.
            state.commit()

    return train_epochs(job, state, after_step=after_step, after_epoch=state.commit)


def report_reset(state, world: World, hosts: list[str]) -> None:
    """Rank 0: the ``reset`` event (who left or joined, the new size, where training resumes)."""
    old, new = Counter(world.hosts), Counter(hosts)
    left, joined = sorted((old - new).elements()), sorted((new - old).elements())
    # Horovod: the new world size after the re-rendezvous.
    size = hvd.size()
    events.emit("reset", number=world.resets, time=time.time(), old_size=len(world.hosts),
                new_size=size, hosts=hosts, left=left, joined=joined, epoch=state.epoch + 1,
                step=state.batch, global_step=state.global_step)
