"""`hvdtrain sbatch` without a Slurm: the script it writes (exact #SBATCH lines and argv, injection
strings inert), option checks that report every problem at once, sbatch missing from PATH, and
what a queued run directory allows. The real submissions are in test_slurm_real.py."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from conftest import BIN, ROOT, cli

from hvdtrain.errors import UserError
from hvdtrain.launcher.sbatch import SbatchOptions, check_options, record, submit, time_seconds
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
                 "--mem '4Q' is not memory per node like 16G, 32GB or 8000 (MB)",
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
    ("1-02:30:05", 95405), ("1-", 86400), ("UNLIMITED", None), ("infinite", None), ("-1", None),
    ("0", None), ("0:00:00", None)])
def test_slurm_time_formats(value: str, seconds: int | None) -> None:
    """What sbatch 22.05 accepts (its time_str2secs): "0" and INFINITE mean no limit."""
    assert time_seconds(value) == seconds


@pytest.mark.parametrize("value", ["5x", "-5", "1-:30", "1:2:3:4", "1-2-3", "", "1:", "1h"])
def test_slurm_time_formats_sbatch_refuses(value: str) -> None:
    with pytest.raises(ValueError):
        time_seconds(value)


def test_sbatch_accepts_what_slurm_accepts_and_bounds_the_tasks() -> None:
    ok = [SbatchOptions(nodes=1, ntasks_per_node=1, mem=m, time=t)
          for m, t in (("32g", "infinite"), ("32GB", "0"), ("8000", "1-"), ("4tb", "INFINITE"))]
    assert [check_options(o) for o in ok] == [[]] * 4
    huge = SbatchOptions(nodes=65535, ntasks_per_node=65535, mem="4QB")
    assert check_options(huge) == [
        "--ntasks-per-node must be between 1 and 4096, got 65535",
        "--mem '4QB' is not memory per node like 16G, 32GB or 8000 (MB)"]


def test_many_problems_are_counted_not_all_printed() -> None:
    err = UserError("bad:", [f"problem {i}" for i in range(65535)])
    lines = err.render().splitlines()
    assert len(lines) == 22 and lines[-1] == "  ... and 65515 more like these"
    assert len(err.lines()) == 65536  # --json keeps every one


def test_sbatch_printing_no_job_id_is_not_recorded_as_one(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "sbatch"  # (a real sbatch that exits 0 always prints the id)
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    script = tmp_path / "job.sbatch"
    with pytest.raises(UserError) as exc:
        submit(script, tmp_path)
    assert str(exc.value) == (
        "sbatch exited 0 but printed nothing instead of a job id, so hvdtrain cannot follow "
        f"the job; it may have been queued: check `squeue --me` before submitting {script} again "
        "by hand")


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
