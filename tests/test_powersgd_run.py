"""PowerSGD in real `hvdtrain run --np 2` training (issue 28): the same held-out accuracy as
compression none within one point at the same epochs, on digits and on a generated image folder
(tests/shapes.py), with replicas identical; on digits, switching error feedback off costs more
than that point, so these tests fail when the error feedback does not work. The plan's and the
start event's wire numbers come from the same layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shapes import write_folder

pytestmark = pytest.mark.horovod

PSGD = ["horovod.compression=powersgd"]
SEEDS = (42, 1, 2)
SHAPES = ["data.image_size=32", "model.arch=small_cnn", "data.batch_size=16",
          "optimizer.base_lr=0.02", "optimizer.warmup_epochs=1", "data.loader_workers=0",
          "train.epochs=10"]


def trained(run_cli, run_dir: Path, *args: str) -> tuple[dict, dict, str]:
    """(done event, manifest, plain output) of one run."""
    proc = run_cli("run", *args, "--run-dir", str(run_dir), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    epochs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [e for e in epochs if e["event"] == "epoch"][-1]
    return last, manifest, proc.stdout


def test_digits_with_powersgd_matches_none_and_needs_its_error_feedback(run_cli,
                                                                        tmp_path: Path) -> None:
    """Means over three seeds: digits' 360 held-out images make one run's accuracy move by a
    point or two with the machine's float rounding (seed 42 alone: none 99.4 %, powersgd 97.5 %
    on one VM type, 98.9 % and 98.1 % on another; over seeds 42, 1, 2: 98.3 % and 97.4 %)."""
    runs: dict[str, list[float]] = {"none": [], "psgd": [], "no_ef": []}
    for seed in SEEDS:
        at = [f"train.seed={seed}"]
        none, _, _ = trained(run_cli, tmp_path / f"none-{seed}", "digits-cnn", *at,
                             "horovod.compression=none")
        psgd, got, text = trained(run_cli, tmp_path / f"psgd-{seed}", "digits-cnn", *at, *PSGD)
        no_ef, _, _ = trained(run_cli, tmp_path / f"no-ef-{seed}", "digits-cnn", *at, *PSGD,
                              "horovod.powersgd.error_feedback=false")
        for key, last in (("none", none), ("psgd", psgd), ("no_ef", no_ef)):
            runs[key].append(last["eval_acc"])
        if seed == SEEDS[0]:
            manifest, out = got, text
    mean = {key: sum(v) / len(v) for key, v in runs.items()}
    assert abs(mean["psgd"] - mean["none"]) <= 0.01, runs
    assert mean["none"] - mean["no_ef"] > 0.01, runs  # the test can fail
    assert manifest["replicas_identical"] is True
    assert manifest["wire"] == {"wire_dtype": "powersgd rank 4 + float16", "grad_bytes": 359720,
                                "wire_bytes": 25396}
    # null: the LR warmup (22 steps at np=2), written into the run's recipe
    assert manifest["recipe_resolved"]["horovod"]["powersgd"]["warmup_steps"] == 22
    assert ("  powersgd rank 4: 25.4 kB of 359.7 kB a step (14x), 4/10 tensors factored"
            in out.splitlines())
    assert "gradients powersgd rank 4 + float16 on the wire (25,396 of 359,720 bytes)" in out


def test_an_image_folder_with_powersgd_matches_none(run_cli, tmp_path: Path) -> None:
    data = write_folder(tmp_path / "data")
    common = ["imagefolder-resnet", f"data.data_dir={data}", *SHAPES]
    none, _, _ = trained(run_cli, tmp_path / "none", *common, "horovod.compression=none")
    psgd, manifest, _ = trained(run_cli, tmp_path / "psgd", *common, *PSGD)
    assert none["eval_acc"] >= 0.9
    assert abs(psgd["eval_acc"] - none["eval_acc"]) <= 0.01, (psgd, none)
    assert manifest["replicas_identical"] is True
    assert manifest["wire"]["wire_bytes"] * 5 < manifest["wire"]["grad_bytes"]
