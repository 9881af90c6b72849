"""A guardian for one run: ``python -m hvdtrain.launcher.guard FD RUN_DIR``.

`hvdtrain run` starts it (in a session of its own, so a closed terminal does not reach it) holding
the read end of a pipe whose write end only the `hvdtrain` process holds. When the run ends
normally, hvdtrain writes one byte and the guard leaves. When hvdtrain dies first (SIGKILL, the
out-of-memory killer), the pipe reaches end-of-file: the guard makes sure horovodrun and the
workers are gone and marks the manifest ``killed``, so the run directory never claims a run that
nothing is running. (horovodrun itself dies with hvdtrain through PR_SET_PDEATHSIG, and its
per-rank middlemen then stop the workers; the guard ends whatever is still left.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from hvdtrain.manifest import Status
from hvdtrain.rundir import RunDir, resume_command


class Guard:
    """The launching side: start the guard for ``run_dir``; ``release`` it once the manifest
    records how the run ended."""

    def __init__(self, run_dir: RunDir, lock_fd: int) -> None:
        read_fd, self._write_fd = os.pipe()  # both non-inheritable; pass_fds hands over one
        # The guard also holds the run directory's lock (``lock_fd``, RunDir.locked): after a
        # SIGKILL of hvdtrain no resume may start until the guard has marked the manifest.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hvdtrain.launcher.guard", str(read_fd), str(run_dir.path)],
            pass_fds=(read_fd, lock_fd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(read_fd)

    def release(self) -> None:
        os.write(self._write_fd, b"x")
        os.close(self._write_fd)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main(argv: list[str]) -> int:
    fd, run_dir = int(argv[0]), RunDir(Path(argv[1]))
    if os.read(fd, 1):  # hvdtrain finished the run and said so
        return 0
    stopped = stop_leftovers(run_dir)
    info = run_dir.read_manifest()
    if info is None or info.get("status") != Status.RUNNING:
        return 0  # hvdtrain died after recording the end: nothing to correct
    pid = info.get("launcher_pid")
    info.update(status=Status.KILLED, end_time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), failure=[
        f"the hvdtrain process (pid {pid}) died before the run ended (killed by a signal such as "
        f"SIGKILL, or by the out-of-memory killer); {stopped} leftover process(es) stopped",
        f"resume with: {resume_command(run_dir.path)}"])
    run_dir.write_manifest(info)
    return 0


def stop_leftovers(run_dir: RunDir, grace: float = 10.0) -> int:
    """End every horovodrun or worker process of this run still alive on this host."""
    import psutil

    from hvdtrain.launcher.supervisor import terminate_all

    def of_this_run(args: list[str]) -> bool:
        return any(a == "--run-dir" and b == str(run_dir.path) for a, b in zip(args, args[1:]))

    procs = [p for p in psutil.process_iter(["cmdline"]) if of_this_run(p.info["cmdline"] or [])]
    return terminate_all(procs, grace)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
