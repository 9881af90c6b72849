"""The worker -> CLI protocol: rank 0 prints one JSON object per line behind a fixed marker.

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


def encode(kind: str, **fields: Any) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    return MARKER + json.dumps(_clean({"event": kind, **fields}), separators=(",", ":"))


def emit(kind: str, **fields: Any) -> None:
    """Write one event line (rank 0 only, by convention of the caller)."""
    sys.stdout.write(encode(kind, **fields) + "\n")
    sys.stdout.flush()


@dataclass(frozen=True)
class Line:
    """One line of horovodrun output: who wrote it, and the event in it if it is one."""

    rank: int | None  # None: horovodrun itself (not a worker)
    stream: str  # stdout | stderr | launcher
    text: str
    event: dict[str, Any] | None = None


def parse_line(raw: str) -> Line:
    raw = raw.rstrip("\r\n")
    m = PREFIX.match(raw)
    if m is None:
        return Line(None, "launcher", raw, _decode(raw))
    rank, stream, text = int(m.group(1)), m.group(2), m.group(3)
    return Line(rank, stream, text, _decode(text) if stream == "stdout" else None)


def _decode(text: str) -> dict[str, Any] | None:
    if not text.startswith(MARKER):
        return None
    try:
        event = json.loads(text[len(MARKER):])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and event.get("event") in KINDS else None
