"""Test-only fault injection, like Horovod's own exit schedules: a JSON object in the environment
variable ``HVDTRAIN_FAULT`` (set it with ``launch.env``) makes one rank misbehave at one point.

    {"action": "raise", "rank": 1, "epoch": 2}             raise at the start of epoch 2
    {"action": "kill", "rank": 1, "epoch": 1, "step": 5}   SIGKILL itself before step 5
    {"action": "hang", "rank": 1, "epoch": 1, "step": 3}   sleep forever before step 3's allreduce
    {"action": "inf_grad", "rank": 1, "epoch": 1, "step": 4}  Inf loss -> Inf gradients
    {"action": "kill_in_checkpoint", "rank": 0, "epoch": 2}   SIGKILL mid-write of that checkpoint
    {"action": "model_shape", "rank": 1}                   build a wider model than the others
    {"action": "delay_init", "rank": 1, "seconds": 20}     sleep before hvd.init()

Without the variable every hook is a no-op.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass

ENV = "HVDTRAIN_FAULT"


@dataclass(frozen=True)
class Fault:
    action: str
    rank: int
    epoch: int = 1
    step: int = 1
    seconds: float = 0.0

    def here(self, rank: int, epoch: int | None = None, step: int | None = None) -> bool:
        return rank == self.rank and (epoch is None or epoch == self.epoch) and \
            (step is None or step == self.step)


def from_env() -> Fault | None:
    raw = os.environ.get(ENV)
    if not raw:
        return None
    data = json.loads(raw)
    return Fault(**data)


def trigger(fault: Fault | None, action: str, rank: int, epoch: int | None = None,
            step: int | None = None) -> bool:
    """Perform ``action`` if the fault says so here; returns True for caller-handled actions."""
    if fault is None or fault.action != action or not fault.here(rank, epoch, step):
        return False
    if action == "raise":
        raise RuntimeError(f"injected fault: rank {rank} raised at epoch {epoch}")
    if action in ("kill", "kill_in_checkpoint"):
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "hang":
        while True:
            time.sleep(3600)
    if action == "delay_init":
        time.sleep(fault.seconds)
    return True
