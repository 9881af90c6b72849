"""Short helper processes the launcher runs before a launch (the component probe, the elastic host
discovery script). Each runs in a process group of its own, and the whole group (whatever the
helper started too) is killed when the helper ends, times out, or hvdtrain is interrupted: no
helper outlives the command, and a child that keeps the output pipe open cannot stall it. What
the helper printed is always returned, also after a timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from dataclasses import dataclass
from typing import IO

MAX_KEPT = 1 << 20  # characters of each stream kept (a helper printing forever fills no memory)


@dataclass(frozen=True)
class Ran:
    code: int | None  # None: it did not finish within the timeout (and was killed)
    stdout: str
    stderr: str


def run_helper(argv: list[str], *, timeout: float, input_text: str | None = None) -> Ran:
    """Run ``argv`` (no shell) with ``input_text`` on stdin, for at most ``timeout`` seconds.
    Raises OSError when it cannot start."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL if input_text is None else subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    kept: dict[str, list[str]] = {"stdout": [], "stderr": []}
    readers = [threading.Thread(target=_drain, args=(stream, kept[name]), daemon=True)
               for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for reader in readers:
        reader.start()
    restore = signals_end_the_helper()
    try:
        if input_text is not None and proc.stdin is not None:
            try:
                proc.stdin.write(input_text)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # it exited without reading: its code says why
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
    finally:
        kill_group(proc.pid)
        proc.wait()
        restore()
    for reader in readers:
        reader.join(timeout=5)
    return Ran(code, "".join(kept["stdout"]), "".join(kept["stderr"]))


def kill_group(pgid: int) -> None:
    """SIGKILL the helper's process group (its session: it and everything it started)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


def _drain(stream: IO[str] | None, into: list[str]) -> None:
    size = 0
    for chunk in iter(lambda: stream.read(65536) if stream else "", ""):
        if size < MAX_KEPT:
            into.append(chunk[:MAX_KEPT - size])
            size += len(chunk)


def signals_end_the_helper():  # noqa: ANN202 - returns the function that restores them
    """While a helper runs, SIGTERM and SIGHUP end hvdtrain with 128 + the signal (as `run`
    does) through ``finally`` blocks, so the helper's group is killed first (SIGINT already
    raises KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    return lambda: [signal.signal(sig, handler) for sig, handler in previous.items()]
