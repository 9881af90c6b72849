"""`hvdtrain report`: a PNG drawn from the run directories' metrics, and a summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from hvdtrain.errors import UserError
from hvdtrain.launcher.report import figure, load_run, name_runs, report


def make_run(folder: Path, np: int, compression: str, accs: list[float],
             status: str = "finished", tail: str = "") -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({
        "recipe": "digits-cnn", "argv": ["horovodrun"], "np": np, "status": status,
        "hosts": [{"host": "localhost", "slots": np}], "start_time": "2026-11-25T08:00:00+0000",
        "end_time": "2026-11-25T08:00:12+0000",
        "recipe_resolved": {"horovod": {"compression": compression}, "train": {"epochs": 3}}}))
    lines = []
    for i, acc in enumerate(accs):
        lines.append({"event": "step", "epoch": i + 1, "step": 5, "global_step": 5 * (i + 1),
                      "loss": 1.0 / (i + 1), "acc": acc, "lr": 0.1 * (i + 1)})
        lines.append({"event": "epoch", "epoch": i + 1, "train_loss": 1.0 / (i + 1),
                      "train_acc": acc - 0.05, "eval_loss": 0.9 / (i + 1), "eval_acc": acc,
                      "seconds": 1.0, "images_per_s": 1000.0 * np, "global_step": 5 * (i + 1)})
    (folder / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n" + tail)
    return folder


def test_report_draws_the_runs_data_and_names_runs_by_what_differs(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", 1, "fp16", [0.5, 0.8, 0.9])
    b = make_run(tmp_path / "b", 2, "none", [0.6, 0.85, 0.97], status="running",
                 tail='{"event": "epo')  # a line cut off by a killed writer
    runs = [load_run(str(a)), load_run(str(b))]
    name_runs(runs)
    assert [r.label for r in runs] == ["np=1, compression=fp16",
                                       "np=2, compression=none (still running)"]
    fig = figure(runs)
    acc_axis = fig.axes[1]
    eval_lines = [ln for ln in acc_axis.get_lines() if ln.get_label().endswith(" eval")]
    assert [list(ln.get_ydata()) for ln in eval_lines] == [[0.5, 0.8, 0.9], [0.6, 0.85, 0.97]]
    lr_axis = fig.axes[2]
    assert [list(ln.get_ydata()) for ln in lr_axis.get_lines()][1] == pytest.approx([0.1, 0.2, 0.3])
    png, rows = report([str(a), str(b)], str(tmp_path / "out.png"))
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == (1200, 800)
    assert png.stat().st_size > 20_000
    assert [(r["best_eval_acc"], r["final_eval_acc"], r["unreadable_lines"]) for r in rows] == [
        (0.9, 0.9, 0), (0.97, 0.97, 1)]


def test_report_refuses_what_is_not_a_run(tmp_path: Path, in_cli) -> None:
    with pytest.raises(UserError, match=r"is not an hvdtrain run directory"):
        report([str(tmp_path)], None)
    empty = make_run(tmp_path / "empty", 1, "fp16", [])
    proc = in_cli("report", str(empty))
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (f"error: nothing to plot: no completed epoch in {empty} (a run shows up "
                           "here after its first epoch)\n")


def test_report_command_writes_beside_a_single_run(tmp_path: Path, in_cli) -> None:
    run = make_run(tmp_path / "r", 2, "fp16", [0.7, 0.9])
    proc = in_cli("report", str(run), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["png"] == str(run / "report.png") and (run / "report.png").stat().st_size > 0
    assert data["runs"][0]["np"] == 2 and data["runs"][0]["wall_seconds"] == 12
