"""Slurm allocations: inside one (``SLURM_JOB_ID`` set, or ``--slurm``), hosts and slots come from
Slurm's environment instead of a hostfile.

``SLURM_JOB_NODELIST`` (``node[01-04,07]``, ``rack[1-2]-node[1-3]``, ``gpu[1-2],cpu3``) and
``SLURM_TASKS_PER_NODE`` (``2(x3),1``) are expanded by python-hostlist (NSC's, maintained since
2008, the same syntax ``scontrol show hostnames`` reads), not by a hand-written parser: it handles
several bracket groups, zero padding and the repeat syntax, and names what is malformed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import hostlist

from hvdtrain.errors import UserError
from hvdtrain.launcher.hosts import HostList, parse_hosts_arg

SLOTS_FROM = ("SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_CPUS_PER_NODE")


def in_allocation(env: Mapping[str, str] | None = None) -> bool:
    return bool((os.environ if env is None else env).get("SLURM_JOB_ID"))


def _slots(env: Mapping[str, str], nodes: int) -> list[int]:
    """Slots per node from the first of SLOTS_FROM that is set (one value, or one per node)."""
    for key in SLOTS_FROM:
        value = env.get(key, "").strip()
        if not value:
            continue
        try:
            counts = hostlist.parse_slurm_tasks_per_node(value)
        except hostlist.BadHostlist as exc:
            raise UserError(f"{key}={value!r} cannot be read ({exc}): expected counts like "
                            "'2(x3),1' (2 tasks on each of 3 nodes, then 1)") from None
        if len(counts) == 1:
            counts *= nodes
        if len(counts) != nodes:
            raise UserError(f"{key}={value!r} gives {len(counts)} node(s) but the allocation has "
                            f"{nodes}: is this the environment of one Slurm job?")
        return counts
    return [1] * nodes


def allocation_hosts(env: Mapping[str, str] | None = None) -> HostList:
    """Hosts and slots of the Slurm allocation this process runs in."""
    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID", "?")
    nodelist = (env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "").strip()
    if not nodelist:
        raise UserError(f"no Slurm allocation to take hosts from (SLURM_JOB_NODELIST is empty; "
                        f"SLURM_JOB_ID={job}): run inside salloc/sbatch, or give --hosts/--hostfile")
    try:
        nodes = hostlist.expand_hostlist(nodelist)
    except hostlist.BadHostlist as exc:
        raise UserError(f"SLURM_JOB_NODELIST={nodelist!r} cannot be expanded ({exc}): expected a "
                        "Slurm host list like 'node[01-04,07],gpu1'") from None
    if not nodes:
        raise UserError(f"SLURM_JOB_NODELIST={nodelist!r} names no host")
    slots = _slots(env, len(nodes))
    source = f"the Slurm allocation (job {job})"
    return parse_hosts_arg(",".join(f"{n}:{s}" for n, s in zip(nodes, slots, strict=True)), source)


def requeue(job_id: str) -> tuple[bool, str]:
    """``scontrol requeue JOB``: (done, why not). The job goes back to the queue and Slurm ends
    this instance of it."""
    import subprocess

    try:
        out = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True,
                             timeout=60)
    except FileNotFoundError:
        return False, "scontrol is not on PATH"
    except subprocess.TimeoutExpired:
        return False, "scontrol requeue did not answer within 60 s"
    if out.returncode == 0:
        return True, ""
    return False, (out.stderr or out.stdout).strip() or f"scontrol exited with {out.returncode}"
