"""The normal mode: a fixed set of ranks for the whole run."""

from __future__ import annotations

import horovod.torch as hvd

from hvdtrain.events import WorkerExit
from hvdtrain.worker.job import Job, Progress, share_cores
from hvdtrain.worker.loop import train_epochs
from hvdtrain.worker.resume import announce_start, restore


def run(job: Job, resume: bool) -> int:
    """Synchronise every rank with rank 0 (fresh or restored), then train."""
    progress = Progress()
    outcome, restored_from = restore(job, progress) if resume else (WorkerExit.OK, "")
    if outcome != WorkerExit.OK:
        return outcome
    # Horovod: identical optimizer state and starting weights everywhere (fresh or restored).
    hvd.broadcast_optimizer_state(job.optimizer, root_rank=0)
    hvd.broadcast_parameters(job.model.state_dict(), root_rank=0)
    announce_start(job, progress, share_cores(), restored_from)
    return train_epochs(job, progress)
