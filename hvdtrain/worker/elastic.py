"""The elastic mode (recipe section ``elastic``): workers may leave or join. It adds to the shared
core only what Horovod's elastic API needs: the loop runs under ``hvd.elastic.run``, model,
optimizer, sampler and counters live in a ``TorchState`` committed in memory every
``elastic.commit_every`` steps and at every epoch end, and a reset callback reports the new world.
The LR is a function of the current world size, so after a reset it follows the new size.
"""

from __future__ import annotations

import math

import horovod.torch as hvd

from hvdtrain import events
from hvdtrain.events import WorkerExit
from hvdtrain.worker.loop import Job, announce_start, restore, share_cores, train_epochs


def run(job: Job, resume: bool) -> int:
    assert job.recipe.elastic is not None
    # Horovod: model, optimizer, sampler and counters, committed in memory and synced on reset.
    state = hvd.elastic.TorchState(model=job.model, optimizer=job.optimizer, sampler=job.sampler,
                                   epoch=0, batch=0, global_step=0, eval_loss=math.nan,
                                   eval_acc=math.nan, resets=0)

    def on_reset() -> None:
        state.resets += 1
        if hvd.rank() == 0:
            events.emit("warning", message=f"elastic reset #{state.resets}: world size now "
                                           f"{hvd.size()}, LR follows the new size")

    state.register_reset_callbacks([on_reset])
    outcome, restored_from = restore(job, state) if resume else (WorkerExit.OK, "")
    if outcome != WorkerExit.OK:
        return outcome
    state.save()  # the first sync inside hvd.elastic.run broadcasts the *saved* state from rank 0
    return _train(state, job, restored_from)


@hvd.elastic.run
def _train(state, job: Job, restored_from: str) -> int:
    """Runs again from the last commit after every reset (Horovod re-synchronises ``state``)."""
    hosts = share_cores()  # again after every reset: the world may have changed
    if state.resets == 0:  # the first entry (on_reset counts every later one)
        announce_start(job, state, hosts, restored_from)
    commit_every = job.recipe.elastic.commit_every

    def after_step(step: int) -> None:
        # Horovod: count the samples this step consumed, so a reset re-shards only the rest.
        job.sampler.record_batch(step, job.per_step)
        if (step + 1) % commit_every == 0:
            # Horovod: commit in-memory state and pick up host changes at a safe point.
            state.commit()

    return train_epochs(job, state, after_step=after_step, after_epoch=state.commit)
