"""MLflow tracking (``tracking.mlflow: true``): one MLflow run per hvdtrain run, logged by the
hvdtrain process from the events it already receives, so the workers need no MLflow and pay
nothing per step, and no rank logs a run of its own.

A launch writes its records (start or resume, then end) to RUN_DIR/tracking/mlflow.jsonl; the
metrics are metrics.jsonl's. A thread uploads both (hvdtrain/launcher/mlflow_sync.py) a couple
of seconds after new events, and at the end the launch uploads the rest with the artifacts. A
server that cannot be reached stops nothing: hvdtrain says so once, retries every
``RETRY_SECONDS``, and what is still not uploaded when the run ends waits in the run directory
for `hvdtrain track RUN_DIR`."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import threading
from typing import Any

from hvdtrain.errors import UserError
from hvdtrain.launcher.mlflow_records import end_record, resume_record, start_record
from hvdtrain.launcher.mlflow_sync import Sync, records, servers
from hvdtrain.manifest import Manifest, Status
from hvdtrain.recipe import Recipe, tracking_uri_problem
from hvdtrain.rundir import RunDir

GATHER_SECONDS = 2.0  # events gathered into one request (each request is an HTTP round trip)
IDLE_SECONDS = 10.0  # a sync at least this often, also without events
RETRY_SECONDS = 30.0  # after a failed sync
FINAL_SECONDS = 60.0  # the end of a launch waits at most this long for the thread's last request


def _why(exc: BaseException) -> str:
    """The cause in a few words: MLflow wraps a refused connection in a paragraph."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    errno = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if errno:
        return errno.group().strip()
    if "timed out" in text.lower():
        return "no answer: the request timed out"
    return text if len(text) <= 200 else text[:197] + "..."


def _append(folder: RunDir, record: dict[str, Any]) -> None:
    folder.tracking.mkdir(parents=True, exist_ok=True)
    with folder.tracking_outbox.open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def _records(folder: RunDir) -> list[dict[str, Any]]:
    return [r for _, r in records(folder.tracking_outbox) if r is not None]


def open_records(folder: RunDir, info: Manifest, recipe: Recipe, recipe_name: str) -> None:
    """The launch's first record: the run's start, or a resume when the outbox has its start."""
    launches = sum(r.get("kind") in ("start", "resume") for r in _records(folder))
    run_dir = str(folder.path)
    if launches:
        _append(folder, resume_record(info, run_dir, launches + 1))
    else:  # a new run, or tracking switched on at a resume: metrics.jsonl has the earlier part
        _append(folder, start_record(info, run_dir, recipe.tracking.experiment or recipe_name,
                                     recipe.tracking.run_name or folder.path.name))


def describe(plan: Any) -> str | None:
    """Where the run is logged, for `plan` and the run's header; None when it is not."""
    t = plan.recipe.tracking
    if not t.mlflow:
        return None
    uri = t.uri or os.environ.get("MLFLOW_TRACKING_URI") or "(no server named)"
    return (f"MLflow at {uri}, experiment {t.experiment or plan.recipe_name!r}, run "
            f"{t.run_name or plan.run_dir.name!r}")


class Tracker:
    """The launch's MLflow upload: ``start`` (its first record and the thread), ``poke`` after
    new metrics, ``said`` for the view's messages, ``finish`` with the launch's end."""

    def __init__(self, folder: RunDir, uri: str) -> None:
        self.folder, self.uri = folder, uri
        self.sync = Sync(folder, uri)
        self.messages: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.failed: str | None = None  # why the last sync failed
        self._told = False
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlflow", daemon=True)

    @classmethod
    def start(cls, folder: RunDir, plan: Any, info: Manifest) -> Tracker | None:
        """None when the recipe does not track (checked before launch: hvdtrain/launcher/checks)."""
        if not plan.recipe.tracking.mlflow:
            return None
        open_records(folder, info, plan.recipe, plan.recipe_name)
        tracker = cls(folder, plan.recipe.tracking.uri or os.environ["MLFLOW_TRACKING_URI"])
        tracker._thread.start()
        return tracker

    def poke(self) -> None:
        self._wake.set()

    def said(self) -> list[str]:
        out = []
        while not self.messages.empty():
            out.append(self.messages.get())
        return out

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(IDLE_SECONDS)
            if self._stop.wait(GATHER_SECONDS):
                return
            self._wake.clear()
            if not self._attempt(artifacts=False):
                self._stop.wait(RETRY_SECONDS)

    def _attempt(self, artifacts: bool) -> bool:
        try:
            self.sync.run(artifacts=artifacts)
        except Exception as exc:  # noqa: BLE001 - the server's trouble never stops the training
            self.failed = _why(exc)
            if not self._told:
                self._told = True
                self.messages.put(
                    f"MLflow: cannot log to {self.uri} ({self.failed}); training goes on, what "
                    f"is not logged waits in {self.folder.path} and is retried every "
                    f"{RETRY_SECONDS:.0f} s")
            return False
        if self.failed is not None:
            self.messages.put(f"MLflow: {self.uri} answers again; caught up")
        self.failed = None
        return True

    def finish(self, status: Status, code: int) -> list[str]:
        """End the launch's records, upload the rest and the artifacts; lines for the view."""
        self._stop.set()
        self._wake.set()  # out of its idle wait at once
        self._thread.join(FINAL_SECONDS)
        _append(self.folder, end_record(status, code))
        if self._thread.is_alive():  # its request still hangs: the rest waits for `track`
            self.failed = self.failed or f"no answer within {FINAL_SECONDS:.0f} s"
        else:
            try:
                self._attempt(artifacts=True)
            except KeyboardInterrupt:  # Ctrl-C while uploading: the rest waits for `track`
                self.failed = "interrupted"
        said = self.said() if self.failed is None else []  # else the last line says it all
        return [*said, *self.sync.notes, *done_lines(self.sync, self.failed)]


