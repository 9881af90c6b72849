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
    assert [r.label for r in runs] == ["np=1, horovod.compression=fp16",
                                       "np=2, horovod.compression=none (still running)"]
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


def test_readers_skip_what_they_cannot_read_and_say_so(tmp_path: Path, in_cli) -> None:
    """Binary bytes, records missing a field or of the wrong type, manifest fields of the wrong
    type, a bad slurm.json: counted or listed as unreadable, never a traceback; a legend names
    every setting the runs differ in; the loss axis is logarithmic."""
    a = make_run(tmp_path / "runs" / "a", 1, "fp16", [0.5, 0.8],
                 tail='{"event": "epoch", "epoch": 3}\n{"event": "epoch", "epoch": "x"}\n')
    with (a / "metrics.jsonl").open("ab") as f:
        f.write(b"\x00\xff\xfe binary\n")
    b = make_run(tmp_path / "runs" / "b", 1, "none", [0.6, 0.7])
    manifest = json.loads((b / "manifest.json").read_text())
    manifest.update(hosts=7, np="two", start_time=12)  # edited by hand, badly
    manifest["recipe_resolved"]["train"]["epochs"] = 5
    (b / "manifest.json").write_text(json.dumps(manifest))
    queued = tmp_path / "runs" / "q"
    (queued / "logs").mkdir(parents=True)
    for name, text in (("recipe.yaml", "train: {epochs: 2}\n"), ("job.sbatch", "#!/bin/sh\n"),
                       ("slurm.json", "[1, 2]")):
        (queued / name).write_text(text)
    rows = {r["name"]: r for r in json.loads(in_cli("runs", str(tmp_path / "runs"),
                                                     "--json").stdout)}
    assert rows["a"]["epochs_done"] == 2 and rows["b"]["hosts"] == [] and rows["b"]["np"] is None
    assert rows["q"]["status"] == "unreadable (slurm.json is not one hvdtrain sbatch wrote)"
    assert in_cli("runs", str(tmp_path / "runs")).returncode == 0
    runs = [load_run(str(a)), load_run(str(b))]
    assert [len(r.epochs) for r in runs] == [2, 2] and runs[0].skipped_lines == 3
    name_runs(runs)
    assert [r.label for r in runs] == ["np=1, horovod.compression=fp16, train.epochs=3",
                                       "np=two, horovod.compression=none, train.epochs=5"]
    assert figure(runs).axes[0].get_yscale() == "log"
    proc = in_cli("report", str(a), "-o", str(tmp_path / "out.txt"))
    assert (proc.returncode, proc.stderr) == (2, f"error: -o {tmp_path / 'out.txt'}: the report "
                                                 "is a PNG picture: give a path ending in .png\n")
    assert not (tmp_path / "out.txt").exists() and not (tmp_path / "out.txt.png").exists()
