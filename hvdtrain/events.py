"""The worker -> CLI protocol: rank 0 prints JSON events behind a fixed marker, one event per line,
or a JSON array of the events that shared one write (see ``_Stream``).

Under horovodrun a worker's stdout is a pipe whose lines the launcher prefixes (Gloo:
``[rank]<stdout>:``, Open MPI: ``[job,rank]<stdout>:``), so rich cannot draw inside a worker.
Rank 0 emits events; the hvdtrain process parses horovodrun's output and draws.

Each event kind (``event`` field) is a TypedDict below: the worker's ``emit`` refuses a field
its kind lacks or a missing one, and the launcher's ``parse_line`` passes on only well-formed
events, naming the field of any other (``Line.problems``). All come from rank 0 but ``beat`` (every
rank, every ``BEAT_INTERVAL`` seconds: worker/heartbeat.py). A worker's exit code is a
``WorkerExit``.
"""

from __future__ import annotations

import json
import math
import re
import sys
import threading
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal, TypedDict, Union

from hvdtrain.manifest import Wire

MARKER = "@@hvdtrain@@ "
PREFIX = re.compile(r"^\[(?:\d+,)?(\d+)\]<(stdout|stderr)>:(.*)$")
# The protocol's version, in the start event: a launcher refuses to read another version's events.
SCHEMA = 2  # 2: the start event carries num_classes
BEAT_INTERVAL = 2.0  # seconds between a rank's heartbeats; the launcher's stall report reads it
# A progress event (``HELD``) written this soon after the previous write waits to share the next
# write (see ``_Stream``); the next heartbeat ends the wait at the latest.
HOLD = 0.25
HELD = ("step", "epoch", "checkpoint", "best")


# --- the events, one TypedDict per kind (the worker builds them, the launcher reads them) --------
# Floats may arrive as the strings "nan"/"inf" (JSON has no NaN: see ``_clean``).

class StartEvent(TypedDict):
    event: Literal["start"]
    schema: int  # SCHEMA
    epochs: int
    start_epoch: int
    start_step: int
    steps_per_epoch: int
    world_size: int
    threads: int
    hosts: list[str]  # each rank's host
    devices: list[str]  # each rank's device: cpu | cuda:N
    host_memory: str  # kept | default (worker/memory.py)
    precision: str
    wire: Wire  # the gradient on the wire, as the configured compression sends it
    op: str
    fused: bool  # the optimizer steps with PyTorch's fused kernel
    base_lr: float
    peak_lr: float
    params: int
    train_samples: int
    eval_samples: int
    classes: list[str] | None  # image folders: class names by index
    num_classes: int  # outputs of the model (chance accuracy is 1 / num_classes)


class ResumedEvent(TypedDict):
    event: Literal["resumed"]
    epoch: int
    step: int
    path: str
    optimizer_hashes: list[str]  # each rank's, after the restore


class StepEvent(TypedDict):
    event: Literal["step"]
    epoch: int
    step: int
    steps: int
    global_step: int
    loss: float
    acc: float
    lr: float
    images_per_s: float


class EpochEvent(TypedDict):
    event: Literal["epoch"]
    epoch: int
    epochs: int
    train_loss: float
    train_acc: float
    eval_loss: float | None  # None: no evaluation this epoch
    eval_acc: float | None
    seconds: float
    images_per_s: float
    data_wait_share: float
    lr: float
    global_step: int
    world_size: int


class CheckpointEvent(TypedDict):
    event: Literal["checkpoint"]
    epoch: int
    step: int
    path: str


class BestEvent(TypedDict):
    event: Literal["best"]
    epoch: int
    eval_acc: float
    path: str  # RUN_DIR/checkpoints/best.pt


class MessageEvent(TypedDict):
    event: Literal["warning", "error"]
    message: str


class DoneEvent(TypedDict):
    event: Literal["done"]
    epochs: int
    eval_acc: float | None
    eval_loss: float | None
    param_hashes: list[str]
    replicas_identical: bool
    steps_per_rank: list[int]
    world_size: int
    resets: int


class BeatEvent(TypedDict):
    event: Literal["beat"]
    rank: int
    phase: str
    epoch: int
    step: int


class ResetEvent(TypedDict):
    event: Literal["reset"]
    number: int
    time: float
    old_size: int
    new_size: int
    hosts: list[str]
    left: list[str]
    joined: list[str]
    epoch: int
    step: int
    global_step: int


class StoppedEvent(TypedDict):
    event: Literal["stopped"]
    epoch: int
    step: int
    global_step: int
    path: str


class BenchEvent(TypedDict):
    event: Literal["bench"]
    np: int
    wire_bytes: int
    per_rank: list[list[float | None]]  # each rank's (wall seconds, allreduce wait seconds)
    threads: int
    batch_size: int
    steps: int


