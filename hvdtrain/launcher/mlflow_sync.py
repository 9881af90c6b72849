"""Upload a run directory to one MLflow server from where the last upload to it stopped: the
outbox's start/resume/end records (RUN_DIR/tracking/mlflow.jsonl), the points of metrics.jsonl,
and, once a launch has ended, the artifacts (recipe, manifest, report PNG, best model as
safetensors). How far each server got is kept in RUN_DIR/tracking/mlflow-state.json after every
acknowledged request, so a sync that fails half-way (the server is away) loses nothing: the next
one, in this launch, a resumed one or `hvdtrain track`, sends the rest. Used by the launcher's
tracking thread (hvdtrain/launcher/tracking.py) and by `hvdtrain track`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from hvdtrain.errors import UserError
from hvdtrain.launcher.mlflow_records import Cursor, Point, points
from hvdtrain.launcher.report import recorded_lr_config
from hvdtrain.rundir import RunDir, write_json_atomic

METRICS_PER_BATCH = 1000  # MLflow's log_batch limits: 1000 metrics, 100 params and tags
PARAMS_PER_BATCH = 100


def mlflow_defaults() -> None:
    """Before MLflow is imported: no usage data sent (air-gapped clusters), requests that fail
    fast (the caller retries later) instead of MLflow's 7 retries over minutes, and no links
    printed by MLflow itself (hvdtrain says where the run is). A value the user set wins."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # set_terminated prints "View run ... at" to stdout (`run --json` is JSON lines there)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def records(path: Path, offset: int = 0) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """Each complete JSON line after ``offset`` with the offset just past it; None for a line
    that is not a JSON object (torn by a killed writer: skipped, as metrics.jsonl's readers do).
    A line still being written, without its newline, waits for the next sync."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            return
        offset += len(line)
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        yield offset, record if isinstance(record, dict) else None


def _signature(path: Path) -> str | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


def servers(folder: RunDir) -> dict[str, Any]:
    """How far each server got: {uri: {run_id, outbox, metrics, ...}}."""
    try:
        data = json.loads(folder.tracking_state.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("servers", {}) if isinstance(data, dict) else {}


class Sync:
    """One run directory and one server: ``run()`` sends everything pending."""

    def __init__(self, folder: RunDir, uri: str) -> None:
        self.folder, self.uri = folder, uri
        self.info = folder.read_manifest() or {}
        self.cfg = recorded_lr_config(self.info)
        self.state: dict[str, Any] = servers(folder).get(uri) or {"outbox": 0, "metrics": 0}
        self.sent = {"records": 0, "points": 0, "artifacts": 0}
        self.notes: list[str] = []  # what could not be made (report, model export), said once
        self._client: Any = None

    def _save(self) -> None:
        write_json_atomic(self.folder.tracking_state, {"servers": {**servers(self.folder),
                                                                   self.uri: self.state}})

    @property
    def client(self) -> Any:
        if self._client is None:
            mlflow_defaults()
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def run_id(self) -> str | None:
        return self.state.get("run_id")

    def run(self, artifacts: bool = True) -> None:
        """Send the outbox's records, then the metrics; the artifacts too when ``artifacts`` and
        the last record ends a launch. Raises whatever MLflow raises; progress is kept."""
        for offset, record in records(self.folder.tracking_outbox, self.state["outbox"]):
            if record is not None:
                self._apply(record)
                self.state["ended"] = record.get("kind") == "end"
            self.state["outbox"] = offset
            self._save()
        if self.run_id is not None:
            self._metrics()
            if artifacts and self.state.get("ended"):
                self._artifacts()

    def _apply(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Param, RunTag

        kind, ms = record.get("kind"), int(1000 * float(record.get("time") or 0))
        if kind == "start":
            if self.run_id is None:
                self._create(record, ms)
            pairs = [Param(k, v) for k, v in record["params"].items()]
            for i in range(0, len(pairs), PARAMS_PER_BATCH):  # the same value again is allowed
                self.client.log_batch(self.run_id, params=pairs[i:i + PARAMS_PER_BATCH])
        elif self.run_id is None:
            raise UserError(f"{self.folder.tracking_outbox}: its first record is not the run's "
                            "start: the file was edited; remove the folder tracking/ and run "
                            f"`hvdtrain track {self.folder.path} --uri {self.uri}` to log it anew")
        else:
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in
                                                     record.get("tags", {}).items()])
            if kind == "resume":
                self.client.update_run(self.run_id, status="RUNNING")
            elif kind == "end":
                self.client.set_terminated(self.run_id, record["status"], end_time=ms)
        self.sent["records"] += 1

    def _create(self, record: dict[str, Any], ms: int) -> None:
        name = record["experiment"]
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name)
        run = self.client.create_run(experiment, start_time=ms, tags=record["tags"],
                                     run_name=record["run_name"])
        self.state.update(run_id=run.info.run_id, experiment_id=experiment)
        self._save()  # at once: a retry must not create a second run

    def _metrics(self) -> None:
        cursor = Cursor(self.state.get("lr_step", 0),
                        self.state.get("world_size") or self.info.get("np"))
        batch: list[Point] = []
        done = self.state["metrics"]
        for offset, record in records(self.folder.metrics_file, done):
            batch += points(record, cursor, self.cfg) if record is not None else []
            done = offset
            if len(batch) >= METRICS_PER_BATCH:
                self._send(batch, done, cursor)
                batch = []
        if done != self.state["metrics"]:
            self._send(batch, done, cursor)

    def _send(self, batch: list[Point], offset: int, cursor: Cursor) -> None:
        from mlflow.entities import Metric

        for i in range(0, len(batch), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=[
                Metric(key, value, ms, step) for key, value, step, ms in
                batch[i:i + METRICS_PER_BATCH]])
        self.sent["points"] += len(batch)
        self.state.update(metrics=offset, lr_step=cursor.lr_step, world_size=cursor.world_size)
        self._save()

    def _artifacts(self) -> None:
        """Each file that changed since it was last sent: recipe, manifest, report, best model."""
        files = [(self.folder.recipe_file, None), (self.folder.manifest_file, None),
                 *[(p, None) for p in [self._report()] if p], *self._model()]
        sent = self.state.setdefault("artifacts", {})
        for path, where in files:
            name, signature = f"{where or '.'}/{path.name}", _signature(path)
            if signature is None or sent.get(name) == signature:
                continue
            self.client.log_artifact(self.run_id, str(path), where)
            sent[name] = signature
            self.sent["artifacts"] += 1
            self._save()

    def _report(self) -> Path | None:
        """RUN_DIR/tracking/report.png, drawn again when metrics.jsonl changed."""
        out = self.folder.tracking / "report.png"
        signature = _signature(self.folder.metrics_file)
        if out.is_file() and self.state.get("report_of") == signature:
            return out
        try:
            from hvdtrain.launcher.report import report

            report([str(self.folder.path)], str(out))
        except ImportError:
            self.notes.append("no report.png logged: matplotlib is not installed "
                              "(pip install 'hvdtrain[report]')")
            return None
        except UserError:
            return None  # no finished epoch: nothing to draw
        self.state["report_of"] = signature
        return out

    def _model(self) -> list[tuple[Path, str]]:
        """The best model as safetensors + its JSON sidecar (`hvdtrain export`), exported again
        when best.pt changed."""
        best = self.folder.best_checkpoint
        out = self.folder.tracking / "model" / "best.safetensors"
        sidecar = out.with_name(out.name + ".json")
        signature = _signature(best)
        if signature is None:
            return []
        if self.state.get("model_of") != signature or not (out.is_file() and sidecar.is_file()):
            from hvdtrain.launcher.after import run_child

            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                run_child("export", [best], ["--format", "safetensors", "--output", str(out)],
                          what=None)
            except UserError as exc:
                self.notes.append(f"the best model was not logged: its export failed: {exc}")
                return []
            self.state["model_of"] = signature
        return [(out, "model"), (sidecar, "model")]
