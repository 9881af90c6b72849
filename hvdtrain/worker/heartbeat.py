"""Per-rank heartbeats: every rank (not only rank 0) prints a small ``beat`` event every few seconds
saying what it is doing (phase, epoch, step). When the run stops making progress, the launcher's
watchdog compares the ranks' last beats to name the rank that is missing from a collective: e.g.
"rank 0 waits in the gradient allreduce of epoch 1 step 3; rank 1 is still computing it".
"""

from __future__ import annotations

import threading
import time

from hvdtrain import events
from hvdtrain.events import BEAT_INTERVAL


class Heartbeat:
    def __init__(self, rank: int, interval: float = BEAT_INTERVAL) -> None:
        self.rank, self.interval = rank, interval
        self.phase, self.epoch, self.step = "init", 0, 0
        self._thread = threading.Thread(target=self._run, name="hvdtrain-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def at(self, phase: str, epoch: int = 0, step: int = 0) -> None:
        """Record the current phase (cheap: three attribute writes, read by the beat thread)."""
        self.phase, self.epoch, self.step = phase, epoch, step

    def _run(self) -> None:
        while True:
            events.emit("beat", rank=self.rank, phase=self.phase, epoch=self.epoch, step=self.step)
            time.sleep(self.interval)
