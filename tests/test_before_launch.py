"""What `run` and `bench` refuse before anything starts (in process: no horovodrun is ever
reached), and the pieces of those commands that need no launch. Moved out of the horovod-marked
modules so `make test-fast` runs them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest



def test_existing_run_dir_is_not_overwritten(tmp_path: Path, in_cli) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("precious")
    proc = in_cli("run", "digits-cnn", "--run-dir", str(run_dir))
    assert proc.returncode == 2
    assert proc.stderr == (f"error: run directory {run_dir} already exists and is not empty: "
                           "choose another --run-dir, or continue it with --resume\n")
    assert (run_dir / "keep.txt").read_text() == "precious"


def test_adasum_over_gloo_is_refused_before_launch(tmp_path: Path, in_cli) -> None:
    """Horovod implements Adasum only over MPI: with Gloo every rank died with 'No Adasum operation
    enabled' at its first step. Refused before horovodrun starts; nothing is created."""
    run_dir = tmp_path / "run"
    proc = in_cli("run", "digits-cnn", "horovod.op=adasum", "--np", "2", "--run-dir",
                   str(run_dir), timeout=60)
    assert proc.returncode == 2
    assert ("override 'horovod.op=adasum': horovod.op: adasum needs launch.controller: mpi "
            "(Horovod implements Adasum only over MPI; with Gloo every rank fails with 'No Adasum "
            "operation enabled'): use op: average, or controller: mpi with an MPI-enabled Horovod "
            "build") in proc.stderr
    assert not run_dir.exists()


def test_a_failed_round_fails_its_configuration() -> None:
    from hvdtrain.launcher.bench import combine

    ok = {"kind": "hvdtrain", "np": 2, "compression": "none", "images_per_s": 100.0,
          "images_per_s_per_rank": 50.0, "step_ms": 640.0, "allreduce_wait_share": 0.1,
          "seconds": 10.0}
    bad = {"kind": "hvdtrain", "np": 2, "compression": "none", "error": "failed: see x/output.log",
           "seconds": 3.0}
    assert combine([ok, bad]) == {**bad, "seconds": 13.0}
    both = combine([ok, {**ok, "images_per_s": 300.0, "allreduce_wait_share": None}])
    assert (both["images_per_s"], both["allreduce_wait_share"], both["spread"]) == (200.0, 0.1, 1.0)


@pytest.mark.parametrize(("args", "message"), [
    (["--np", "1,x"], "--np '1,x': 'x' is not a number of processes >= 1"),
    (["--np", "0"], "--np '0': '0' is not a number of processes >= 1"),
    (["--np", "2,2"], "--np '2,2' lists 2 twice"),
    (["--compression", "fp8"], "--compression 'fp8': 'fp8' is not fp16, none or powersgd"),
    (["--reference", "torch"], "--reference 'torch': the only reference is ddp"),
    (["--steps", "0"], "--steps must be between 1 and 100000, got 0"),
    (["--rounds", "0"], "--rounds must be between 1 and 100, got 0"),
    (["--np", "3", "--hosts", "localhost:2"], "--np 3 needs more slots than --hosts has (2)"),
    (["--np", "1000"], f"--np 1000 is more processes than this machine's {os.cpu_count()} cores: "
                       "ranks would share cores"),
    (["--np", "1" + "0" * 20], f"--np '1{'0' * 20}': '1{'0' * 20}' is not a number of processes"),
])
def test_bad_lists_are_refused_before_anything_runs(args: list[str], message: str,
                                                    tmp_path: Path, in_cli) -> None:
    proc = in_cli("bench", "digits-cnn", *args, "--run-dir", str(tmp_path / "b"))
    assert proc.returncode == 2
    assert message in " ".join(proc.stderr.split())
    assert not (tmp_path / "b").exists()


def test_installed_horovod_carries_this_checkouts_patch() -> None:
    """The fp16 reduction below is hvdtrain's: the wheel was built from the current patch."""
    from hvdtrain.machine import horovod_build_info
    from hvdtrain.setup.horovod_build import detect_config

    assert horovod_build_info()["key"] == detect_config().key


def test_missing_mnist_or_cifar_files_are_refused_before_launch(tmp_path: Path, in_cli) -> None:
    """They used to be found only by every worker after launch (the error printed 3 times, a run
    dir left behind) while the plan said "50000 train"."""
    from datafiles import write_mnist

    run_dir = tmp_path / "run"
    proc = in_cli("run", "cifar10-resnet", f"data.data_dir={tmp_path}", "--run-dir", str(run_dir))
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (
        f"error: CIFAR-10 file missing: {tmp_path}/data_batch_1 (expected in {tmp_path}: "
        "data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch)\n")
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    proc = in_cli("plan", "mnist-cnn", f"data.data_dir={tmp_path}")
    assert proc.returncode == 2 and proc.stderr.startswith(
        f"error: MNIST file missing: {tmp_path}/t10k-labels-idx1-ubyte[.gz] (expected in ")
    assert not run_dir.exists()
    # other hosts read their own copy: this machine lacking it is a warning in the plan
    proc = in_cli("plan", "mnist-cnn", f"data.data_dir={tmp_path}", "--hosts",
                  "10.0.0.1:1,10.0.0.2:1", "--np", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["warnings"][-1].startswith(
        f"on this machine: MNIST file missing: {tmp_path}/t10k-labels-idx1-ubyte[.gz] ")
