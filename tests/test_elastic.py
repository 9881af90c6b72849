"""Elastic runs that survive losing a worker: real horovodrun with localhost and 127.0.0.1 as the
two hosts of an elastic job (horovod needs two host names), the discovery script reading a file."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, ROOT

pytestmark = pytest.mark.horovod

BOTH = "localhost:1\n127.0.0.1:1\n"


def fault_env(**fault) -> str:
    return "launch.env=" + json.dumps({"HVDTRAIN_FAULT": json.dumps(fault)})


@pytest.fixture
def discovery(tmp_path: Path) -> Path:
    """A discovery script printing the hosts listed in ``hosts.txt`` (which tests may rewrite)."""
    hosts = tmp_path / "hosts.txt"
    hosts.write_text(BOTH)
    script = tmp_path / "discover.sh"
    script.write_text(f"#!/bin/sh\ncat {hosts}\n")
    script.chmod(0o755)
    return script


def elastic(script: Path, **extra) -> str:
    items = {"min_np": 1, "max_np": 2, "commit_every": 5, "host_discovery_script": str(script),
             **extra}
    return "elastic={" + ", ".join(f"{k}: {v}" for k, v in items.items()) + "}"


def jsonl(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines()]


@pytest.mark.parametrize(("fault", "compression"), [
    (dict(action="kill", rank=1, epoch=2, step=7), "fp16"),
    (dict(action="raise", rank=1, epoch=2), "fp16"),
    # PowerSGD's state starts afresh on the survivor (its factors were averaged over two ranks)
    (dict(action="kill", rank=1, epoch=2, step=7), "powersgd")],
    ids=["killed", "raises", "killed-powersgd"])
def test_losing_a_worker_the_survivor_finishes(run_cli, discovery, tmp_path: Path,
                                               fault, compression) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli("run", "digits-cnn", "train.epochs=6", elastic(discovery), "--np", "2",
                   f"horovod.compression={compression}", fault_env(**fault), "--run-dir",
                   str(run_dir), "--json", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    evs = jsonl(proc.stdout)
    start = next(e for e in evs if e["event"] == "start")
    reset = next(e for e in evs if e["event"] == "reset")
    assert (reset["old_size"], reset["new_size"], reset["number"]) == (2, 1, 1)
    assert reset["left"] == [start["hosts"][1]] and reset["joined"] == []  # rank 1's host
    assert reset["epoch"] == 2 and reset["step"] == (5 if fault["action"] == "kill" else 0)
    done = next(e for e in evs if e["event"] == "done")
    assert done["world_size"] == 1 and done["resets"] == 1 and done["eval_acc"] >= 0.95
    after = [e for e in evs if e["event"] == "step" and e["global_step"] > reset["global_step"]]
    assert after[0]["lr"] <= 0.1 + 1e-12  # the peak LR follows the new size: 0.1 x 1 worker
    epochs = [e["epoch"] for e in evs if e["event"] == "epoch"]
    assert epochs == [1, 2, 3, 4, 5, 6]  # nothing lost, nothing repeated
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "finished" and len(manifest["resets"]) == 1
    assert manifest["resets"][0]["new_size"] == 1
    metrics = jsonl((run_dir / "metrics.jsonl").read_text())
    assert [m["event"] for m in metrics].count("reset") == 1


def test_the_live_view_says_what_happened(run_cli, discovery, tmp_path: Path) -> None:
    proc = run_cli("run", "digits-cnn", "train.epochs=3", elastic(discovery), "--np", "2",
                   fault_env(action="kill", rank=1, epoch=2, step=7), "--run-dir",
                   str(tmp_path / "run"), timeout=300)
    assert proc.returncode == 0, proc.stdout
    assert re.search(r"^elastic reset #1: world size 2 -> 1 \(left: (localhost|127\.0\.0\.1)\), "
                     r"continuing from the last commit at epoch 2 step 5 \(global step 27\); the "
                     r"LR follows the new size$", proc.stdout, re.M), proc.stdout


def test_a_host_removed_then_listed_again_scales_down_and_up(discovery, tmp_path: Path) -> None:
    hosts, run_dir = discovery.parent / "hosts.txt", tmp_path / "run"
    proc = subprocess.Popen(
        [str(BIN / "hvdtrain"), "run", "digits-cnn", "train.epochs=40", "train.log_interval=1",
         elastic(discovery, commit_every=1), "--np", "2", "--run-dir", str(run_dir), "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    resets: list[dict] = []
    deadline = time.monotonic() + 240
    assert proc.stdout is not None
    for line in proc.stdout:
        ev = json.loads(line)
        if ev["event"] == "epoch" and ev["epoch"] == 2 and not resets:
            hosts.write_text("127.0.0.1:1\n")  # localhost leaves
        if ev["event"] == "reset":
            resets.append(ev)
            if len(resets) == 1:
                hosts.write_text(BOTH)  # and comes back
        assert time.monotonic() < deadline, "no scale-down and up in time"
    assert proc.wait(timeout=60) == 0
    assert [(r["old_size"], r["new_size"]) for r in resets[:2]] == [(2, 1), (1, 2)]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "finished" and len(manifest["param_hashes"]) == 2


def test_more_failures_than_the_reset_limit_stop_with_the_limit_named(run_cli, discovery,
                                                                      tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli("run", "digits-cnn", "train.epochs=3", elastic(discovery, reset_limit=0),
                   "--np", "2", fault_env(action="kill", rank=1, epoch=2, step=7), "--run-dir",
                   str(run_dir), timeout=300)
    assert proc.returncode != 0
    assert ("Horovod stopped the elastic job: it needed more than elastic.reset_limit=0 resets; "
            "raise elastic.reset_limit, or fix what keeps failing, then resume from the last "
            "checkpoint") in proc.stdout
    assert f"last checkpoint: {run_dir}/checkpoints/epoch-0001.pt (epoch 1 complete)" in proc.stdout
    assert f"resume with: hvdtrain run --resume {run_dir}" in proc.stdout
