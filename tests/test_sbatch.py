"""`hvdtrain sbatch` without a Slurm: the script it writes (exact #SBATCH lines and argv, injection
strings inert), option checks that report every problem at once, sbatch missing from PATH, and
what a queued run directory allows. The real submissions are in test_slurm_real.py."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from conftest import BIN, ROOT, cli

from hvdtrain.launcher.sbatch import SbatchOptions, record, time_seconds
from hvdtrain.rundir import RunDir

EVIL = "description=$(touch /tmp/hvdtrain-PWNED); `reboot` ' \" \\ x"


def test_dry_run_prints_the_script_and_writes_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    proc = cli("sbatch", "digits-cnn", "train.epochs=2", EVIL, "--nodes", "2",
                    "--ntasks-per-node", "4", "--time", "1-02:00:00", "--partition", "gpu",
                    "--account", "ml", "--gpus-per-node", "a100:4", "--mem", "64G",
                    "--run-dir", str(run_dir), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert not run_dir.exists()
    lines = proc.stdout.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert [x for x in lines if x.startswith("#SBATCH")] == [
        "#SBATCH --job-name=hvdtrain-digits-cnn", "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4", "#SBATCH --time=1-02:00:00", "#SBATCH --partition=gpu",
        "#SBATCH --account=ml", "#SBATCH --gpus-per-node=a100:4", "#SBATCH --mem=64G",
        f'#SBATCH --output="{run_dir}/logs/slurm-%j.out"', "#SBATCH --open-mode=append",
        "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120"]
    execs = [shlex.split(x.strip())[1:] for x in lines if x.strip().startswith("exec ")]
    recipe = str(ROOT / "recipes" / "digits-cnn.yaml")
    common = ["-m", "hvdtrain", "run", recipe, "train.epochs=2", EVIL]
    assert [argv[1:] for argv in execs] == [
        common + ["--resume", str(run_dir), "--slurm", "--np", "8"],
        common + ["--run-dir", str(run_dir), "--slurm", "--np", "8"]]
    assert {Path(argv[0]).parent for argv in execs} == {BIN}  # this installation's Python
    assert f"if [ -e {run_dir}/manifest.json ]; then" in lines
    assert f"cd {ROOT} || exit 1" in lines


def test_dry_run_json(tmp_path: Path) -> None:
    proc = cli("sbatch", "digits-cnn", "--run-dir", str(tmp_path / "r"), "--dry-run",
                    "--json", "--job-name", "exp.1")
    out = json.loads(proc.stdout)
    assert out["ok"] and out["tasks"] == 1 and out["job_name"] == "exp.1"
    assert "#SBATCH --job-name=exp.1\n" in out["script"]


def test_every_bad_option_is_reported_at_once(tmp_path: Path) -> None:
    proc = cli("sbatch", "digits-cnn", "--nodes", "0", "--time", "5x", "--mem", "4Q",
                    "--partition", "a b", "--gpus-per-node", "two", "--job-name", 'x"y',
                    "--run-dir", str(tmp_path / "r"))
    assert proc.returncode == 2 and not (tmp_path / "r").exists()
    err = " ".join(proc.stderr.split())
    for text in ("the Slurm options cannot be submitted; nothing written:",
                 "--nodes must be between 1 and 65535, got 0",
                 "--time '5x' is not a Slurm time limit: use minutes, MM:SS, HH:MM:SS",
                 "--mem '4Q' is not memory per node like 16G or 8000 (MB)",
                 "--partition 'a b' is not a partition name",
                 "--gpus-per-node 'two' is not a count, optionally with a type: 2 or a100:2",
                 "--job-name 'x\"y' is not a job name of letters, digits"):
        assert text in err, proc.stderr


def test_signal_must_come_before_the_time_limit(tmp_path: Path) -> None:
    proc = cli("sbatch", "digits-cnn", "--time", "2", "--signal-seconds", "300",
                    "--run-dir", str(tmp_path / "r"), "--dry-run")
    assert proc.returncode == 2
    assert "--signal-seconds 300 is not shorter than --time 2 (120 s)" in " ".join(proc.stderr.split())


@pytest.mark.parametrize(("value", "seconds"), [
    ("30", 1800), ("30:15", 1815), ("2:00:00", 7200), ("1-0", 86400), ("1-2:30", 95400),
    ("1-02:30:05", 95405), ("UNLIMITED", None)])
def test_slurm_time_formats(value: str, seconds: int | None) -> None:
    assert time_seconds(value) == seconds


def test_run_dir_sbatch_cannot_hold_is_refused(tmp_path: Path) -> None:
    proc = cli("sbatch", "digits-cnn", "--run-dir", str(tmp_path / "100%"), "--dry-run")
    assert proc.returncode == 2
    assert "contains '%', which sbatch's --output line cannot hold" in proc.stderr


def test_the_allocation_shape_is_planned_before_anything_is_written(tmp_path: Path) -> None:
    proc = cli("sbatch", "digits-cnn", "elastic={min_np: 2, max_np: 4}", "--nodes", "1",
                    "--ntasks-per-node", "2", "--run-dir", str(tmp_path / "r"))
    assert proc.returncode == 2 and not (tmp_path / "r").exists()
    assert "elastic training needs at least 2 hosts" in proc.stderr


def test_sbatch_missing_from_path_keeps_the_script(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    proc = cli("sbatch", "digits-cnn", "--run-dir", str(run_dir), env={"PATH": str(BIN)})
    assert proc.returncode == 2
    err = " ".join(proc.stderr.split())
    assert "sbatch is not on PATH, so this machine cannot submit Slurm jobs; the batch script " \
           f"is written: {run_dir}/job.sbatch" in err
    assert (run_dir / "job.sbatch").stat().st_mode & 0o111
    assert RunDir(run_dir).is_queued()


def test_a_queued_run_dir_refuses_another_recipe(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    cli("sbatch", "digits-cnn", "--run-dir", str(run_dir), env={"PATH": str(BIN)})
    proc = cli("run", "digits-cnn", "train.epochs=3", "--run-dir", str(run_dir))
    assert proc.returncode == 2
    assert "the recipe differs from" in proc.stderr and "hvdtrain sbatch" in proc.stderr
    assert not RunDir(run_dir).manifest_file.exists()


def test_runs_lists_a_queued_job(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "q"
    cli("sbatch", "digits-cnn", "--run-dir", str(run_dir), "--nodes", "2",
             "--ntasks-per-node", "3", env={"PATH": str(BIN)})
    record(RunDir(run_dir), "77", SbatchOptions(nodes=2, ntasks_per_node=3),
           ROOT / "recipes" / "digits-cnn.yaml", [])
    rows = json.loads(cli("runs", str(tmp_path / "runs"), "--json").stdout)
    assert [(r["name"], r["status"], r["np"], r["recipe"]) for r in rows] == [
        ("q", "queued (Slurm job 77)", 6, "digits-cnn")]
