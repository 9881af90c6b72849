"""SIGUSR1 to `hvdtrain run` (what Slurm sends before preemption or the time limit): the workers
stop together at the next log interval, rank 0 writes a mid-epoch checkpoint that knows where in
the epoch's data order it stopped, and `--resume` continues at the next step, so the stopped and
resumed run ends with exactly the weights of a run that was never stopped. Real horovodrun -np 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hvdtrain.manifest import STOPPED_EXIT
from hvdtrain.rundir import RunDir, checkpoint_position

pytestmark = pytest.mark.horovod

KEYS = ["train.epochs=3", "train.log_interval=5"]
USR1 = ('launch.env={HVDTRAIN_FAULT: \'{"action": "usr1_launcher", "rank": 0, "epoch": 2, '
        '"step": 1}\'}')


def events(proc) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines()]


# PowerSGD (issue 28): its Q and every rank's error buffers go into the mid-epoch checkpoint, so
# a stopped run resumes bit-identically too (its 2-step warmup ends before the stop).
@pytest.fixture(scope="module", params=[[], ["horovod.compression=powersgd",
                                             "horovod.powersgd.warmup_steps=2"]],
                ids=["fp16", "powersgd"])
def stopped_and_whole(tmp_path_factory, request):
    from conftest import hvdtrain

    tmp = tmp_path_factory.mktemp("stop")
    keys = [*KEYS, *request.param]
    whole = hvdtrain("run", "digits-cnn", *keys, "--np", "2", "--run-dir", str(tmp / "whole"),
                     "--json", timeout=300)
    stopped = hvdtrain("run", "digits-cnn", *keys, USR1, "--np", "2", "--run-dir",
                       str(tmp / "stopped"), "--json", timeout=300)
    resumed = hvdtrain("run", str(tmp / "stopped" / "recipe.yaml"), "--resume",
                       str(tmp / "stopped"), "--json", timeout=300)
    return whole, stopped, resumed, tmp / "stopped"


def test_usr1_stops_mid_epoch_with_a_checkpoint(stopped_and_whole) -> None:
    _, stopped, _, folder = stopped_and_whole
    assert stopped.returncode == STOPPED_EXIT == 138, stopped.stdout + stopped.stderr
    evs = events(stopped)
    stop = next(e for e in evs if e["event"] == "stopped")
    # asked for before step 1 of epoch 2; every rank stops at the next log interval (step 5)
    assert (stop["epoch"], stop["step"]) == (1, 5)
    assert checkpoint_position(Path(stop["path"])) == (1, 5)
    assert Path(stop["path"]).name == "epoch-0001-step-000005.pt"
    assert [e["epoch"] for e in evs if e["event"] == "epoch"] == [1]
    assert not [e for e in evs if e["event"] == "done"]
    first = RunDir(folder).read_manifest()["previous"]  # (the resume wrote the manifest since)
    assert first["status"] == "stopped" and first["exit_status"] == 138
    assert first["stopped"]["step"] == 5
    exit_event = evs[-1]
    assert exit_event["event"] == "exit" and exit_event["code"] == 138
    assert any(f"--resume {folder}" in line for line in exit_event["failure"])


def test_resume_continues_at_the_next_step_and_matches_an_unstopped_run(stopped_and_whole) -> None:
    whole, _, resumed, folder = stopped_and_whole
    assert whole.returncode == 0 and resumed.returncode == 0, resumed.stdout + resumed.stderr
    evs = events(resumed)
    start = next(e for e in evs if e["event"] == "start")
    assert (start["start_epoch"], start["start_step"]) == (1, 5)
    first_step = next(e for e in evs if e["event"] == "step")
    assert (first_step["epoch"], first_step["step"]) == (2, 10)
    records, _ = RunDir(folder).read_metrics()
    steps = [r["global_step"] for r in records if r["event"] == "step"]
    assert steps == sorted(set(steps))  # no step logged twice across the stop
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == [1, 2, 3]  # none ran twice
    done = next(e for e in evs if e["event"] == "done")
    whole_done = next(e for e in events(whole) if e["event"] == "done")
    # same data order, LRs and optimizer state: the very same weights as the run never stopped
    assert done["param_hashes"] == whole_done["param_hashes"]
    assert done["steps_per_rank"] == whole_done["steps_per_rank"]
