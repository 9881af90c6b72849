"""`hvdtrain sbatch`: a batch script in a new run directory, submitted with ``sbatch`` (an argv
list, no shell).

The script is the only place a shell is involved. Its command lines are argv lists joined with
``shlex.quote`` (recipe path, overrides, run directory: injection strings stay inert). Its
``#SBATCH`` lines are read by sbatch, not by the shell, and sbatch knows double quotes only: every
option is checked against Slurm's own format first and refused with the reason otherwise.

Preemption and time limits: the job asks for ``--signal=B:USR1@<seconds>`` and ``--requeue``;
``exec`` makes `hvdtrain run` the batch shell itself, so the signal reaches it; it checkpoints,
stops and requeues the job (launch.py), and the script's second start finds the manifest and
resumes the same run directory.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hvdtrain.errors import UserError
from hvdtrain.launcher.hosts import MAX_SLOTS
from hvdtrain.rundir import RunDir

# Slurm 22.05's time_str2secs (src/common/parse_time.c): digits, at most one '-' before at most
# two ':' ("1-" is one day), "-1" / INFINITE / UNLIMITED in any case; 0 asks for no limit.
TIME = re.compile(r"^(?:(\d+)-(\d*)(?::(\d+))?(?::(\d+))?|(\d+)(?::(\d+))?(?::(\d+))?)$")
UNLIMITED = ("-1", "infinite", "unlimited")
NAME = re.compile(r"^[A-Za-z0-9_.+@-]{1,128}$")
FORMATS = {  # option -> (pattern, what Slurm expects)
    "partition": (re.compile(r"^[A-Za-z0-9_.+-]+(?:,[A-Za-z0-9_.+-]+)*$"), "a partition name "
                  "(or several, comma-separated)"),
    "account": (NAME, "an account name (letters, digits, _ . + @ -)"),
    "qos": (NAME, "a QOS name (letters, digits, _ . + @ -)"),
    "job_name": (NAME, "a job name of letters, digits and _ . + @ - (at most 128)"),
    "gpus_per_node": (re.compile(r"^(?:[A-Za-z0-9_.-]+:)?\d+$"), "a count, optionally with a "
                      "type: 2 or a100:2"),
    # Slurm's str_to_mbytes: a count of MB, or with K/M/G/T (any case), optionally then B
    "mem": (re.compile(r"^\d+(?:[KMGTkmgt][Bb]?)?$"), "memory per node like 16G, 32GB or 8000 "
            "(MB)"),
}
JOB_ID = re.compile(r"^\d+$")
UNSAFE_IN_PATH = ('"', "%", "\\", "\n", "\r")  # #SBATCH --output: quotes, and Slurm's patterns


@dataclass
class SbatchOptions:
    """What the job asks Slurm for (each becomes one ``#SBATCH`` line when given)."""

    nodes: int
    ntasks_per_node: int
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_node: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    job_name: str | None = None
    signal_seconds: int = 120
    requeue: bool = True

    @property
    def tasks(self) -> int:
        return self.nodes * self.ntasks_per_node


def time_seconds(value: str) -> int | None:
    """Seconds of a Slurm time limit (None: unlimited, as sbatch reads "0" too); raises
    ValueError when sbatch would refuse it."""
    if value.lower() in UNLIMITED:
        return None
    m = TIME.match(value)
    if not m or (m.group(1) is not None and m.group(3) is not None and not m.group(2)):
        raise ValueError(value)  # ("1-:30": Slurm needs the hours before minutes)
    g = [int(x) if x else 0 for x in m.groups()]
    if m.group(1) is not None:  # days-[hours[:minutes[:seconds]]]
        seconds = ((g[0] * 24 + g[1]) * 60 + g[2]) * 60 + g[3]
    elif m.group(7) is not None:  # hours:minutes:seconds
        seconds = (g[4] * 60 + g[5]) * 60 + g[6]
    else:  # minutes[:seconds]
        seconds = g[4] * 60 + g[5]
    return seconds or None


def check_options(o: SbatchOptions) -> list[str]:
    """Every problem with the options at once (empty: fine)."""
    problems = []
    for flag, value, low, high in (("--nodes", o.nodes, 1, 65535),
                                   ("--ntasks-per-node", o.ntasks_per_node, 1, MAX_SLOTS),
                                   ("--cpus-per-task", o.cpus_per_task, 1, 65535),
                                   ("--signal-seconds", o.signal_seconds, 10, 65535)):
        if value is not None and not low <= value <= high:
            problems.append(f"{flag} must be between {low} and {high}, got {value}")
    for key, (pattern, what) in FORMATS.items():
        value = getattr(o, key)
        if value is not None and not pattern.match(value):
            problems.append(f"--{key.replace('_', '-')} {value!r} is not {what}")
    if o.time is not None:
        try:
            limit = time_seconds(o.time)
        except ValueError:
            problems.append(f"--time {o.time!r} is not a Slurm time limit: use minutes, MM:SS, "
                            "HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED")
        else:
            if limit is not None and o.signal_seconds >= limit:
                problems.append(f"--signal-seconds {o.signal_seconds} is not shorter than --time "
                                f"{o.time} ({limit} s): the stop warning would come before the "
                                "job starts; lower --signal-seconds or raise --time")
    return problems


def check_run_dir(folder: Path) -> None:
    bad = [c for c in UNSAFE_IN_PATH if c in str(folder)]
    if bad:
        raise UserError(f"run directory {str(folder)!r} contains {', '.join(map(repr, bad))}, "
                        "which sbatch's --output line cannot hold: choose another --run-dir")


def directives(o: SbatchOptions, folder: RunDir, job_name: str) -> list[str]:
    """The ``#SBATCH`` options, one per line (values already checked by ``check_options``)."""
    given = {"time": o.time, "partition": o.partition, "account": o.account, "qos": o.qos,
             "gpus-per-node": o.gpus_per_node, "cpus-per-task": o.cpus_per_task, "mem": o.mem}
    return [f"--job-name={job_name}", f"--nodes={o.nodes}",
            f"--ntasks-per-node={o.ntasks_per_node}",
            *(f"--{k}={v}" for k, v in given.items() if v is not None),
            f'--output="{folder.slurm_output()}"', "--open-mode=append",
            "--requeue" if o.requeue else "--no-requeue",
            f"--signal=B:USR1@{o.signal_seconds}"]


def run_argv(recipe: Path, overrides: list[str], folder: RunDir, tasks: int,
             resume: bool) -> list[str]:
    """`hvdtrain run` as the job runs it: this interpreter, the hosts of the allocation."""
    where = ["--resume", str(folder.path)] if resume else ["--run-dir", str(folder.path)]
    return [sys.executable, "-m", "hvdtrain", "run", str(recipe), *overrides, *where, "--slurm",
            "--np", str(tasks)]


def script_text(o: SbatchOptions, folder: RunDir, recipe: Path, overrides: list[str],
                job_name: str, cwd: Path) -> str:
    """The whole batch script."""
    quote = shlex.join
    lines = [
        "#!/bin/bash",
        f"# Written by hvdtrain sbatch at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}: "
        f"{o.nodes} node(s) x {o.ntasks_per_node} task(s).",
        "# Submit it again by hand with: sbatch " + shlex.quote(str(folder.sbatch_script)),
        *(f"#SBATCH {d}" for d in directives(o, folder, job_name)),
        "",
        "cd " + shlex.quote(str(cwd)) + " || exit 1",
        "# SIGUSR1 (preemption, time limit): hvdtrain checkpoints, stops and requeues this job;",
        "# the next start finds the manifest and resumes the same run directory.",
        "if [ -e " + shlex.quote(str(folder.manifest_file)) + " ]; then",
        "  exec " + quote(run_argv(recipe, overrides, folder, o.tasks, resume=True)),
        "fi",
        "exec " + quote(run_argv(recipe, overrides, folder, o.tasks, resume=False)),
    ]
    return "\n".join(lines) + "\n"


def submit(script: Path, cwd: Path) -> str:
    """``sbatch --parsable SCRIPT``; returns the job id. Refusals keep the written script."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UserError(f"sbatch is not on PATH, so this machine cannot submit Slurm jobs; the "
                        f"batch script is written: {script} (submit it from a Slurm login node "
                        f"with: sbatch {shlex.quote(str(script))})")
    try:
        out = subprocess.run([sbatch, "--parsable", str(script)], cwd=cwd, capture_output=True,
                             text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise UserError(f"sbatch did not answer within 120 s; the batch script is {script}: "
                        "check `squeue --me` before submitting it again") from None
    if out.returncode != 0:
        said = (out.stderr or out.stdout).strip() or "(no message)"
        raise UserError(f"sbatch refused the job (exit code {out.returncode}):\n{said}\n"
                        f"The batch script is {script}: fix what sbatch names and run hvdtrain "
                        "sbatch again with a new run directory, or edit the script and submit it "
                        "by hand")
    job_id = out.stdout.strip().split(";")[0]  # --parsable: "<job id>[;<cluster>]"
    if not JOB_ID.match(job_id):
        said = repr(out.stdout.strip()[:200]) if out.stdout.strip() else "nothing"
        raise UserError(f"sbatch exited 0 but printed {said} instead of a job id, so hvdtrain "
                        f"cannot follow the job; it may have been queued: check `squeue --me` "
                        f"before submitting {script} again by hand")
    return job_id


def record(folder: RunDir, job_id: str, o: SbatchOptions, recipe: Path,
           overrides: list[str]) -> dict:
    """slurm.json: what was submitted, for `hvdtrain runs` and for people."""
    from hvdtrain.rundir import write_json_atomic

    info = {"job_id": job_id, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "recipe": str(recipe), "overrides": overrides, "options": asdict(o),
            "script": str(folder.sbatch_script), "output": str(folder.slurm_output(job_id))}
    write_json_atomic(folder.slurm_file, info)
    return info
