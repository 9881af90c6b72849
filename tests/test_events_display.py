"""The worker->CLI event protocol and the renderers, fed with recorded horovodrun output."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import ROOT
from rich.console import Console

from hvdtrain.launcher.runview import LiveView, PlainView
from hvdtrain.events import MARKER, SCHEMA, encode, parse_line
from hvdtrain.launcher.prelaunch import make_plan
from hvdtrain.recipe_files import load_recipe

RECORDED = (ROOT / "tests" / "data" / "recorded_digits_np2.txt").read_text().splitlines(True)
STEP = {"epoch": 1, "step": 1, "steps": 22, "global_step": 1, "loss": 2.3, "acc": 0.1, "lr": 0.1,
        "images_per_s": 2000.0}
EPOCH = {"epoch": 1, "epochs": 2, "train_loss": 2.2, "train_acc": 0.2, "eval_loss": None,
         "eval_acc": None, "seconds": 0.5, "images_per_s": 2000.0, "data_wait_share": 0.0,
         "lr": 0.1, "global_step": 22, "world_size": 2}


def recorded(kind: str) -> dict:
    """The first ``kind`` event of the recorded run (a complete event of the current schema)."""
    return next(e for raw in RECORDED for e in parse_line(raw).events if e["event"] == kind)


def test_encode_and_parse_round_trip_with_gloo_and_mpi_prefixes() -> None:
    line = encode("step", **{**STEP, "loss": float("nan")})
    assert line.startswith(MARKER)
    gloo = parse_line(f"[0]<stdout>:{line}\n")
    assert (gloo.rank, gloo.stream, gloo.problems) == (0, "stdout", ())
    assert gloo.events == ({"event": "step", **STEP, "loss": "nan"},)
    mpi = parse_line(f"[1,3]<stdout>:{line}")
    assert (mpi.rank, [e["event"] for e in mpi.events]) == (3, ["step"])


def test_fast_progress_events_share_writes_and_none_is_lost(monkeypatch) -> None:
    from hvdtrain import events

    writes: list[str] = []
    monkeypatch.setattr(events.sys, "stdout", type("Out", (), {
        "write": lambda self, text: writes.append(text), "flush": lambda self: None})())
    monkeypatch.setattr(events, "_stream", events._Stream())
    events.emit("step", **{**STEP, "step": 1})  # the first write of the process goes out at once
    events.emit("step", **{**STEP, "step": 2})  # within HOLD of it: held
    events.emit("step", **{**STEP, "step": 3})
    assert len(writes) == 1
    events.emit("beat", rank=0, phase="step", epoch=1, step=3)  # any other kind writes at once, after the held lines
    assert len(writes) == 2
    # one line per write, so horovodrun's relay forwards (and hvdtrain wakes for) one line
    assert writes[1].endswith("\n") and writes[1].count("\n") == 1
    assert [e["event"] for e in parse_line(writes[1]).events] == ["step", "step", "beat"]
    assert [e["step"] for e in parse_line(writes[1]).events] == [2, 3, 3]
    events.emit("step", **{**STEP, "step": 4})
    events.emit("epoch", **EPOCH)  # progress too: held (digits' epochs are ~0.2 s)
    events.emit("checkpoint", epoch=1, step=0, path="p")
    assert len(writes) == 2
    events.flush()  # the worker's last word before it exits
    monkeypatch.setattr(events.time, "monotonic", lambda: 1e12)  # long after the last write
    events.emit("step", **{**STEP, "step": 5})
    assert all(w.count("\n") == 1 for w in writes)
    lines = [e for w in writes for e in parse_line(w).events]
    assert [(e["event"], e.get("step")) for e in lines] == [
        ("step", 1), ("step", 2), ("step", 3), ("beat", 3), ("step", 4), ("epoch", None),
        ("checkpoint", 0), ("step", 5)] and len(writes) == 4


def test_tensorboard_summaries_are_held_and_forced_out_at_the_end() -> None:
    from hvdtrain.worker.board import Board

    calls: list = []
    writer = type("W", (), {"flush": lambda self: calls.append("flush")})()
    writer.file_writer = type("F", (), {"add_summary": lambda self, s, step: calls.append(step)})()
    board = Board(writer)
    board.scalars(1, train__loss=0.5)  # the first goes to the writer at once
    board.scalars(2, train__loss=0.4, eval__loss=None)  # within HOLD of it: held
    assert calls == [1]
    board.flush()  # the first epoch end flushes
    board.scalars(3, train__loss=0.3)
    board.flush()  # the next, within HOLD: later
    assert calls == [1, 2, "flush"]
    board.flush(force=True)  # the last epoch, a stop, a divergence
    assert calls == [1, 2, "flush", 3, "flush"]


def test_handing_summaries_to_tensorboard_never_waits_for_its_writer_thread(tmp_path: Path,
                                                                            monkeypatch) -> None:
    """SummaryWriter's queue held 10 records by default: handing over a held batch then waited for
    the writer thread record by record, and the two threads passed the GIL back and forth (~90
    switches a second of the writer thread on digits at np=1). Here the writer thread is stuck
    until the hand-over returns."""
    import threading

    from tensorboard.summary.writer import record_writer

    from hvdtrain.worker import board as board_module

    release, written = threading.Event(), []
    real_write = record_writer.RecordWriter.write

    def stuck_write(self, data):
        release.wait(30)
        written.append(len(data))
        real_write(self, data)

    board = board_module.open_board(tmp_path / "tb", True, 0, 0)
    monkeypatch.setattr(record_writer.RecordWriter, "write", stuck_write)
    for step in range(1, 501):  # ~8 s of digits' log windows, all held
        board.held.append((_loss_summary(step), step))
    done = threading.Event()
    threading.Thread(target=lambda: (board._hand_over(), done.set()), daemon=True).start()
    assert done.wait(10), "the hand-over waited for TensorBoard's writer thread"
    release.set()
    board.flush(force=True)
    assert len(written) == 500  # every summary reached the file


def _loss_summary(step: int):
    from tensorboard.compat.proto.summary_pb2 import Summary

    return Summary(value=[Summary.Value(tag="train/loss", simple_value=1.0 / step)])


def test_non_events_pass_through_untouched() -> None:
    assert parse_line("[1]<stderr>:Traceback (most recent call last):\n").events == ()
    done = encode("done", **{k: v for k, v in recorded("done").items() if k != "event"})
    assert parse_line(f"[1]<stderr>:{done}").events == ()  # events only on stdout
    launcher = parse_line("Process 1 exit with status code 1.")
    assert (launcher.rank, launcher.stream, launcher.events) == (None, "launcher", ())
    assert parse_line(f"[0]<stdout>:{MARKER}{{not json").events == ()
    assert parse_line(f'[0]<stdout>:{MARKER}{{"event": "rm -rf"}}').events == ()
    # a shared write: an array of events; what is not an event in it is left out
    step, epoch = json.dumps({"event": "step", **STEP}), json.dumps({"event": "epoch", **EPOCH})
    mixed = parse_line(f'[0]<stdout>:{MARKER}[{step}, 3, {{"event": "rm -rf"}}, {epoch}]')
    assert [e["event"] for e in mixed.events] == ["step", "epoch"]
    assert parse_line(f"[0]<stdout>:{MARKER}[]").events == ()
    with pytest.raises(ValueError, match="unknown event kind 'bogus'"):
        encode("bogus")


def test_a_malformed_event_names_the_field() -> None:
    """The worker refuses to send it; the launcher that receives one leaves it out and says why."""
    with pytest.raises(ValueError, match="step event: missing field 'images_per_s'"):
        encode("step", **{k: v for k, v in STEP.items() if k != "images_per_s"})
    with pytest.raises(ValueError, match="checkpoint event: unexpected field 'pth'"):
        encode("checkpoint", epoch=1, step=0, path="p", pth="p")
    renamed = {"event": "step", **{("img_s" if k == "images_per_s" else k): v
                                   for k, v in STEP.items()}}
    line = parse_line(f"[0]<stdout>:{MARKER}{json.dumps(renamed)}")
    assert line.events == ()
    assert line.problems == ("step event: missing field 'images_per_s'",
                             "step event: unexpected field 'img_s'")
    assert parse_line(f'[0]<stdout>:{MARKER}{{"event": "rm -rf"}}').problems == (
        "unknown event kind 'rm -rf' (field 'event'; known: start, resumed, step, epoch, "
        "checkpoint, best, warning, error, done, beat, reset, stopped, bench, profile, link)",)
    assert parse_line(f"[0]<stdout>:{MARKER}{{not json").problems == (
        "event line is not JSON (Expecting property name enclosed in double quotes at column 2)",)
    assert parse_line("[1]<stderr>:Traceback (most recent call last):").problems == ()


def test_a_start_event_of_another_schema_says_so() -> None:
    start = {**recorded("start"), "schema": SCHEMA + 1}
    line = parse_line(f"[0]<stdout>:{MARKER}{json.dumps(start)}")
    assert line.events == () and line.problems == (
        f"start event: field 'schema' is {SCHEMA + 1}, this hvdtrain reads {SCHEMA}: the workers "
        "run another hvdtrain version (install the same one on every host)",)


def test_every_recorded_event_is_well_formed() -> None:
    """The recorded run is the display tests' input: it must be of the current schema."""
    assert [p for raw in RECORDED for p in parse_line(raw).problems] == []


