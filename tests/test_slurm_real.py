"""`hvdtrain sbatch`, `hosts --slurm` and preemption against a real Slurm (slurm-wlm 22.05 +
munge, this machine as the only node: tests/slurm_cluster.py). Skipped, with the reason, only where
Slurm is not installed or we are not root (make test-hosts-deps installs it from apt as root)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import slurm_cluster
from conftest import BIN, ROOT

from hvdtrain.rundir import RunDir

pytestmark = pytest.mark.horovod

REASON = slurm_cluster.unavailable()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if REASON:
        pytest.skip(f"real Slurm tests: {REASON}")
    cluster = slurm_cluster.SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.close()


def hvd(slurm, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "hvdtrain"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**slurm.env, "COLUMNS": "200"})


def submit(slurm, run_dir: Path, *args: str) -> str:
    proc = hvd(slurm, "sbatch", "digits-cnn", *args, "--nodes", "1", "--ntasks-per-node", "2",
               "--run-dir", str(run_dir), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["run_dir"] == str(run_dir) and out["script"] == str(run_dir / "job.sbatch")
    assert out["follow"][0] == f"squeue -j {out['job_id']}"
    return out["job_id"]


def wait_for(run_dir: Path, event: str, epoch: int, timeout: float = 120) -> None:
    """Until metrics.jsonl has an ``event`` record (step, epoch) of ``epoch`` or later."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records, _ = RunDir(run_dir).read_metrics()
        if any(r.get("event") == event and r.get("epoch", 0) >= epoch for r in records):
            return
        time.sleep(0.1)
    raise AssertionError(f"no {event} of epoch {epoch} in {run_dir}/metrics.jsonl after "
                         f"{timeout:.0f} s")


def epochs_and_steps(run_dir: Path) -> tuple[list[int], list[int]]:
    records, _ = RunDir(run_dir).read_metrics()
    return ([r["epoch"] for r in records if r["event"] == "epoch"],
            [r["global_step"] for r in records if r["event"] == "step"])


def test_hosts_inside_an_allocation_match_scontrol(slurm) -> None:
    ours = slurm.run("salloc", "--nodes=1", "--ntasks-per-node=2", str(BIN / "hvdtrain"), "hosts",
                     "--slurm", "--json")
    ref = slurm.run("salloc", "--nodes=1", "--ntasks-per-node=2", "scontrol", "show", "hostnames")
    hosts = json.loads(ours.stdout)
    assert [h["host"] for h in hosts["hosts"]] == ref.stdout.split() == [slurm.host]
    assert [h["slots"] for h in hosts["hosts"]] == [2]
    assert hosts["source"].startswith("the Slurm allocation (job ")


def test_sbatch_digits_completes_above_97_percent(slurm, tmp_path: Path) -> None:
    run_dir = tmp_path / "digits"
    pwned = tmp_path / "PWNED"
    job = submit(slurm, run_dir, f"description=$(touch {pwned}); `touch {pwned}`")
    assert slurm.wait_state(job, ("COMPLETED", "FAILED", "CANCELLED"), 240) == "COMPLETED", \
        (run_dir / f"logs/slurm-{job}.out").read_text()
    manifest = RunDir(run_dir).read_manifest()
    assert manifest["status"] == "finished" and manifest["final_eval_acc"] >= 0.97
    assert manifest["hosts"] == [{"host": slurm.host, "slots": 2}] and manifest["np"] == 2
    assert json.loads((run_dir / "slurm.json").read_text())["job_id"] == job
    assert "finished: eval accuracy" in (run_dir / f"logs/slurm-{job}.out").read_text()
    # the injection strings were one argv word each, never run by the batch shell
    assert not pwned.exists()
    assert RunDir(run_dir).read_recipe().description.startswith("$(touch ")


def test_usr1_checkpoints_requeues_and_resumes_without_repeating_an_epoch(slurm,
                                                                          tmp_path: Path) -> None:
    run_dir = tmp_path / "preempted"
    # wider model, short log interval: epochs of seconds, so the signal lands mid-epoch
    job = submit(slurm, run_dir, "train.epochs=10", "model.width=64", "train.log_interval=2")
    wait_for(run_dir, "step", 2)
    slurm.run("scancel", "--signal=USR1", "--batch", job)
    deadline = time.monotonic() + 240
    while slurm.job_state(job) != ("COMPLETED", 1) and time.monotonic() < deadline:
        time.sleep(0.5)
    log = (run_dir / f"logs/slurm-{job}.out").read_text()
    assert slurm.job_state(job) == ("COMPLETED", 1), log
    manifest = RunDir(run_dir).read_manifest()
    first = manifest["previous"]
    assert first["status"] == "stopped" and first["requeued"] is True
    assert manifest["status"] == "finished" and manifest["final_eval_acc"] >= 0.97
    epochs, steps = epochs_and_steps(run_dir)
    assert epochs == list(range(1, 11))  # none twice, none lost
    assert steps == sorted(set(steps))  # no step logged twice
    stop = first["stopped"]
    assert f"requeued Slurm job {job}" in log and "resumed from" in log
    assert stop["step"] > 0, "the stop was meant to land mid-epoch"


def test_requeue_refused_keeps_the_checkpoint_and_says_how_to_resume(slurm,
                                                                     tmp_path: Path) -> None:
    run_dir = tmp_path / "no-requeue"
    # the wider model's epochs take seconds: the signal lands before the 4 epochs are over (with
    # digits' 0.2 s epochs the run sometimes finished first)
    job = submit(slurm, run_dir, "train.epochs=4", "model.width=64", "--no-requeue")
    wait_for(run_dir, "epoch", 1)
    slurm.run("scancel", "--signal=USR1", "--batch", job)
    slurm.wait_state(job, ("COMPLETED", "FAILED", "CANCELLED"), 120)
    manifest = RunDir(run_dir).read_manifest()
    assert manifest["status"] == "stopped" and manifest["requeued"] is False
    failure = "\n".join(manifest["failure"])
    assert "could not requeue Slurm job" in failure
    assert "Requested operation is presently disabled" in failure
    assert f"resume by hand with: sbatch {run_dir / 'job.sbatch'}" in failure
    assert RunDir(run_dir).list_checkpoints()
    # ... and the hint works: the same script resumes the run and finishes it
    again = slurm.run("sbatch", "--parsable", str(run_dir / "job.sbatch")).stdout.strip()
    assert slurm.wait_state(again, ("COMPLETED", "FAILED", "CANCELLED"), 180) == "COMPLETED"
    epochs, _ = epochs_and_steps(run_dir)
    assert epochs == [1, 2, 3, 4]


def test_sbatch_rejection_shows_slurms_reason(slurm, tmp_path: Path) -> None:
    run_dir = tmp_path / "rejected"
    proc = hvd(slurm, "sbatch", "digits-cnn", "--nodes", "1", "--partition", "nosuch",
               "--run-dir", str(run_dir))
    assert proc.returncode == 2
    assert "sbatch refused the job (exit code 1):" in proc.stderr
    assert "invalid partition specified: nosuch" in proc.stderr
    assert (run_dir / "job.sbatch").exists()
