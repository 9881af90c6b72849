"""Real training runs: `hvdtrain run` launches horovodrun -np 2 with Gloo on localhost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from hvdtrain.recipe import Recipe, lr_config

from hvdtrain.recipe_files import load_recipe
from hvdtrain.schedule import lr_at

pytestmark = pytest.mark.horovod


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


from conftest import LOG5


def test_digits_reaches_97_percent_with_identical_replicas(digits_run) -> None:
    run_dir, proc = digits_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["exit_status"] == 0
    assert manifest["final_eval_acc"] >= 0.97
    hashes = manifest["param_hashes"]
    assert len(hashes) == 2 and hashes[0] == hashes[1] and manifest["replicas_identical"] is True
    assert "finished: eval accuracy" in proc.stdout


def test_fp16_compression_is_really_used(digits_run) -> None:
    run_dir, _ = digits_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    c = manifest["wire"]
    assert manifest["recipe_resolved"]["horovod"]["compression"] == "fp16"
    assert c["wire_dtype"] == "float16" and c["wire_bytes"] * 2 == c["grad_bytes"]
    assert "compression" not in manifest  # one copy of the setting: recipe_resolved's
    # and the optimizer steps with PyTorch's fused kernel (optimizer.fused, on by default)
    assert manifest["fused"] is True


def test_the_workers_keep_freed_memory_for_the_next_step(digits_run) -> None:
    """hvdtrain.worker.memory ran in the real workers (its effect: tests/test_memory.py)."""
    run_dir, _ = digits_run
    assert json.loads((run_dir / "manifest.json").read_text())["host_memory"] == "kept"


def test_run_directory_contents(digits_run) -> None:
    run_dir, _ = digits_run
    saved = Recipe.model_validate(yaml.safe_load((run_dir / "recipe.yaml").read_text()))
    assert saved == load_recipe("digits-cnn", LOG5).recipe
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["np"] == 2 and manifest["hosts"] == [{"host": "localhost", "slots": 2}]
    assert manifest["argv"][-4:] == ["-m", "hvdtrain.worker", "--run-dir", str(run_dir)]
    assert set(manifest["versions"]) == {"hvdtrain", "torch", "horovod", "python"}
    assert manifest["versions"]["horovod"] == "0.28.1"
    assert manifest["start_time"] and manifest["end_time"]
    epochs = [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["event"] == "epoch"]
    assert epochs == list(range(1, 13))
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    # keep_checkpoints: 3, and the best epoch's weights (test_after.py)
    assert ckpts == ["best.pt", "epoch-0010.pt", "epoch-0011.pt", "epoch-0012.pt"]
    state = torch.load(run_dir / "checkpoints" / "epoch-0012.pt", weights_only=True)
    assert state["epoch"] == 12 and state["global_step"] == 12 * 22
    logs = run_dir / "logs"
    assert sorted(str(p.relative_to(logs)) for p in logs.rglob("*") if p.is_file()) == [
        "horovodrun.log", "rank.0/stderr", "rank.0/stdout", "rank.1/stderr", "rank.1/stdout"]
    assert manifest["status"] == "finished"
    assert '"event":"done"' in (logs / "rank.0" / "stdout").read_text()


def test_warmup_lr_in_metrics_equals_the_schedule(digits_run) -> None:
    run_dir, _ = digits_run
    recipe = load_recipe("digits-cnn").recipe
    steps = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["event"] == "step"]
    warm = [r for r in steps if r["global_step"] <= 22]
    assert len(warm) >= 4
    for r in steps:
        expected = lr_at(r["global_step"] - 1, 22, 2, lr_config(recipe))
        assert r["lr"] == pytest.approx(expected, rel=1e-12), r
    assert warm[0]["lr"] < warm[-1]["lr"] == pytest.approx(0.2)  # warmup visible, reaches peak


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series TensorBoard itself reads back from a run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_curves_match_the_metrics(digits_run) -> None:
    run_dir, _ = digits_run
    curves = scalars(run_dir / "tensorboard")
    assert set(curves) == {"train/lr", "train/loss", "train/accuracy", "train/images_per_s",
                           "eval/loss", "eval/accuracy", "epoch/seconds", "epoch/images_per_s",
                           "epoch/data_wait_share"}
    recipe = load_recipe("digits-cnn").recipe
    records = read_jsonl(run_dir / "metrics.jsonl")
    lrs = curves["train/lr"]
    # every step, the 22 of the warmup included (written at each log window from the schedule)
    assert [s for s, _ in lrs] == list(range(1, 12 * 22 + 1))
    for step, value in lrs:
        assert value == pytest.approx(lr_at(step - 1, 22, 2, lr_config(recipe)), rel=1e-6, abs=1e-9)
    warm = [v for _, v in lrs[:22]]
    assert warm == sorted(warm) and warm[0] < 0.11 and warm[-1] == pytest.approx(0.2)
    epochs = [r for r in records if r["event"] == "epoch"]
    assert curves["eval/accuracy"] == [(r["global_step"], pytest.approx(r["eval_acc"], rel=1e-6))
                                       for r in epochs]
    windows = [r for r in records if r["event"] == "step"]
    assert [s for s, _ in curves["train/loss"]] == [r["global_step"] for r in windows]


def test_non_tty_output_has_no_escape_codes(digits_run) -> None:
    _, proc = digits_run
    assert "\x1b" not in proc.stdout and "\x1b" not in proc.stderr
    assert "epoch 12/12: train loss" in proc.stdout


def test_compression_none_runs(tmp_path: Path, run_cli) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli("run", "digits-cnn", "horovod.compression=none", "optimizer.fused=false",
                   "train.epochs=1", "--run-dir", str(run_dir), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    c = manifest["wire"]
    assert (c["wire_dtype"], c["wire_bytes"]) == ("float32", c["grad_bytes"])
    assert manifest["fused"] is False


def test_resume_continues_at_the_next_epoch_with_restored_optimizer_state(tmp_path: Path,
                                                                         run_cli) -> None:
    from hvdtrain.worker.optim import tensors_hash

    run_dir = tmp_path / "run"
    started = ["optimizer.base_lr=0.08", "horovod.compression=none",
               "launch.env={HVD_TEST_MARK: kept}"]  # resume must keep each of these
    first = run_cli("run", "digits-cnn", "train.epochs=1", *LOG5, *started, "--run-dir",
                    str(run_dir), timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    saved = torch.load(run_dir / "checkpoints" / "epoch-0001.pt", weights_only=True)
    assert saved["optimizer"]["state"], "SGD momentum buffers are saved"
    second = run_cli("run", "--resume", str(run_dir), "train.epochs=2", "--json", timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["resume_changes"] == ["train.epochs: 1 -> 2"]
    kept = manifest["recipe_resolved"]
    assert (kept["optimizer"]["base_lr"], kept["horovod"]["compression"], kept["launch"]["env"],
            kept["train"]["log_interval"]) == (0.08, "none", {"HVD_TEST_MARK": "kept"}, 5)
    assert manifest["env"] == {"HVD_TEST_MARK": "kept"} and manifest["recipe"] == "digits-cnn"
    assert manifest["wire"]["wire_dtype"] == "float32"  # compression none, as the run began
    events = [json.loads(x) for x in second.stdout.splitlines()]
    resumed = next(e for e in events if e["event"] == "resumed")
    assert resumed["epoch"] == 1
    assert resumed["optimizer_hashes"] == [tensors_hash(saved["optimizer"]["state"])] * 2
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [2]
    epochs = [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["event"] == "epoch"]
    assert epochs == [1, 2]  # nothing lost, nothing repeated
    first_step_after = next(e for e in events if e["event"] == "step")
    assert first_step_after["global_step"] > 22  # the schedule continues from step 22
    curves = scalars(run_dir / "tensorboard")
    assert [s for s, _ in curves["train/lr"]] == list(range(1, 45))  # appended, no step twice
    assert [s for s, _ in curves["train/loss"]] == [e * 22 + s for e in (0, 1)
                                                    for s in (5, 10, 15, 20, 22)]


def test_resume_of_a_finished_run_does_nothing(digits_run, run_cli) -> None:
    run_dir, _ = digits_run
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    proc = run_cli("run", str(run_dir / "recipe.yaml"), "--resume", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (f"nothing to do: {run_dir} has completed 12 epoch(s) and train.epochs "
                           "is 12; to train longer, resume with a larger train.epochs, e.g. "
                           "train.epochs=24\n")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_resume_after_editing_the_saved_recipe_is_refused(digits_run, run_cli,
                                                          tmp_path: Path) -> None:
    """The checkpoints were trained with width 32: an edited recipe.yaml cannot change that."""
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(digits_run[0], run_dir)
    saved = run_dir / "recipe.yaml"
    saved.write_text(saved.read_text().replace("width: 32", "width: 16"))
    proc = run_cli("run", str(saved), "train.epochs=13", "--resume", str(run_dir))
    assert proc.returncode == 2
    assert proc.stderr == (f"error: cannot resume {run_dir}: the recipe changes what its "
                           "checkpoints depend on; use the original values or start a new run:\n"
                           "  model.width: 32 -> 16\n")
    assert not (run_dir / "logs" / "rank.0" / "stdout").read_text().count("resumed")