def test_recorded_output_parses_into_the_expected_event_sequence() -> None:
    lines = [parse_line(raw) for raw in RECORDED]
    kinds = [e["event"] for ln in lines for e in ln.events]
    assert kinds == ["start", "step", "step", "epoch", "checkpoint", "step", "step", "epoch",
                     "checkpoint", "done"]
    plain = [ln for ln in lines if not ln.events]
    assert [(ln.rank, ln.text) for ln in plain] == [(0, "plain worker output from rank startup"),
                                                    (1, "plain worker output from rank startup")]
    (done,) = lines[-1].events
    assert done["replicas_identical"] is True and len(set(done["param_hashes"])) == 1


def _plan(tmp_path: Path):
    return make_plan(load_recipe("digits-cnn", ["train.epochs=2"]), np=2, run_dir=tmp_path,
                      python="/py", horovodrun="horovodrun")


def replay(view) -> None:
    view.begin()
    for raw in RECORDED:
        line = parse_line(raw)
        for event in line.events:
            view.event(event)
        if not line.events:
            view.output(line)
    view.output(parse_line("[1]<stderr>:a warning from rank 1"))
    view.end(0)


def test_plain_view_prints_log_lines_without_control_codes(tmp_path: Path) -> None:
    out = io.StringIO()
    replay(PlainView(_plan(tmp_path), out))
    text = out.getvalue()
    assert "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == "hvdtrain run digits-cnn: 2 workers on localhost:2"
    assert "[rank 1] plain worker output from rank startup" in lines
    assert "[rank 1] a warning from rank 1" in lines
    assert any(ln.startswith("epoch 1 step 11/22: loss 2.3034 acc 10.94% lr 0.15 ") for ln in lines)
    assert any(ln.startswith("epoch 2/2: train loss 1.3950 acc 50.99% | eval loss 0.8214 acc 74.44% |")
               for ln in lines)
    assert "started: 2 ranks on vm, 89,930 parameters on cpu in fp32, gradients float16 on the " \
           "wire (179,860 of 359,720 bytes)" in lines
    assert lines[-1] == (f"finished: eval accuracy 74.44%, model replicas identical on all ranks; "
                         f"run dir {tmp_path}")