class ProfileEvent(TypedDict):
    """`hvdtrain forecast`'s compute measurement of one process (hvdtrain/worker/profile.py):
    medians per step, seconds."""

    event: Literal["profile"]
    forward_s: float  # forward pass and loss (the slowest rank's median)
    backward_s: float
    update_s: float  # optimizer step
    step_s: list[float]  # a whole step in lockstep with the host's other ranks: p10, median, p90
    powersgd_step_s: list[float] | None  # the same with PowerSGD's reduce (None: nothing factored)
    sum_s_per_byte: dict[str, float]  # adding two gradients on this CPU: float32, float16
    threads: int  # torch threads per rank
    ranks: int  # ranks sharing the host (in lockstep through Horovod when > 1)
    batch_size: int
    shapes: list[list]  # [name, shape] of every trainable parameter


class LinkEvent(TypedDict):
    """`hvdtrain forecast --link measured`: Horovod allreduce times between two hosts."""

    event: Literal["link"]
    sizes: list[int]  # bytes (float32)
    seconds: list[float]  # median seconds of one allreduce of each size


Event = Union[StartEvent, ResumedEvent, StepEvent, EpochEvent, CheckpointEvent, BestEvent,
              MessageEvent, DoneEvent, BeatEvent, ResetEvent, StoppedEvent, BenchEvent,
              ProfileEvent, LinkEvent]
EVENTS: dict[str, type] = {"start": StartEvent, "resumed": ResumedEvent, "step": StepEvent,
                           "epoch": EpochEvent, "checkpoint": CheckpointEvent, "best": BestEvent,
                           "warning": MessageEvent, "error": MessageEvent, "done": DoneEvent,
                           "beat": BeatEvent, "reset": ResetEvent, "stopped": StoppedEvent,
                           "bench": BenchEvent, "profile": ProfileEvent, "link": LinkEvent}
FIELDS = {kind: frozenset(t.__annotations__) for kind, t in EVENTS.items()}  # read per event


def problems(event: object) -> list[str]:
    """What is wrong with one decoded event, naming the field; [] when it is well formed."""
    if not isinstance(event, dict):
        return [f"an event is a JSON object, not {type(event).__name__}"]
    kind = event.get("event")
    if kind not in EVENTS:
        return [f"unknown event kind {kind!r} (field 'event'; known: {', '.join(EVENTS)})"]
    fields = FIELDS[kind]
    found = [f"{kind} event: missing field {f!r}" for f in sorted(fields - set(event))]
    found += [f"{kind} event: unexpected field {f!r}" for f in sorted(set(event) - fields)]
    if kind == "start" and "schema" in event and event["schema"] != SCHEMA:
        found.append(f"start event: field 'schema' is {event['schema']!r}, this hvdtrain reads "
                     f"{SCHEMA}: the workers run another hvdtrain version (install the same one "
                     "on every host)")
    return found


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
    """One event as JSON (no marker); a field the kind does not have, or lacks, is a bug here."""
    event = {"event": kind, **fields}
    wrong = problems(event)
    if wrong:
        raise ValueError("; ".join(wrong))
    return json.dumps(_clean(event), separators=(",", ":"))


def encode(kind: str, **fields: Any) -> str:
    """One event as a protocol line (without the newline)."""
    return MARKER + _body(kind, fields)


class _Stream:
    """This process's event lines on stdout, in order, from the training and heartbeat threads.

    Every write wakes horovodrun's relay and the hvdtrain process, whose CPU a 2-core machine takes
    from the compute threads (docs/performance.md, "Event writes"). So a progress event (step,
    epoch, checkpoint) that comes within ``HOLD`` of the previous write is held and goes out with
    the next write; every other kind (beats, warnings, errors, start, done) is written at once,
    with the held lines before it, and the events of one write go out as one line (a JSON array).
    Nothing is dropped: a worker's last word (exit or exception) flushes what is held.
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
    shared a write, or none: not an event line); ``problems`` says what was wrong with any event
    left out."""

    rank: int | None  # None: horovodrun itself (not a worker)
    stream: str  # stdout | stderr | launcher
    text: str
    events: tuple[Event, ...] = ()
    problems: tuple[str, ...] = ()


def parse_line(raw: str) -> Line:
    raw = raw.rstrip("\r\n")
    m = PREFIX.match(raw)
    if m is None:
        return Line(None, "launcher", raw, *_decode(raw))
    rank, stream, text = int(m.group(1)), m.group(2), m.group(3)
    if stream != "stdout":
        return Line(rank, stream, text)
    return Line(rank, stream, text, *_decode(text))


def _decode(text: str) -> tuple[tuple[Event, ...], tuple[str, ...]]:
    """The well-formed events of a protocol line (an object or an array of them) and what was
    wrong with the others; ((), ()) for any other text."""
    if not text.startswith(MARKER):
        return (), ()
    try:
        value = json.loads(text[len(MARKER):])
    except json.JSONDecodeError as exc:
        return (), (f"event line is not JSON ({exc.msg} at column {exc.colno})",)
    good: list[Event] = []
    bad: list[str] = []
    for e in value if isinstance(value, list) else [value]:
        wrong = problems(e)
        bad += wrong
        if not wrong:
            good.append(e)
    return tuple(good), tuple(bad)
