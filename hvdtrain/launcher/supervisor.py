"""Run horovodrun as a child we fully control: its output arrives through a queue (so the caller can
keep a watchdog and react to signals while waiting), and stopping it stops every process under it.

hvdtrain makes itself a child subreaper (Linux), so workers that horovodrun leaves behind are
re-parented to hvdtrain instead of init and can still be found and ended: no orphans. If hvdtrain
itself dies, horovodrun gets SIGKILL (PR_SET_PDEATHSIG; its per-rank middlemen then stop the
workers) and a guard process (guard.py) marks the run directory's manifest as killed.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import threading
import time

import psutil

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_EOF = object()


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def _die_with_parent() -> None:
    """In the horovodrun child, before exec: SIGKILL when hvdtrain dies, however it dies."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def terminate_all(procs: list[psutil.Process], grace: float) -> int:
    """SIGTERM ``procs``, SIGKILL those still alive after ``grace`` s; returns how many."""
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    return len(procs)


def _children() -> list[psutil.Process]:
    """Every process under this one (none when psutil cannot tell)."""
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


class Supervisor:
    def __init__(self, argv: list[str], env: dict[str, str], spare: tuple[int, ...] = ()) -> None:
        """``spare``: pids of our children that are not part of the job (the run's guard). Every
        process already under us is spared too: not this job's (a program that calls hvdtrain's
        functions may have children of its own, e.g. the test hosts' sshd)."""
        become_subreaper()
        self.spare = set(spare) | {c.pid for c in _children()}
        # A new session: a terminal's Ctrl-C reaches hvdtrain only, which then stops the job in order.
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, text=True, bufsize=1,
                                     errors="replace", start_new_session=True,
                                     preexec_fn=_die_with_parent)
        self._queue: queue.Queue[object] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._queue.put(raw)
        self._queue.put(_EOF)

    def next_line(self, timeout: float) -> str | None:
        """The next output line; None if none arrived within ``timeout``. Raises EOFError at end."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _EOF:
            raise EOFError
        return item  # type: ignore[return-value]

    def descendants(self) -> list[psutil.Process]:
        """horovodrun and everything under it, plus orphans re-parented to us (not the guard)."""
        return [p for p in _children() if p.pid not in self.spare]

    def stop(self, grace: float = 10.0) -> int:
        """SIGTERM every process under us, SIGKILL what is left after ``grace`` s. Returns how many."""
        stopped = terminate_all(self.descendants(), grace)
        self.reap()
        return stopped

    def wait(self) -> int:
        code = self.proc.wait()
        self._reader.join(timeout=5)
        return code

    def reap(self) -> None:
        """Collect exit statuses of re-parented orphans (after horovodrun's own is known)."""
        if self.proc.returncode is None:
            return
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.05)
