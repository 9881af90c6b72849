"""Real horovodrun -np 2 runs on what users train: an image folder read by loader workers, their
own model as a component, bf16 compute. Every test also checks that no process is left behind
(DataLoader workers carry the worker's command line)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from shapes import CLASSES, write_folder

pytestmark = pytest.mark.horovod

FAST = ["data.image_size=32", "model.arch=small_cnn", "data.batch_size=16",
        "optimizer.base_lr=0.02", "optimizer.warmup_epochs=1"]


def events(proc) -> list[dict]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads(x) for x in proc.stdout.splitlines()]


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    from conftest import hvdtrain

    tmp = tmp_path_factory.mktemp("images")
    data = write_folder(tmp / "data")
    run_dir = tmp / "run"
    proc = hvdtrain("run", "imagefolder-resnet", f"data.data_dir={data}", *FAST,
                    "train.epochs=10", "--run-dir", str(run_dir), "--json", timeout=600)
    return data, run_dir, events(proc)


def test_image_folder_trains_to_90_percent_with_loader_workers(shapes_run) -> None:
    _, run_dir, evs = shapes_run
    start = next(e for e in evs if e["event"] == "start")
    assert start["classes"] == sorted(CLASSES) and start["devices"] == ["cpu", "cpu"]
    assert start["train_samples"] == 4 * 60 + 1
    done = next(e for e in evs if e["event"] == "done")
    assert done["eval_acc"] >= 0.90 and done["replicas_identical"] is True
    epochs = [e for e in evs if e["event"] == "epoch"]
    assert all(0 <= e["data_wait_share"] < 1 for e in epochs)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["classes"] == sorted(CLASSES)
    state = torch.load(run_dir / "checkpoints" / "epoch-0010.pt", weights_only=True)
    assert state["classes"] == sorted(CLASSES)


def test_resume_keeps_the_class_mapping_and_refuses_a_changed_one(shapes_run, run_cli,
                                                                   tmp_path: Path) -> None:
    data, run_dir, _ = shapes_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    proc = run_cli("run", str(copy / "recipe.yaml"), "train.epochs=11", "--resume", str(copy),
                   "--json", timeout=600)
    evs = events(proc)
    assert next(e for e in evs if e["event"] == "resumed")["epoch"] == 10
    assert next(e for e in evs if e["event"] == "start")["classes"] == sorted(CLASSES)
    assert next(e for e in evs if e["event"] == "done")["eval_acc"] >= 0.90  # same mapping
    extra = tmp_path / "data"
    shutil.copytree(data, extra)
    (extra / "train" / "aardvark").mkdir()
    Image.new("RGB", (32, 32)).save(extra / "train" / "aardvark" / "a.png")
    proc = run_cli("run", str(copy / "recipe.yaml"), f"data.data_dir={extra}", "train.epochs=12",
                   "--resume", str(copy))
    assert proc.returncode == 2
    assert proc.stderr == (f"error: cannot resume {copy}: the recipe changes what its checkpoints "
                           "depend on; use the original values or start a new run:\n"
                           f"  classes in {extra}/train: added ['aardvark'], removed [] (class "
                           "indices would no longer match)\n")


def test_a_model_component_from_the_working_directory_trains(run_cli, tmp_path: Path) -> None:
    (tmp_path / "my_models.py").write_text(
        "import torch\n"
        "def wide(input_shape, num_classes, hidden=64):\n"
        "    c, h, w = input_shape\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(c * h * w, hidden),\n"
        "                               torch.nn.ReLU(), torch.nn.Linear(hidden, num_classes))\n")
    from conftest import ROOT

    run_dir = tmp_path / "run"
    proc = run_cli("run", str(ROOT / "recipes" / "digits-cnn.yaml"),
                   "model.component=my_models:wide", "model.kwargs={hidden: 128}",
                   "train.epochs=6", "--run-dir", str(run_dir), "--json", cwd=tmp_path,
                   timeout=600)
    evs = events(proc)
    start = next(e for e in evs if e["event"] == "start")
    assert start["params"] == 64 * 128 + 128 + 128 * 10 + 10
    assert next(e for e in evs if e["event"] == "done")["eval_acc"] >= 0.9


def test_the_shipped_component_example_trains(run_cli, tmp_path: Path) -> None:
    proc = run_cli("run", "custom-model", "--run-dir", str(tmp_path / "run"), "--json",
                   timeout=600)
    done = next(e for e in events(proc) if e["event"] == "done")
    assert done["eval_acc"] >= 0.95


def test_digits_in_bf16_reaches_97_percent(run_cli, tmp_path: Path) -> None:
    proc = run_cli("run", "digits-cnn", "train.precision=bf16", "--run-dir",
                   str(tmp_path / "run"), "--json", timeout=600)
    evs = events(proc)
    assert next(e for e in evs if e["event"] == "start")["precision"] == "bf16"
    done = next(e for e in evs if e["event"] == "done")
    assert done["eval_acc"] >= 0.97 and done["replicas_identical"] is True


def test_an_undecodable_image_stops_the_run_naming_it(shapes_run, run_cli,
                                                      tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(shapes_run[0], data)
    broken = data / "train" / "cross" / "0004.png"
    broken.write_bytes(b"not a png")
    proc = run_cli("run", "imagefolder-resnet", f"data.data_dir={data}", *FAST, "train.epochs=1",
                   "--run-dir", str(tmp_path / "stop"))
    assert proc.returncode == 1
    assert f"cannot decode image {broken} (" in proc.stdout
    assert "or set data.on_bad_image: skip" in proc.stdout
    # skip: also the first image (the one the input shape used to come from) and, with one
    # image per batch, batches with no image at all (their rank still takes part in the step)
    small = write_folder(tmp_path / "small", per_class=2, val_per_class=1)
    (small / "train" / "square" / "gray.png").unlink()  # 8 images: every one in every epoch
    for bad in (min((small / "train").glob("*/*")), *sorted((small / "train").glob("*/*"))[4:6]):
        bad.write_bytes(b"not an image either")
    proc = run_cli("run", "imagefolder-resnet", f"data.data_dir={small}", *FAST, "train.epochs=2",
                   "data.batch_size=1", "data.on_bad_image=skip", "--run-dir",
                   str(tmp_path / "skip"), "--json", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warnings = [e["message"] for e in events(proc) if e["event"] == "warning"]
    assert len(warnings) == 2 and all(w.startswith(
        f"epoch {n}: skipped 3 image(s) that failed to decode (data.on_bad_image: skip)")
        and w.endswith("; 3 batch(es) had no image left, so their rank's share of that step "
                       "was zero") for n, w in enumerate(warnings, 1))
    done = next(e for e in events(proc) if e["event"] == "done")
    assert done["replicas_identical"] and done["steps_per_rank"] == [8, 8]


def test_eval_and_predict_an_image_folder_model(shapes_run, run_cli, tmp_path: Path) -> None:
    data, run_dir, evs = shapes_run
    last = [e for e in evs if e["event"] == "epoch"][-1]
    own = run_cli("eval", str(run_dir), "--checkpoint", "last", "--np", "2", "--json",
                  timeout=300)
    assert own.returncode == 0, own.stderr
    own = json.loads(own.stdout)
    assert (own["samples"], own["top1"], own["loss"]) == (4 * 20 + 1, last["eval_acc"],
                                                          last["eval_loss"])
    assert own["classes"] == sorted(CLASSES) and own["k"] == 4
    # another folder of some of the classes, matched by name (no val/: the classes directly)
    sub = tmp_path / "sub"
    for cls in ("square", "circle"):
        shutil.copytree(data / "val" / cls, sub / cls)
    (sub / "circle" / "broken.png").write_bytes(b"not a png")
    proc = run_cli("eval", str(run_dir), "--data", str(sub), "--json")
    assert proc.returncode == 0, proc.stderr
    other = json.loads(proc.stdout)
    support = {c["class"]: c["support"] for c in other["per_class"]}
    assert support == {"circle": 21, "cross": 0, "square": 20, "triangle": 0}
    assert (other["samples"], other["listed"], other["skipped_images"]) == (41, 42, 1)
    assert other["skipped_example"].startswith(f"{sub}/circle/broken.png (")
    (sub / "zebra").mkdir()
    proc = run_cli("eval", str(run_dir), "--data", str(sub))
    assert proc.returncode == 2
    assert proc.stderr == (f"error: data folder {sub} cannot be scored (1 problem):\n  {sub}: "
                           "class folder(s) 'zebra' are not classes of the model (it knows "
                           "circle, cross, square, triangle): remove or rename them\n")
    # predict: class names for each image, the undecodable one reported on its own line
    proc = run_cli("predict", str(run_dir), str(sub / "square"), str(sub / "circle" /
                                                                     "broken.png"), "--json")
    assert proc.returncode == 1
    preds = json.loads(proc.stdout)["predictions"]
    assert len(preds) == 21 and preds[-1]["file"] == str(sub / "circle" / "broken.png")
    assert preds[-1]["error"].startswith("UnidentifiedImageError: ")
    top = [p["top"][0]["class"] for p in preds[:-1]]
    assert top.count("square") >= 18 and len(preds[0]["top"]) == 3