def done_lines(sync: Sync, failed: str | None) -> list[str]:
    if failed is not None:
        return [f"MLflow: not everything reached {sync.uri} ({failed})",
                f"  nothing is lost: upload the rest with: hvdtrain track "
                f"{shlex.quote(str(sync.folder.path))}"]
    experiment = sync.state.get("experiment_id")
    where = (f"{sync.uri.rstrip('/')}/#/experiments/{experiment}/runs/{sync.run_id}"
             if sync.uri.startswith(("http://", "https://")) else sync.uri)
    return [f"MLflow: logged as run {sync.run_id} of experiment {experiment}: {where}"]


def track_uri(folder: RunDir, given: str | None) -> str:
    """--uri, else the run's tracking.uri, else MLFLOW_TRACKING_URI, else the one server the run
    was logged to."""
    try:
        recipe_uri = folder.read_recipe().tracking.uri
    except (OSError, ValueError):
        recipe_uri = None
    known = list(servers(folder))
    for uri, where in ((given, "--uri"), (recipe_uri, "tracking.uri"),
                       (os.environ.get("MLFLOW_TRACKING_URI"), "MLFLOW_TRACKING_URI"),
                       (known[0] if len(known) == 1 else None, "")):
        if uri:
            problem = tracking_uri_problem(uri, where) if where else None
            if problem:
                raise UserError(problem)
            return uri
    raise UserError("no MLflow server is named: give --uri (e.g. --uri http://127.0.0.1:5000) "
                    "or set MLFLOW_TRACKING_URI")


def track_command(*, run_dir: str, uri: str | None, as_json: bool) -> int:
    """`hvdtrain track`: upload what a run's launches could not (or all of an untracked run)."""
    import importlib.util

    from rich.console import Console

    from hvdtrain.launcher.after import open_run
    from hvdtrain.launcher.checks import in_use
    from hvdtrain.manifest import status_of

    folder = open_run(run_dir)
    info = folder.read_manifest() or {}
    if folder.in_use():
        raise UserError(in_use(run_dir, info.get("launcher_pid")),
                        ["(a running launch logs to MLflow itself: track the run after it ends)"])
    target = track_uri(folder, uri)
    if importlib.util.find_spec("mlflow") is None:
        raise UserError("MLflow is not installed here: pip install 'hvdtrain[mlflow]'")
    records = _records(folder)
    if not records:  # never tracked: log it now, as a launch would have
        recipe = folder.read_recipe()
        open_records(folder, info, recipe, str(info.get("recipe") or folder.path.name))
    if not records or records[-1].get("kind") != "end":  # its launcher was killed (-9)
        status = status_of(info, alive=False)
        code = info.get("exit_status")
        _append(folder, end_record(status, code if isinstance(code, int) else -1))
    sync = Sync(folder, target)
    try:
        with Console(stderr=True).status(f"track: uploading {folder.path} to {target}"):
            sync.run(artifacts=True)
    except Exception as exc:  # noqa: BLE001 - said with what to do, kept for the next try
        raise TrackFailed(f"could not log to {target}: {_why(exc)}",
                          [f"nothing is lost: run `hvdtrain track {shlex.quote(run_dir)}` again "
                           "when the server answers"]) from None
    result = {"run_dir": str(folder.path), "uri": target, "run_id": sync.run_id,
              "experiment_id": sync.state.get("experiment_id"), **sync.sent, "notes": sync.notes}
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join([f"track: sent {sync.sent['records']} record(s), {sync.sent['points']} "
                         f"metric point(s), {sync.sent['artifacts']} artifact(s)", *sync.notes,
                         *done_lines(sync, None)]))
    return 0


class TrackFailed(UserError):
    """The server could not take the upload (not bad input): exit 1, run it again later."""

    exit_code = 1
