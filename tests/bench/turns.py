"""Two training processes taking turns epoch by epoch, for `make bench`'s np=1 comparison.

This VM's speed changes within a second (the same plain loop's epochs of ~0.2 s range from ~5,000
to ~9,000 images/s back to back), and separately launched runs land in different spells. So both
sides run at once and take turns: each waits at the start of every epoch (before its epoch timer)
until it is given the turn, and while one side trains, every process of the other side (for
`hvdtrain run`: hvdtrain, its guard, horovodrun and the worker) is stopped with SIGSTOP, so neither
side's threads take CPU from the other. Each epoch of one side is then paired with the other side's
epoch right after it.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
GATE_SITE = BENCH / "gate"


def wait_for_turn(gate: str) -> None:
    """In a side: say it is waiting (GATE.ready), then block until given the turn (GATE.go)."""
    with open(gate + ".ready", "wb", buffering=0) as f:
        f.write(b"r")
    with open(gate + ".go", "rb", buffering=0) as f:
        f.read(1)


class Side:
    """One process (tree) that waits at ``gate`` (a path prefix: GATE.ready, GATE.go fifos)."""

    def __init__(self, argv: list[str], gate: Path, out: Path, env: dict[str, str],
                 cwd: Path) -> None:
        os.mkfifo(f"{gate}.ready")
        os.mkfifo(f"{gate}.go")
        self.gate, self.out = gate, out
        # Opened read-write: never at end of file when the side closes its end after a turn.
        self.ready = os.open(f"{gate}.ready", os.O_RDWR)
        with open(out, "w") as stdout:
            self.proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.STDOUT, cwd=cwd,
                                         env=env)

    def wait_ready(self) -> bool:
        """Until the side waits for its next turn (True) or has ended (False)."""
        while True:
            if select.select([self.ready], [], [], 0.2)[0]:
                os.read(self.ready, 1)
                return True
            if self.proc.poll() is not None:
                return False

    def signal(self, signum: int) -> None:
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for p in procs:
            try:
                p.send_signal(signum)
            except psutil.Error:
                pass

    def turn(self) -> bool:
        """Let the side train one epoch; False when it has ended instead."""
        self.signal(signal.SIGCONT)
        with open(f"{self.gate}.go", "wb", buffering=0) as f:
            f.write(b"g")
        ok = self.wait_ready()
        if ok:
            self.signal(signal.SIGSTOP)
        return ok


def take_turns(sides: list[Side]) -> None:
    """Start-up together, then one epoch each in turn until every side has ended."""
    alive = [s for s in sides if s.wait_ready()]
    for s in alive:
        s.signal(signal.SIGSTOP)
    try:
        while alive:
            alive = [s for s in alive if s.turn()]
    finally:
        for s in sides:
            s.signal(signal.SIGCONT)
            s.proc.wait()
        for s in sides:
            os.close(s.ready)
