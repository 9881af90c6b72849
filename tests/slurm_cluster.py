"""A real one-node Slurm for the tests: Debian's slurm-wlm 22.05 and munge, run by hand (no
systemd), everything in one temp folder: its own munge key and socket, state, spool, logs and
ports, so a Slurm already on the machine is neither used nor disturbed. ``close()`` cancels every
job and stops the daemons by the pids in their pid files (never by name).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")


def unavailable() -> str | None:
    """Why this machine cannot run the test Slurm (None when it can)."""
    if os.geteuid() != 0:
        return "needs root to run slurmd (make test-hosts-deps installs slurm-wlm and munge as root)"
    missing = [t for t in (*DAEMONS, *CLIENTS) if shutil.which(t) is None and
               not Path("/usr/sbin", t).exists()]
    if missing:
        return (f"{', '.join(missing)} not installed (make test-hosts-deps installs slurm-wlm and munge "
                "from apt when run as root)")
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _daemon(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    """This machine as the only node of a fresh Slurm cluster (partition ``debug``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.socket = root / "munge" / "munge.socket"
        self.host = socket.gethostname()
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
                    "SLURM_CONF": str(self.conf)}

    def start(self) -> SlurmCluster:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o711)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        m = self.root / "munge"
        subprocess.run([_daemon("munged"), "--force", f"--key-file={key}",
                        f"--socket={self.socket}", f"--pid-file={m / 'munged.pid'}",
                        f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"],
                       check=True, capture_output=True, text=True)
        self.conf.write_text(self.config())
        for daemon in ("slurmctld", "slurmd"):
            args = [_daemon(daemon)] + (["-c"] if daemon == "slurmctld" else [])
            subprocess.run(args, check=True, env=self.env, capture_output=True, text=True)
        self.wait_idle()
        return self

    def config(self) -> str:
        r, cpus = self.root, os.cpu_count() or 1
        return "\n".join([
            "ClusterName=hvdtrain-test", f"SlurmctldHost={self.host}(127.0.0.1)",
            "SlurmUser=root", "SlurmdUser=root",
            # its own munge socket; cred_expire 5 s: a requeued job may start 5 s later (not 120)
            f"AuthInfo=socket={self.socket},cred_expire=5",
            f"StateSaveLocation={r / 'state'}", f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}", f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SwitchType=switch/none",
            "MpiDefault=none", "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none", "SchedulerType=sched/builtin",
            "SchedulerParameters=sched_interval=1", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core", "ReturnToService=2",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""])

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True,
                              check=check, timeout=60)

    def wait_idle(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.run("sinfo", "-h", "-o", "%t", check=False)
            if out.returncode == 0 and out.stdout.strip() == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"Slurm did not come up in {timeout:.0f} s: sinfo said "
                           f"{out.stdout.strip() or out.stderr.strip()!r}; logs in {self.root}/log")

    def job_state(self, job_id: str) -> tuple[str, int]:
        """(state, restarts) from scontrol (kept for a while after the job ends)."""
        out = self.run("scontrol", "show", "job", job_id, check=False).stdout
        fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
        return fields.get("JobState", "?"), int(fields.get("Restarts", "0") or 0)

    def wait_state(self, job_id: str, states: tuple[str, ...], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        state = "?"
        while time.monotonic() < deadline:
            state, _ = self.job_state(job_id)
            if state in states:
                return state
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} is {state} after {timeout:.0f} s, not one of {states}")

    def close(self) -> None:
        self.run("scancel", "--user", "root", check=False)
        time.sleep(1)
        for pid_file in (self.root / "slurmd.pid", self.root / "slurmctld.pid",
                         self.root / "munge" / "munged.pid"):
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            except (OSError, ValueError):
                pass
