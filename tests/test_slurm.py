"""Inside a Slurm allocation: hosts and slots from SLURM_JOB_NODELIST / SLURM_TASKS_PER_NODE."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from hvdtrain.errors import UserError
from hvdtrain.launcher.slurm import allocation_hosts

JOB = {"SLURM_JOB_ID": "42"}


def hosts_of(**env: str) -> list[tuple[str, int]]:
    return [(h.name, h.slots) for h in allocation_hosts({**JOB, **env}).hosts]


@pytest.mark.parametrize(("nodelist", "expected"), [
    ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
    ("rack[1-2]-node[1-3]", ["rack1-node1", "rack1-node2", "rack1-node3", "rack2-node1",
                             "rack2-node2", "rack2-node3"]),
    ("gpu[1-2],cpu3", ["gpu1", "gpu2", "cpu3"]),
    ("n[008-011]", ["n008", "n009", "n010", "n011"]),
    ("single", ["single"]),
])
def test_node_lists_expand_fully(nodelist: str, expected: list[str], tmp_path) -> None:
    assert [n for n, _ in hosts_of(SLURM_JOB_NODELIST=nodelist)] == expected
    if shutil.which("scontrol"):  # the reference, where Slurm is installed
        conf = tmp_path / "slurm.conf"  # scontrol reads a config even to expand a host list
        conf.write_text("ClusterName=x\nSlurmctldHost=localhost\nNodeName=localhost\n")
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, check=True, env={**os.environ, "SLURM_CONF": str(conf)})
        assert out.stdout.split() == expected


def test_slots_per_node_come_from_the_first_variable_set() -> None:
    nodes = "n[1-5]"
    assert hosts_of(SLURM_JOB_NODELIST=nodes, SLURM_TASKS_PER_NODE="2(x3),1,4") == [
        ("n1", 2), ("n2", 2), ("n3", 2), ("n4", 1), ("n5", 4)]
    assert [s for _, s in hosts_of(SLURM_JOB_NODELIST=nodes, SLURM_NTASKS_PER_NODE="3")] == [3] * 5
    assert [s for _, s in hosts_of(SLURM_JOB_NODELIST=nodes,
                                   SLURM_JOB_CPUS_PER_NODE="8(x5)")] == [8] * 5
    assert [s for _, s in hosts_of(SLURM_JOB_NODELIST=nodes)] == [1] * 5


@pytest.mark.parametrize(("env", "message"), [
    ({"SLURM_JOB_NODELIST": "node[5-3]"},
     "SLURM_JOB_NODELIST='node[5-3]' cannot be expanded (start > stop): expected a Slurm host "
     "list like 'node[01-04,07],gpu1'"),
    ({"SLURM_JOB_NODELIST": "node[1-2"},
     "SLURM_JOB_NODELIST='node[1-2' cannot be expanded (unbalanced brackets): expected a Slurm "
     "host list like 'node[01-04,07],gpu1'"),
    ({"SLURM_JOB_NODELIST": ""},
     "no Slurm allocation to take hosts from (SLURM_JOB_NODELIST is empty; SLURM_JOB_ID=42): run "
     "inside salloc/sbatch, or give --hosts/--hostfile"),
    ({"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_TASKS_PER_NODE": "2(x"},
     "SLURM_TASKS_PER_NODE='2(x' cannot be read (bad task list syntax): expected counts like "
     "'2(x3),1' (2 tasks on each of 3 nodes, then 1)"),
    ({"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_TASKS_PER_NODE": "2(x3)"},
     "SLURM_TASKS_PER_NODE='2(x3)' gives 3 node(s) but the allocation has 2: is this the "
     "environment of one Slurm job?"),
])
def test_malformed_values_are_quoted(env: dict, message: str) -> None:
    with pytest.raises(UserError) as info:
        allocation_hosts({**JOB, **env})
    assert str(info.value) == message


def test_run_inside_an_allocation_plans_its_hosts(in_cli) -> None:
    env = {**JOB, "SLURM_JOB_NODELIST": "localhost", "SLURM_TASKS_PER_NODE": "2"}
    plan = json.loads(in_cli("plan", "digits-cnn", "--json", env=env).stdout)
    assert plan["host_source"] == "the Slurm allocation (job 42)"
    assert plan["hosts"] == [{"host": "localhost", "slots": 2}] and plan["np"] == 2
    proc = in_cli("run", "digits-cnn", "--np", "3", "--dry-run", env=env)
    assert (proc.returncode, proc.stderr) == (2, "error: np=3 needs more slots than the Slurm "
                                                 "allocation (job 42) has (2): lower --np or add "
                                                 "slots/hosts\n")
    explicit = json.loads(in_cli("plan", "digits-cnn", "--hosts", "localhost:1", "--np", "1",
                                  "--json", env=env).stdout)
    assert explicit["host_source"] == "--hosts"  # an explicit host list wins
    listed = json.loads(in_cli("hosts", "--slurm", "--json", env=env).stdout)
    assert listed["hosts"] == [{"host": "localhost", "slots": 2, "line": 1}]
    proc = in_cli("hosts", "--slurm")
    assert proc.returncode == 2 and proc.stderr.startswith("error: no Slurm allocation to take "
                                                           "hosts from")
