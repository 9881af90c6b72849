"""Hooks the loop calls at named points. In production they do nothing (``Hooks``); for the fault
tests, like Horovod's own exit schedules, a JSON object in ``HVDTRAIN_FAULT`` (set it with
``launch.env``) makes one rank misbehave at one point (``FaultHooks``):

    {"action": "raise", "rank": 1, "epoch": 2}             raise at the start of epoch 2
    {"action": "kill", "rank": 1, "epoch": 1, "step": 5}   SIGKILL itself before step 5
    {"action": "hang", "rank": 1, "epoch": 1, "step": 3}   sleep forever before step 3
    {"action": "inf_grad", "rank": 1, "epoch": 1, "step": 4}  Inf loss -> Inf gradients
    {"action": "kill_in_checkpoint", "rank": 0, "epoch": 2}   SIGKILL mid-write of that checkpoint
    {"action": "model_shape", "rank": 1}                   grow the first parameter of the model
    {"action": "delay_init", "rank": 1, "seconds": 20}     sleep before hvd.init()
    {"action": "usr1_launcher", "rank": 0, "epoch": 2, "step": 1}  SIGUSR1 to hvdtrain (its pid
                                                           from the manifest), as Slurm would

Hooks never change recipe values: they act on the process, the loss or the built model.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass

import torch

from hvdtrain.rundir import RunDir

ENV = "HVDTRAIN_FAULT"


class Hooks:
    """The named points of the loop. Every method is a no-op here."""

    def before_init(self, rank: int) -> None:
        """Before ``hvd.init()`` (``rank`` from horovodrun's environment)."""

    def model_built(self, rank: int, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def epoch_start(self, rank: int, epoch: int) -> None:
        """At the start of 1-based ``epoch``."""

    def before_step(self, rank: int, epoch: int, step: int) -> None:
        """Before the forward pass of 1-based ``step``."""

    def loss(self, rank: int, epoch: int, step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def before_checkpoint_replace(self, rank: int, epoch: int) -> None:
        """Between a complete checkpoint temp file and its rename into place."""


@dataclass(frozen=True)
class Fault:
    action: str
    rank: int
    epoch: int = 1
    step: int = 1
    seconds: float = 0.0


class FaultHooks(Hooks):
    """Performs one ``Fault`` at its point; every other point stays a no-op."""

    def __init__(self, fault: Fault, run_dir: RunDir | None = None) -> None:
        self.fault, self.run_dir = fault, run_dir

    def _here(self, action: str, rank: int, epoch: int | None = None,
              step: int | None = None) -> bool:
        f = self.fault
        return f.action == action and rank == f.rank and epoch in (None, f.epoch) and \
            step in (None, f.step)

    def before_init(self, rank: int) -> None:
        if self._here("delay_init", rank):
            time.sleep(self.fault.seconds)

    def model_built(self, rank: int, model: torch.nn.Module) -> torch.nn.Module:
        if self._here("model_shape", rank):
            first = next(model.parameters())
            first.data = torch.zeros(first.shape[0] + 1, *first.shape[1:], device=first.device)
        return model

    def epoch_start(self, rank: int, epoch: int) -> None:
        if self._here("raise", rank, epoch):
            raise RuntimeError(f"injected fault: rank {rank} raised at epoch {epoch}")

    def before_step(self, rank: int, epoch: int, step: int) -> None:
        if self._here("kill", rank, epoch, step):
            os.kill(os.getpid(), signal.SIGKILL)
        if self._here("hang", rank, epoch, step):
            while True:
                time.sleep(3600)
        if self._here("usr1_launcher", rank, epoch, step) and self.run_dir is not None:
            os.kill(int((self.run_dir.read_manifest() or {})["launcher_pid"]), signal.SIGUSR1)

    def loss(self, rank: int, epoch: int, step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * float("inf") if self._here("inf_grad", rank, epoch, step) else loss

    def before_checkpoint_replace(self, rank: int, epoch: int) -> None:
        if self._here("kill_in_checkpoint", rank, epoch):
            os.kill(os.getpid(), signal.SIGKILL)


def from_env(run_dir: RunDir | None = None) -> Hooks:
    """``FaultHooks`` when ``HVDTRAIN_FAULT`` is set, else the no-op ``Hooks``."""
    raw = os.environ.get(ENV)
    return FaultHooks(Fault(**json.loads(raw)), run_dir) if raw else Hooks()
