"""MLflow tracking against a real `mlflow server` (tests/mlflow_server.py), read back through
MlflowClient: one MLflow run per hvdtrain run (a resume continues it), params, tags, every
metric point of metrics.jsonl and the LR of every step, the artifacts; an unreachable server
stops nothing, and `hvdtrain track` uploads the rest, once."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from hvdtrain.launcher.checks import flatten
from conftest import LOG5
from mlflow_server import free_port, mlflow_server

pytestmark = pytest.mark.horovod
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # this process reads back


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


def client(url: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=url)


def records(run_dir: Path, kind: str) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == kind]


def history(c, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in c.get_metric_history(run_id, key))


def the_run(c, experiment: str):
    found = c.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    runs = c.search_runs([found.experiment_id])
    assert len(runs) == 1, "one MLflow run per hvdtrain run, never one per rank or launch"
    return runs[0]


def assert_metrics_match(c, run_id: str, run_dir: Path) -> None:
    """Every point of metrics.jsonl, at its global step, exactly once."""
    epochs, steps = records(run_dir, "epoch"), records(run_dir, "step")
    assert history(c, run_id, "eval/accuracy") == [(e["global_step"], e["eval_acc"])
                                                   for e in epochs]
    assert history(c, run_id, "train/loss") == [(s["global_step"], s["loss"]) for s in steps]
    assert history(c, run_id, "epoch") == [(e["global_step"], e["epoch"]) for e in epochs]


def test_a_run_is_one_mlflow_run_and_a_resume_continues_it(server, run_cli,
                                                           tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    tracked = ["tracking.mlflow=true", f"tracking.uri={server}", "tracking.experiment=digits-t"]
    first = run_cli("run", "digits-cnn", "train.epochs=1", *LOG5, *tracked, "--run-dir",
                    str(run_dir), timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    c = client(server)
    run = the_run(c, "digits-t")
    run_id, experiment = run.info.run_id, run.info.experiment_id
    logged = [x for x in first.stdout.splitlines() if x.startswith("MLflow")]
    assert logged == [f"MLflow: logged as run {run_id} of experiment {experiment}: {server}/#/"
                      f"experiments/{experiment}/runs/{run_id}"]
    assert "View run" not in first.stdout  # MLflow's own print is off
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    params = run.data.params
    recipe = flatten(manifest["recipe_resolved"])
    assert len(params) == len(recipe) + 1 and params["np"] == "2"
    assert (params["optimizer.base_lr"], params["train.log_interval"], params["train.tensorboard"],
            params["data.synthetic.image_shape"], params["elastic"]) == \
        (str(recipe["optimizer.base_lr"]), "5", "true", "[3, 32, 32]", "null")
    tags = run.data.tags
    assert {k: tags[k] for k in ("hvdtrain.np", "hvdtrain.hosts", "hvdtrain.compression",
                                 "hvdtrain.status", "version.horovod", "version.torch")} == \
        {"hvdtrain.np": "2", "hvdtrain.hosts": "localhost:2", "hvdtrain.compression": "fp16",
         "hvdtrain.status": "finished", "version.horovod": "0.28.1",
         "version.torch": manifest["versions"]["torch"]}
    assert_metrics_match(c, run_id, run_dir)
    lrs = history(c, run_id, "train/lr")
    assert [s for s, _ in lrs] == list(range(1, 23))  # every step, the warmup included
    assert all(a < b for (_, a), (_, b) in zip(lrs, lrs[1:]))  # rising through epoch 1
    assert dict(lrs)[5] == records(run_dir, "step")[0]["lr"]
    names = {a.path for a in c.list_artifacts(run_id)} | \
        {a.path for a in c.list_artifacts(run_id, "model")}
    assert names == {"recipe.yaml", "manifest.json", "report.png", "model",
                     "model/best.safetensors", "model/best.safetensors.json"}
    got = Path(c.download_artifacts(run_id, "model/best.safetensors", str(tmp_path)))
    assert got.read_bytes() == (run_dir / "tracking" / "model" / "best.safetensors").read_bytes()

    second = run_cli("run", "--resume", str(run_dir), "train.epochs=2", "--json", timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    exit_event = json.loads(second.stdout.splitlines()[-1])
    assert exit_event["notes"] == logged and "View run" not in second.stdout
    run = the_run(c, "digits-t")  # still one
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert (run.data.tags["hvdtrain.launches"], run.data.tags["hvdtrain.resume.1.changes"]) == \
        ("2", "train.epochs: 1 -> 2")
    assert run.data.params["train.epochs"] == "1"  # MLflow keeps a param's first value
    assert_metrics_match(c, run_id, run_dir)
    assert [s for s, _ in history(c, run_id, "train/lr")] == list(range(1, 45))
    manifest_now = Path(c.download_artifacts(run_id, "manifest.json", str(tmp_path / "m")))
    assert json.loads(manifest_now.read_text())["resume_changes"] == ["train.epochs: 1 -> 2"]


def test_an_unreachable_server_stops_nothing_and_track_uploads_the_rest_once(
        server, run_cli, tmp_path: Path) -> None:
    run_dir, away = tmp_path / "run", f"http://127.0.0.1:{free_port()}"
    proc = run_cli("run", "digits-cnn", "train.epochs=1", "tracking.mlflow=true",
                   f"tracking.uri={away}", "tracking.experiment=away", "--run-dir", str(run_dir),
                   timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    said = [x for x in lines if x.startswith(("MLflow", "warning: MLflow"))]
    end = lines.index(f"MLflow: not everything reached {away} ([Errno 111] Connection refused)")
    assert lines[end + 1] == f"  nothing is lost: upload the rest with: hvdtrain track {run_dir}"
    assert said[-1] == lines[end]
    assert len(said) <= 2  # at most once while training, once at the end
    assert proc.stdout.splitlines()[-1].startswith("finished: eval accuracy")
    state = run_dir / "tracking" / "mlflow-state.json"
    still = run_cli("track", str(run_dir))  # the recipe's server: still away
    assert still.returncode == 1
    assert still.stderr == (f"error: could not log to {away}: [Errno 111] Connection refused\n"
                            f"  nothing is lost: run `hvdtrain track {run_dir}` again when the "
                            "server answers\n")
    before = state.read_text() if state.exists() else None

    done = run_cli("track", str(run_dir), "--uri", server, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    points = sum(len(r) for r in [records(run_dir, "step"), records(run_dir, "epoch")])
    assert (result["records"], result["artifacts"]) == (2, 5) and result["points"] > points
    c = client(server)
    run = the_run(c, "away")
    assert run.info.run_id == result["run_id"] and run.info.status == "FINISHED"
    assert_metrics_match(c, result["run_id"], run_dir)
    again = run_cli("track", str(run_dir), "--uri", server)
    assert again.returncode == 0 and again.stdout.startswith(
        "track: sent 0 record(s), 0 metric point(s), 0 artifact(s)\n")
    assert_metrics_match(c, result["run_id"], run_dir)  # nothing twice
    assert before is None or json.loads(before)["servers"][away]["outbox"] == 0


def test_track_logs_a_run_trained_without_tracking(server, digits_run, run_cli,
                                                   tmp_path: Path) -> None:
    run_dir = tmp_path / "copy"
    shutil.copytree(digits_run[0], run_dir)
    proc = run_cli("track", str(run_dir), "--uri", server, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    c = client(server)
    run = the_run(c, "digits-cnn")  # the recipe's name
    assert run.info.run_id == json.loads(proc.stdout)["run_id"]
    assert run.info.status == "FINISHED" and run.data.tags["hvdtrain.status"] == "finished"
    assert run.data.tags["hvdtrain.exit_status"] == "0"
    assert_metrics_match(c, run.info.run_id, run_dir)
    assert len(history(c, run.info.run_id, "train/lr")) == records(run_dir, "epoch")[-1][
        "global_step"]
