"""The worker -> CLI protocol: rank 0 prints JSON events behind a fixed marker, one event per line,
or a JSON array of the events that shared one write (see ``_Stream``).

Under horovodrun a worker's stdout is a pipe whose lines the launcher prefixes (Gloo:
``[rank]<stdout>:``, Open MPI: ``[job,rank]<stdout>:``), so rich cannot draw inside a worker.
Rank 0 emits events; the hvdtrain process parses horovodrun's output and draws.

Event kinds (``event`` field): start, resumed, step, epoch, checkpoint, warning, error, done,
reset (elastic: the world changed), stopped (a stop was asked for: checkpointed; all from rank 0),
and beat (from every rank, every
``BEAT_INTERVAL`` seconds: see worker/heartbeat.py).
A worker's exit code is one of ``WorkerExit``.
"""

from __future__ import annotations

import json
import math
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

MARKER = "@@hvdtrain@@ "
PREFIX = re.compile(r"^\[(?:\d+,)?(\d+)\]<(stdout|stderr)>:(.*)$")
KINDS = ("start", "resumed", "step", "epoch", "checkpoint", "warning", "error", "done", "beat",
         "reset", "stopped", "bench")
# `hvdtrain run` on SIGUSR1 (Slurm's warning before preemption or the time limit): the workers
# checkpoint and stop; the run ends with this code (128 + SIGUSR1, as for the other signals).
STOPPED_EXIT = 128 + int(signal.SIGUSR1)
BEAT_INTERVAL = 2.0  # seconds between a rank's heartbeats; the launcher's stall report reads it
# A progress event (``HELD``) written this soon after the previous write waits to share the next
# write (see ``_Stream``); the next heartbeat ends the wait at the latest.
HOLD = 0.25
HELD = ("step", "epoch", "checkpoint")


class WorkerExit(IntEnum):
    """How a worker process ends (its exit code, as horovodrun reports it)."""

    OK = 0
    CRASHED = 1  # an unexpected exception: the traceback is in the rank's stderr
    BAD_INPUT = 2  # a user-fixable error (e.g. a bad data directory): the message says what
    NO_CHECKPOINT = 3  # --resume, but rank 0 found checkpoints and none of them loads
    NONFINITE = 4  # Inf/NaN gradients with train.on_nonfinite=stop: every rank stops at that step


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: send them as strings so a diverged loss still reaches the terminal."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _body(kind: str, fields: dict[str, Any]) -> str:
    """One event as JSON (no marker)."""
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    return json.dumps(_clean({"event": kind, **fields}), separators=(",", ":"))


def encode(kind: str, **fields: Any) -> str:
    """One event as a protocol line (without the newline)."""
    return MARKER + _body(kind, fields)


class _Stream:
    """This process's event lines on stdout, in order, from the training and heartbeat threads.

    Small models emit many step events a second (digits logged every 5 steps of ~3.5 ms), and every
    write wakes horovodrun's relay and the hvdtrain process, whose CPU a 2-core machine takes from
    the compute threads: 3-6 % of a digits epoch at np=1 (epochs with and without step events,
    interleaved in one run). So a progress event (step, epoch, checkpoint) that comes within
    ``HOLD`` of the previous write is held and goes out with the next write; every other kind
    (beats, warnings, errors, start, done) is written at once, with the held lines before it.
    Epochs of ~0.2 s (digits) made four writes each (a mid-epoch step, the last step, the epoch,
    its checkpoint), now about one: hvdtrain at np=1 vs a plain loop 0.963 -> 0.972 (5 runs of
    40 epochs in turns, tests/bench/turns.py). Nothing is dropped: metrics.jsonl still gets every
    log window, and a worker's last word (exit or exception) flushes what is held.

    The events of one write go out as one line (a JSON array): horovodrun's relay forwards line by
    line, each forwarded line woke the hvdtrain process again, and a held write of digits carries
    ~20 events (np=1, log windows of 5 steps of ~2 ms). hvdtrain at np=1 vs a plain loop, step
    events written vs not written at all (4 runs of 40 epochs in turns): 0.951 vs 0.967.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: list[str] = []
        self.last = -math.inf  # time of the last write

    def emit(self, line: str, hold: bool) -> None:
        with self.lock:
            self.held.append(line)
            now = time.monotonic()
            if not (hold and now - self.last < HOLD):
                self._write(now)

    def flush(self) -> None:
        with self.lock:
            if self.held:
                self._write(time.monotonic())

    def _write(self, now: float) -> None:
        one = self.held[0] if len(self.held) == 1 else "[" + ",".join(self.held) + "]"
        sys.stdout.write(MARKER + one + "\n")
        sys.stdout.flush()
        self.held.clear()
        self.last = now


_stream = _Stream()


def emit(kind: str, **fields: Any) -> None:
    """Write one event line (rank 0 only, by convention of the caller); a progress event may wait
    up to the next write (``_Stream``)."""
    _stream.emit(_body(kind, fields), hold=kind in HELD)


def flush() -> None:
    """Write any held event lines now (before the process ends)."""
    _stream.flush()


@dataclass(frozen=True)
class Line:
    """One line of horovodrun output: who wrote it, and the events in it (one, several that
    shared a write, or none: not an event line)."""

    rank: int | None  # None: horovodrun itself (not a worker)
    stream: str  # stdout | stderr | launcher
    text: str
    events: tuple[dict[str, Any], ...] = ()


def parse_line(raw: str) -> Line:
    raw = raw.rstrip("\r\n")
    m = PREFIX.match(raw)
    if m is None:
        return Line(None, "launcher", raw, _decode(raw))
    rank, stream, text = int(m.group(1)), m.group(2), m.group(3)
    return Line(rank, stream, text, _decode(text) if stream == "stdout" else ())


def _decode(text: str) -> tuple[dict[str, Any], ...]:
    """The events of a protocol line (an object or an array of them); () for any other text."""
    if not text.startswith(MARKER):
        return ()
    try:
        value = json.loads(text[len(MARKER):])
    except json.JSONDecodeError:
        return ()
    return tuple(e for e in (value if isinstance(value, list) else [value])
                 if isinstance(e, dict) and e.get("event") in KINDS)
