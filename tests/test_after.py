"""After training, on a real run (the session's digits run, conftest.digits_run): every checkpoint
carries its model card, best.pt holds the best epoch, `eval` reproduces the run's numbers (np=1
and under horovodrun), `predict` classifies arrays and reports bad files one by one, and unusable
checkpoints are refused naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hvdtrain.recipe_files import load_recipe

pytestmark = pytest.mark.horovod


def epochs_of(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == "epoch"]


def test_every_checkpoint_describes_its_model_and_best_pt_is_the_best_epoch(digits_run) -> None:
    run_dir, proc = digits_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    epochs = epochs_of(run_dir)
    state = torch.load(run_dir / "checkpoints" / "epoch-0012.pt", weights_only=True)
    card = state["card"]
    recipe = load_recipe("digits-cnn").recipe
    assert card["model"] == recipe.model.model_dump(mode="json")
    assert card["data"] == recipe.data.model_dump(mode="json") and card["seed"] == 42
    assert (card["input_shape"], card["num_classes"], card["classes"]) == ([1, 8, 8], 10, None)
    assert card["mean"][0] == pytest.approx(4.88, abs=0.05) and len(card["std"]) == 1
    assert (card["epoch"], card["eval_acc"]) == (12, epochs[-1]["eval_acc"])
    best = max(epochs, key=lambda e: e["eval_acc"])  # the first epoch with the highest accuracy
    saved = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert sorted(saved) == ["card", "epoch", "global_step", "model"]  # no optimizer state
    assert (saved["epoch"], saved["card"]["eval_acc"]) == (best["epoch"], best["eval_acc"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["best"] == {"epoch": best["epoch"], "eval_acc": best["eval_acc"],
                                "path": str(run_dir / "checkpoints" / "best.pt")}
    assert (f"best model: epoch {best['epoch']}, eval accuracy {100 * best['eval_acc']:.2f}% -> "
            f"{run_dir}/checkpoints/best.pt (try: hvdtrain eval {run_dir})") in proc.stdout


def test_eval_gives_the_runs_own_numbers_once_per_sample(digits_run, run_cli) -> None:
    run_dir, _ = digits_run
    last = epochs_of(run_dir)[-1]
    one = json.loads(run_cli("eval", str(run_dir), "--checkpoint", "last", "--json").stdout)
    two = run_cli("eval", str(run_dir), "--checkpoint", "last", "--np", "2", "--json",
                  timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    two = json.loads(two.stdout)
    for r in (one, two):
        assert r["checkpoint"] == str(run_dir / "checkpoints" / "epoch-0012.pt")
        assert (r["samples"], r["listed"], r["k"]) == (360, 360, 5)  # 20 % of 1797, none twice
        assert sum(map(sum, r["confusion"])) == 360
        assert sum(c["support"] for c in r["per_class"]) == 360
        assert r["top1"] == last["eval_acc"] <= r["topk"]
    # the same shards and batches as the run's evaluation: the very same loss
    assert (two["world_size"], two["loss"]) == (2, last["eval_loss"])
    assert one["loss"] == pytest.approx(last["eval_loss"], rel=1e-5)
    assert one["classes"] == [str(i) for i in range(10)]


def test_eval_text_and_the_confusion_png(digits_run, run_cli, tmp_path: Path) -> None:
    run_dir, _ = digits_run
    best = json.loads((run_dir / "manifest.json").read_text())["best"]
    proc = run_cli("eval", str(run_dir), "-o", str(tmp_path / "c.png"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == (f"eval: {run_dir}/checkpoints/best.pt (epoch {best['epoch']}) on the "
                        "run's held-out split: 360 samples on 1 process(es)")
    assert lines[1].startswith("  loss ") and f"top-1 {100 * best['eval_acc']:.2f}%" in lines[1]
    assert lines[2] == (f"  (the run reported eval accuracy {100 * best['eval_acc']:.2f}% for "
                        "these weights)")
    table = lines[lines.index("confusion matrix (rows: true class, columns: predicted class):"):]
    assert table[1].split() == ["true", "\\", "pred", *map(str, range(10))]
    assert all(len(line) <= 80 for line in table[:-1])
    assert table[-1] == f"confusion matrix image: {tmp_path}/c.png"
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_classifies_arrays_and_reports_each_bad_file(digits_run, run_cli,
                                                             tmp_path: Path) -> None:
    from hvdtrain.worker.data import _digits_arrays

    run_dir, _ = digits_run
    _, xev, _, yev = _digits_arrays()  # the held-out split in the file's pixel units (0..16)
    np.save(tmp_path / "eval.npy", xev)
    np.save(tmp_path / "one.npy", xev[7, 0])  # a single 8x8 image
    np.save(tmp_path / "bad.npy", np.zeros((3, 3)))
    proc = run_cli("predict", str(run_dir), str(tmp_path / "eval.npy"), str(tmp_path / "one.npy"),
                   str(tmp_path / "bad.npy"), str(tmp_path / "gone.npy"), "--top-k", "2", "--json")
    assert proc.returncode == 1, proc.stderr  # some files could not be read: said per file
    out = json.loads(proc.stdout)
    preds = out["predictions"]
    assert [p["file"] for p in preds[:2]] == [f"{tmp_path}/eval.npy[0]", f"{tmp_path}/eval.npy[1]"]
    hits = [int(p["top"][0]["class"]) == y for p, y in zip(preds[:360], yev)]
    best = json.loads((run_dir / "manifest.json").read_text())["best"]
    assert sum(hits) / 360 == pytest.approx(best["eval_acc"], abs=1 / 360)  # as eval scored it
    assert preds[360]["file"] == f"{tmp_path}/one.npy" and len(preds[360]["top"]) == 2
    assert preds[360]["top"] == [{**t, "probability": pytest.approx(t["probability"], rel=1e-4)}
                                 for t in preds[7]["top"]]
    assert preds[361] == {"file": f"{tmp_path}/bad.npy", "error": "an array of shape (3, 3); "
                          "this model takes (1, 8, 8) (or N x (1, 8, 8))"}
    assert preds[362]["file"] == f"{tmp_path}/gone.npy"
    assert preds[362]["error"].startswith("FileNotFoundError: ")
    csv = run_cli("predict", str(run_dir), str(tmp_path / "one.npy"), "--csv")
    assert csv.returncode == 0
    assert csv.stdout.splitlines()[0] == "file,rank,class,index,probability,error"
    assert [r.split(",")[1] for r in csv.stdout.splitlines()[1:]] == ["1", "2", "3"]


def test_unusable_checkpoints_are_named(digits_run, run_cli, tmp_path: Path) -> None:
    run_dir, _ = digits_run
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    proc = run_cli("eval", str(run_dir), "--checkpoint", str(garbage))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: cannot use checkpoint {garbage}: ")
    state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    state["card"]["model"]["width"] = 16  # the card no longer describes the weights
    other = tmp_path / "other.pt"
    torch.save(state, other)
    proc = run_cli("predict", str(run_dir), "x.npy", "--checkpoint", str(other))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: cannot use checkpoint {other}: its weights do not fit "
                                  "the model its card describes (")
    assert proc.stderr.endswith("): the file was edited or mixes two runs\n")
    del state["card"]
    torch.save(state, other)
    proc = run_cli("eval", str(run_dir), "--checkpoint", str(other))
    assert proc.stderr == (f"error: cannot use checkpoint {other}: it has no model card (an "
                           "hvdtrain from before model cards wrote it: resume the run for one "
                           "more epoch to write one)\n")
    proc = run_cli("predict", str(run_dir), "x.npy", "--top-k", "11")
    assert (proc.returncode, proc.stderr) == (2, "error: --top-k 11: the model has 10 classes: "
                                                 "give 1..10\n")


def test_last_falls_back_over_a_corrupt_newest_checkpoint(digits_run, run_cli,
                                                          tmp_path: Path) -> None:
    run_dir, _ = digits_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("tensorboard", "logs"))
    (copy / "checkpoints" / "epoch-0012.pt").write_bytes(b"\x00" * 100)
    proc = run_cli("eval", str(copy), "--checkpoint", "last", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["checkpoint"] == str(copy / "checkpoints" / "epoch-0011.pt")
    assert out["top1"] == epochs_of(copy)[10]["eval_acc"]
    assert out["skipped_checkpoints"][0].startswith(
        f"cannot use checkpoint {copy}/checkpoints/epoch-0012.pt: ")


@pytest.mark.parametrize("fmt", ["safetensors", "torch-export", "onnx"])
def test_export_is_reloaded_and_checked_before_it_is_reported(digits_run, run_cli,
                                                              tmp_path: Path, fmt: str) -> None:
    run_dir, _ = digits_run
    out = tmp_path / f"model.{fmt}"
    proc = run_cli("export", str(run_dir), "--format", fmt, "-o", str(out), "--json",
                   timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(proc.stdout)
    assert (r["output"], r["sidecar"]) == (str(out), f"{out}.json")
    assert r["max_abs_diff"] <= r["tolerance"] == 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, f"{out.name}.json"]
    card = json.loads(Path(r["sidecar"]).read_text())["card"]
    assert card == torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["card"]
    # the file stands alone: load it as an inference service would and classify the eval split
    from hvdtrain.worker.data import _digits_arrays

    _, xev, _, yev = _digits_arrays()
    x = ((torch.from_numpy(xev).float() - card["mean"][0]) / card["std"][0])
    if fmt == "onnx":
        import onnxruntime

        logits = torch.from_numpy(onnxruntime.InferenceSession(str(out)).run(
            None, {"images": x.numpy()})[0])
    elif fmt == "torch-export":
        logits = torch.export.load(str(out)).module()(x)
    else:
        from safetensors.torch import load_file

        from hvdtrain.recipe import ModelConfig
        from hvdtrain.worker.models import build_model

        model = build_model(ModelConfig.model_validate(card["model"]), (1, 8, 8), 10).eval()
        model.load_state_dict(load_file(str(out)))
        logits = model(x)
    acc = (logits.argmax(1).numpy() == yev).mean()
    assert acc == pytest.approx(card["eval_acc"], abs=1 / 360)


def test_export_refuses_bad_output_paths_and_formats(digits_run, in_cli, tmp_path: Path) -> None:
    run_dir, _ = digits_run
    for args, message in (
            (["--format", "tflite"], "error: --format 'tflite': choose one of safetensors, "
                                     "torch-export, onnx\n"),
            (["--format", "onnx", "-o", str(tmp_path)], f"error: -o {tmp_path}: is a directory: "
                                                        "give a file path\n")):
        proc = in_cli("export", str(run_dir), *args)
        assert (proc.returncode, proc.stderr) == (2, message)
    assert list(tmp_path.iterdir()) == []
