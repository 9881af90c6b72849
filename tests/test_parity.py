"""The normal and the elastic mode run one training core: the same recipe through both, with the
keys where they used to drift apart, gives the same events, LRs, step counts, checkpoints and even
the same weights (same data order, seeds and arithmetic). Real horovodrun -np 2 runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hvdtrain.recipe import lr_config

from hvdtrain.recipe_files import load_recipe
from hvdtrain.schedule import lr_at

pytestmark = pytest.mark.horovod

KEYS = ["train.epochs=3", "horovod.backward_passes_per_step=2", "train.max_steps_per_epoch=7",
        "train.eval_every=2", "train.checkpoint_every=2", "train.on_nonfinite=skip",
        "train.log_interval=3"]
FAULT = 'launch.env={HVDTRAIN_FAULT: \'{"action": "inf_grad", "rank": 1, "epoch": 2, "step": 3}\'}'
VARYING = ("images_per_s", "seconds", "data_wait_share", "hosts", "argv", "run_dir",
           "path")  # timing and places


def events_of(proc, run_dir: Path) -> list[dict]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = []
    for e in map(json.loads, proc.stdout.splitlines()):
        out.append({k: v for k, v in e.items() if k not in VARYING})
    return out


@pytest.fixture(scope="module")
def both_modes(tmp_path_factory) -> tuple[list[dict], list[dict], Path, Path]:
    from conftest import hvdtrain

    tmp = tmp_path_factory.mktemp("parity")
    script = tmp / "discover.sh"
    script.write_text("#!/bin/sh\necho localhost:1\necho 127.0.0.1:1\n")
    script.chmod(0o755)
    elastic = f"elastic={{min_np: 1, max_np: 2, commit_every: 5, host_discovery_script: {script}}}"
    fixed_dir, elastic_dir = tmp / "fixed", tmp / "elastic"
    fixed = hvdtrain("run", "digits-cnn", *KEYS, FAULT, "--np", "2", "--run-dir", str(fixed_dir),
                     "--json", timeout=300)
    elastic_run = hvdtrain("run", "digits-cnn", *KEYS, FAULT, elastic, "--np", "2", "--run-dir",
                           str(elastic_dir), "--json", timeout=300)
    return (events_of(fixed, fixed_dir), events_of(elastic_run, elastic_dir), fixed_dir,
            elastic_dir)


def test_both_modes_emit_identical_events(both_modes) -> None:
    fixed, elastic, _, _ = both_modes
    assert [e["event"] for e in fixed] == [e["event"] for e in elastic]
    assert fixed == elastic  # losses, LRs, steps, evaluations, hashes: bit for bit


def test_lr_steps_eval_and_checkpoints_follow_the_recipe(both_modes) -> None:
    fixed, _, fixed_dir, elastic_dir = both_modes
    recipe = load_recipe("digits-cnn", KEYS).recipe
    steps = [e for e in fixed if e["event"] == "step"]
    assert [(e["epoch"], e["step"]) for e in steps] == [(ep, s) for ep in (1, 2, 3)
                                                       for s in (3, 6, 7)]
    for e in steps:  # 7 steps per epoch; k=2 scales the peak (0.1 x 2 workers x 2 passes)
        assert e["lr"] == pytest.approx(lr_at(e["global_step"] - 1, 7, 2, lr_config(recipe)))
    assert steps[2]["lr"] == pytest.approx(0.4)
    epochs = [e for e in fixed if e["event"] == "epoch"]
    assert [e["global_step"] for e in epochs] == [7, 14, 21]
    assert [e["eval_acc"] is not None for e in epochs] == [False, True, True]  # eval_every=2, last
    assert [e["epoch"] for e in fixed if e["event"] == "checkpoint"] == [2, 3]
    for folder in (fixed_dir, elastic_dir):
        assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == [
            "best.pt", "epoch-0002.pt", "epoch-0003.pt"]  # best.pt: the best evaluated epoch
    warnings = [e["message"] for e in fixed if e["event"] == "warning"]
    assert warnings == ["non-finite gradients at epoch 2 step 3: step skipped"]
    done = next(e for e in fixed if e["event"] == "done")
    assert done["steps_per_rank"] == [21, 21] and done["replicas_identical"] is True