def test_live_view_draws_bars_and_the_summary_table(tmp_path: Path) -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=140, color_system=None)
    view = LiveView(_plan(tmp_path), console)
    replay(view)
    text = buf.getvalue()
    assert "\x1b[" in text  # drawn live: cursor movement
    for expected in ("epoch", "step", "eval acc 74.44%", "train loss", "images/s", "74.44%",
                     "rank 1", "a warning from rank 1", "finished: eval accuracy 74.44%"):
        assert expected in text, expected
    assert view.progress.tasks[0].completed == 2 and view.progress.tasks[0].total == 2


def test_live_view_is_never_silent_before_the_first_event(tmp_path: Path) -> None:
    """Between the header and rank 0's start event (6-8 s on 2 cores) a pulsing bar with the
    elapsed time; then the epoch and step bars, with elapsed time and an ETA."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=140, color_system=None)
    view = LiveView(_plan(tmp_path), console)
    view.begin()
    (task,) = view.progress.tasks
    assert (task.description, task.total) == ("start", None)
    assert task.fields["stats"].startswith("starting 2 worker(s): horovodrun, torch, data")
    view.progress.refresh()
    assert "0:00:0" in buf.getvalue()  # the elapsed time is drawn
    view.event(next(e for raw in RECORDED for e in parse_line(raw).events))
    assert [t.description for t in view.progress.tasks] == ["epoch", "step"]
    view.end(0)


def test_run_json_view_is_json_lines(tmp_path: Path) -> None:
    from hvdtrain.launcher.runview import JsonView

    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        view = JsonView(_plan(tmp_path))
        view.begin()
        for raw in RECORDED:
            line = parse_line(raw)
            for event in line.events:
                view.event(event)
        view.end(0)
    records = [json.loads(x) for x in out.getvalue().splitlines()]
    assert records[0]["event"] == "plan" and records[-1] == {"event": "exit", "code": 0,
                                                             "run_dir": str(tmp_path), "failure": [],
                                                             "notes": []}
    assert [r["event"] for r in records[1:-1]][:2] == ["start", "step"]


def test_the_launcher_warns_once_when_the_eval_loss_explodes(tmp_path: Path) -> None:
    """The stream of rank 0's events -> divergence warning on screen and in the manifest."""
    from hvdtrain.launcher.launch import RankLogs, _Stream
    from hvdtrain.rundir import RunDir

    out, info = io.StringIO(), {}
    plan = _plan(tmp_path)
    view = PlainView(plan, out)
    with RankLogs(RunDir(tmp_path), 2) as logs:
        stream = _Stream(plan, info, view, io.StringIO(), logs)
        stream.feed(f"[0]<stdout>:{encode('start', **{**recorded('start'), 'num_classes': 3})}\n")
        for epoch, loss in ((1, 19.0), (2, 5854.0), (3, 36567.0)):
            e = {**recorded("epoch"), "epoch": epoch, "eval_loss": loss, "eval_acc": 1 / 3}
            stream.feed(f"[0]<stdout>:{encode('epoch', **e)}\n")
    warnings = [ln for ln in out.getvalue().splitlines() if ln.startswith("warning: ")]
    assert warnings == [f"warning: {info['diverged']}"]
    assert info["diverged"].startswith(
        "training is diverging: the eval loss rose from 19 (epoch 1) to 5,854 (epoch 2); accuracy "
        "33.3% (chance for 3 classes: 33.3%). Likely fix: the learning rate is likely too high")
