"""MLflow tracking without a server: the recipe's tracking section and the checks before launch,
what is sent (params, tags, metric points: hvdtrain/launcher/mlflow_records.py), and `hvdtrain
track`'s refusals. The uploads themselves: tests/test_tracking.py, against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hvdtrain.launcher.checks import tracking_problems
from hvdtrain.launcher.mlflow_records import Cursor, params, points, tags
from hvdtrain.recipe import lr_config
from hvdtrain.recipe_warnings import recipe_warnings
from hvdtrain.recipe_files import load_recipe
from hvdtrain.rundir import RunDir
from hvdtrain.schedule import lr_at

NO_SERVER = ("error: tracking.mlflow is true, but no tracking server is named: set tracking.uri "
             "(e.g. http://127.0.0.1:5000) or MLFLOW_TRACKING_URI\n")


def test_tracking_needs_a_server_and_mlflow_before_launch(in_cli, monkeypatch,
                                                          tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    proc = in_cli("run", "digits-cnn", "tracking.mlflow=true", "--run-dir", str(run_dir))
    assert (proc.returncode, proc.stderr) == (2, NO_SERVER) and not run_dir.exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://tracker")
    proc = in_cli("plan", "digits-cnn", "tracking.mlflow=true")
    assert (proc.returncode, proc.stderr) == (2, (
        "error: MLFLOW_TRACKING_URI 'ftp://tracker' is not an MLflow tracking URI: give "
        "http://HOST:PORT (an mlflow server), file:/PATH or sqlite:///PATH (a store on this "
        "machine), or databricks\n"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    proc = in_cli("run", "--dry-run", "digits-cnn", "tracking.mlflow=true",
                  "tracking.experiment=mine", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert "tracking       MLflow at http://127.0.0.1:5000, experiment 'mine', run 'run'\n" in \
        proc.stdout
    recipe = load_recipe("digits-cnn", ["tracking.mlflow=true"]).recipe
    assert tracking_problems(recipe, installed=False, env_uri="http://h:1") == [
        "tracking.mlflow is true, but MLflow is not installed here (the hvdtrain process logs the "
        "run): pip install 'hvdtrain[mlflow]', or set tracking.mlflow=false"]
    assert tracking_problems(load_recipe("digits-cnn").recipe, installed=False, env_uri=None) == []


def test_bad_tracking_settings_name_the_key(in_cli) -> None:
    proc = in_cli("plan", "digits-cnn", "tracking.uri=mlruns", "tracking.experiment=''")
    assert proc.returncode == 2
    assert "override 'tracking.uri=mlruns': tracking.uri: 'mlruns' is not an MLflow tracking " \
           "URI: give http://HOST:PORT" in proc.stderr
    assert "tracking.experiment: give a name of 1 to 250 characters on one line, or null" in \
        proc.stderr
    recipe = load_recipe("digits-cnn", ["tracking.uri=http://127.0.0.1:5000"]).recipe
    assert recipe_warnings(recipe) == ["tracking.uri is set but tracking.mlflow is false: "
                                       "nothing is logged to MLflow"]


def test_params_are_the_flattened_recipe_and_tags_say_where_it_ran(monkeypatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    recipe = load_recipe("digits-cnn", ["launch.env={A: b}", "data.kwargs={k: '" + "x" * 7000
                                        + "'}"]).recipe
    info = {"np": 4, "recipe": "digits-cnn", "recipe_resolved": recipe.model_dump(mode="json"),
            "hosts": [{"host": "a", "slots": 2}, {"host": "b", "slots": 2}],
            "versions": {"horovod": "0.28.1", "torch": None}, "git_commit": "abc"}
    p = params(info)
    assert (p["np"], p["train.tensorboard"], p["elastic"], p["launch.env.A"],
            p["data.synthetic.image_shape"], p["optimizer.base_lr"]) == \
        ("4", "true", "null", "b", "[3, 32, 32]", str(recipe.optimizer.base_lr))
    assert len(p["data.kwargs.k"]) == 6000 and p["data.kwargs.k"].endswith("... (cut off)")
    assert tags(info, "/runs/r") == {
        "hvdtrain.run_dir": "/runs/r", "hvdtrain.recipe": "digits-cnn", "hvdtrain.np": "4",
        "hvdtrain.hosts": "a:2,b:2", "hvdtrain.compression": "fp16", "slurm.job_id": "77",
        "mlflow.source.git.commit": "abc", "version.horovod": "0.28.1"}


def test_metric_points_follow_tensorboards_names_and_give_every_steps_lr() -> None:
    cfg = lr_config(load_recipe("digits-cnn").recipe)
    cursor = Cursor(lr_step=0, world_size=2)
    step = {"event": "step", "time": 10.0, "epoch": 1, "step": 3, "steps": 22, "global_step": 3,
            "loss": 2.0, "acc": 0.5, "lr": 0.1, "images_per_s": "inf"}
    got = points(step, cursor, cfg)
    assert got[:3] == [("train/loss", 2.0, 3, 10000), ("train/accuracy", 0.5, 3, 10000),
                       ("train/images_per_s", float("inf"), 3, 10000)]
    assert got[3:] == [("train/lr", lr_at(i, 22, 2, cfg), i + 1, 10000) for i in range(3)]
    assert cursor.lr_step == 3
    epoch = {"event": "epoch", "time": 11.0, "epoch": 1, "epochs": 2, "train_loss": 1.0,
             "train_acc": 0.7, "eval_loss": None, "eval_acc": None, "seconds": 0.5,
             "images_per_s": 100.0, "data_wait_share": 0.0, "lr": 0.1, "global_step": 22,
             "world_size": 3}
    assert [k for k, *_ in points(epoch, cursor, cfg)] == [
        "epoch/train_loss", "epoch/train_accuracy", "epoch/seconds", "epoch/images_per_s",
        "epoch/data_wait_share", "epoch"]  # no evaluation this epoch: no eval points
    assert cursor.world_size == 3
    reset = {"event": "reset", "time": 12.0, "new_size": 1, "global_step": 22}
    assert points(reset, cursor, cfg) == [("elastic/world_size", 1.0, 22, 12000)]
    back = {**step, "global_step": 2}  # a resume from an older checkpoint goes back
    assert points(back, cursor, cfg)[3:] == [("train/lr", lr_at(1, 22, 1, cfg), 2, 10000)]
    assert points(back, Cursor(), None)[3:] == [("train/lr", 0.1, 2, 10000)]  # no recipe
    assert points({"event": "step", "global_step": "x"}, cursor, cfg) == []


def a_run(folder: Path) -> Path:
    recipe = load_recipe("digits-cnn").recipe
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "recipe.yaml").write_text(recipe.to_yaml())
    (folder / "manifest.json").write_text(json.dumps({
        "recipe": "digits-cnn", "argv": ["horovodrun"], "np": 2, "status": "finished",
        "exit_status": 0, "launcher_pid": 1, "recipe_resolved": recipe.model_dump(mode="json")}))
    return folder


def test_track_refuses_what_it_cannot_upload(in_cli, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    proc = in_cli("track", str(tmp_path))
    assert (proc.returncode, proc.stderr) == (2, (
        f"error: {tmp_path} is not an hvdtrain run directory (no readable manifest.json): give a "
        "directory `hvdtrain run` created (see `hvdtrain runs`)\n"))
    run = a_run(tmp_path / "run")
    proc = in_cli("track", str(run))
    assert (proc.returncode, proc.stderr) == (2, (
        "error: no MLflow server is named: give --uri (e.g. --uri http://127.0.0.1:5000) or set "
        "MLFLOW_TRACKING_URI\n"))
    proc = in_cli("track", str(run), "--uri", "127.0.0.1:5000")
    assert (proc.returncode, proc.stderr) == (2, (
        "error: --uri '127.0.0.1:5000' is not an MLflow tracking URI: give http://HOST:PORT (an "
        "mlflow server), file:/PATH or sqlite:///PATH (a store on this machine), or "
        "databricks\n"))
    with RunDir(run).locked():
        proc = in_cli("track", str(run), "--uri", "http://127.0.0.1:5000")
    assert (proc.returncode, proc.stderr) == (2, (
        f"error: {run} is in use: hvdtrain (pid 1) is running in it now; wait for it to end, or "
        "stop it (kill -INT 1) and resume then\n"
        "  (a running launch logs to MLflow itself: track the run after it ends)\n"))
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "manifest.json",
                                                     "recipe.yaml"]  # nothing written


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "https://mlflow.internal/x",
                                 "file:/tmp/mlruns", "sqlite:///tmp/m.db", "databricks",
                                 "postgresql+psycopg2://u@10.0.0.1/mlflow"])
def test_tracking_uris_mlflow_takes(uri: str) -> None:
    assert load_recipe("digits-cnn", [f"tracking.uri={uri}"]).recipe.tracking.uri == uri
