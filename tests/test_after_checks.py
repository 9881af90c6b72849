"""`eval` / `predict` before the inference process starts, and the pure parts they draw with:
per-class scores, the 80-column confusion matrix, class matching by name, the model card's
checks, the LR of every step (TensorBoard and report). No torch in the launcher, no launch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hvdtrain.card import CARD_FORMAT, card_problems
from hvdtrain.errors import UserError
from hvdtrain.imagefolder import labelled
from hvdtrain.launcher.scores import confusion_lines, per_class, per_class_lines, short_count


def test_per_class_scores_from_the_confusion_matrix() -> None:
    # rows: true class, columns: predicted; class 2 is never predicted and has no samples
    rows = per_class([[3, 1, 0], [2, 4, 0], [0, 0, 0]], ["a", "b", "c"])
    assert rows[0] == {"class": "a", "index": 0, "precision": 0.6, "recall": 0.75,
                       "f1": pytest.approx(2 * 0.6 * 0.75 / 1.35), "support": 4}
    assert (rows[1]["precision"], rows[1]["recall"], rows[1]["support"]) == (0.8, 4 / 6, 6)
    assert rows[2] == {"class": "c", "index": 2, "precision": None, "recall": None, "f1": None,
                       "support": 0}
    assert per_class([[0, 2], [0, 0]], ["x", "y"])[1]["f1"] is None  # y: predicted, no samples
    assert per_class([[0, 2], [1, 0]], ["x", "y"])[0]["f1"] == 0.0
    assert per_class_lines(rows) == ["class  precision  recall      F1  support",
                                     "a          60.0%   75.0%   66.7%        4",
                                     "b          80.0%   66.7%   72.7%        6",
                                     "c              -       -       -        0"]


@pytest.mark.parametrize(("n", "text"), [(0, "0"), (999, "999"), (1000, "1.0k"), (1234, "1.2k"),
                                         (9949, "9.9k"), (9950, "10k"), (120_400, "120k"),
                                         (999_499, "999k"), (999_500, "1.0M"), (12_345_678, "12M"),
                                         (3 * 10**9, "3.0G")])
def test_counts_fit_four_characters(n: int, text: str) -> None:
    assert short_count(n) == text and len(text) <= 4


def test_the_confusion_matrix_fits_80_columns_and_says_what_it_left_out() -> None:
    names = [f"class-with-a-long-name-{i}" for i in range(30)]
    m = [[100_000 if i == j else 0 for j in range(30)] for i in range(30)]
    m[17][3] = m[5][17] = 7  # the classes with errors are the ones kept
    m[29][28] = 1234
    lines = confusion_lines(m, names)
    assert max(len(line) for line in lines) <= 80
    # the 5 classes with errors, then the lowest indices: 13 columns fit beside the labels
    assert lines[0].split()[3:] == [str(i) for i in [*range(10), 17, 28, 29]]
    assert lines[-1] == "(17 classes with fewer errors left out; all of them: --json, -o PNG)"
    row17 = next(line for line in lines if line.startswith("17 "))
    assert row17.startswith("17 class-wit~ ") and row17.split()[5] == "7"
    assert lines[13].split()[-2:] == ["1.2k", "100k"]
    small = confusion_lines([[5, 0], [1, 2]], ["cat", "dog"])
    assert small == ["true \\ pred       0    1", "0 cat             5    0",
                     "1 dog             1    2"]


def test_a_folder_is_matched_to_the_models_classes_by_name(tmp_path: Path) -> None:
    for cls, files in (("dog", ["b.png", "a.JPG", ".hidden.png"]), ("bird", ["x.png"])):
        (tmp_path / "val" / cls).mkdir(parents=True)
        for f in files:
            (tmp_path / "val" / cls / f).write_bytes(b"")
    (tmp_path / "train").mkdir()
    got = labelled(tmp_path, ["bird", "cat", "dog"])  # DIR/val/ is used; cat has no folder
    assert got == [(str(tmp_path / "val/bird/x.png"), 0), (str(tmp_path / "val/dog/a.JPG"), 2),
                   (str(tmp_path / "val/dog/b.png"), 2)]
    assert labelled(tmp_path / "val", ["bird", "cat", "dog"]) == got
    (tmp_path / "val" / "cow").mkdir()
    (tmp_path / "val" / "fox").mkdir()
    with pytest.raises(UserError) as err:
        labelled(tmp_path, ["bird", "cat", "dog"])
    assert err.value.lines() == [
        f"data folder {tmp_path}/val cannot be scored (1 problem):",
        f"{tmp_path}/val: class folder(s) 'cow', 'fox' are not classes of the model (it knows "
        "bird, cat, dog): remove or rename them"]
    with pytest.raises(UserError, match="data folder not found: .*/nope: give a folder"):
        labelled(tmp_path / "nope", ["a"])


def test_a_model_card_is_checked() -> None:
    assert card_problems(None) == [
        "it has no model card (an hvdtrain from before model cards wrote it: resume the run for "
        "one more epoch to write one)"]
    assert card_problems({"format": CARD_FORMAT + 1}) == [
        f"its model card has format {CARD_FORMAT + 1}; this hvdtrain reads up to {CARD_FORMAT}: "
        "install the hvdtrain that wrote it"]
    assert "its model card lacks 'classes'" in card_problems({"format": CARD_FORMAT})


def _run_dir(tmp_path: Path, checkpoints: list[str] = ()) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"argv": ["horovodrun"], "np": 2}))
    for name in checkpoints:
        (run / "checkpoints" / name).write_bytes(b"x")
    return run


@pytest.mark.parametrize(("args", "message"), [
    (["eval", "{d}"], "error: {d} is not an hvdtrain run directory (no readable manifest.json): "
                      "give a directory `hvdtrain run` created (see `hvdtrain runs`)"),
    (["eval", "{run}"], "error: no checkpoint in {run}/checkpoints: the run has not written one "
                        "yet (train.checkpoint_every), or they were deleted"),
    (["eval", "{run}", "--checkpoint", "best"], "error: {run}/checkpoints/best.pt: missing: no "
     "evaluated epoch has finished yet (or an older hvdtrain trained the run): use --checkpoint "
     "last"),
    (["predict", "{run}", "x.png", "--checkpoint", "{d}/gone.pt"],
     "error: --checkpoint {d}/gone.pt: no such file: give best, last or a checkpoint file"),
])
def test_what_eval_and_predict_refuse_without_a_checkpoint(in_cli, tmp_path: Path, args,
                                                           message: str) -> None:
    run = _run_dir(tmp_path)
    proc = in_cli(*[a.format(d=tmp_path, run=run) for a in args])
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == message.format(d=tmp_path, run=run) + "\n"


@pytest.mark.parametrize(("args", "message"), [
    (["eval", "{run}", "-o", "{d}/no/such/c.png"], "error: -o {d}/no/such/c.png: the folder "
                                                   "{d}/no/such does not exist: create it first"),
    (["eval", "{run}", "-o", "{d}"], "error: -o {d}: is a directory: give a file path"),
    (["eval", "{run}", "--np", "0"], "error: --np 0: give 1 or more processes"),
    (["eval", "{run}", "--data", "{d}/nope"], "error: --data {d}/nope: no such folder"),
    (["predict", "{run}", "a.png", "--top-k", "0"], "error: --top-k 0: give 1 or more"),
    (["predict", "{run}", "a.png", "--json", "--csv"], "error: --json and --csv: choose one"),
])
def test_bad_options_are_refused_before_the_model_loads(in_cli, tmp_path: Path, args,
                                                        message: str) -> None:
    run = _run_dir(tmp_path, ["epoch-0001.pt"])
    before = sorted(os.listdir(tmp_path))
    proc = in_cli(*[a.format(d=tmp_path, run=run) for a in args])
    assert proc.returncode == 2
    assert proc.stderr == message.format(d=tmp_path, run=run) + "\n"
    assert proc.stdout == ("" if "--json" not in args else json.dumps(
        {"ok": False, "errors": [message[len("error: "):]]}, indent=2) + "\n")
    assert sorted(os.listdir(tmp_path)) == before  # nothing written


def test_the_checkpoint_choice(tmp_path: Path) -> None:
    from hvdtrain.launcher.after import checkpoints, open_run

    folder = open_run(str(_run_dir(tmp_path, ["epoch-0001.pt", "epoch-0002.pt",
                                              "epoch-0002-step-000004.pt"])))
    last = [folder.checkpoints / n for n in ("epoch-0002-step-000004.pt", "epoch-0002.pt",
                                             "epoch-0001.pt")]
    assert checkpoints(folder, None) == checkpoints(folder, "last") == last  # no best.pt yet
    (folder.checkpoints / "best.pt").write_bytes(b"x")
    assert checkpoints(folder, None) == checkpoints(folder, "best") == [folder.best_checkpoint]
    assert checkpoints(folder, "last") == last  # best.pt is never a resume point


def test_the_report_draws_the_lr_of_every_step_warmup_included(tmp_path: Path) -> None:
    from hvdtrain.launcher.report import load_run, step_lrs
    from hvdtrain.recipe_files import load_recipe
    from hvdtrain.schedule import lr_at
    from hvdtrain.recipe import lr_config

    recipe = load_recipe("digits-cnn").recipe  # warmup 1 epoch; 22 steps an epoch at np=2
    run = _run_dir(tmp_path)
    info = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**info, "recipe_resolved":
                                                   recipe.model_dump(mode="json")}))
    rows = [{"event": "step", "epoch": 1, "step": 20, "steps": 22, "global_step": 20, "lr": 0.2},
            {"event": "step", "epoch": 1, "step": 22, "steps": 22, "global_step": 22, "lr": 0.2},
            {"event": "epoch", "epoch": 1, "train_loss": 1, "train_acc": 0.5, "images_per_s": 9,
             "world_size": 2},
            {"event": "step", "epoch": 2, "step": 22, "steps": 22, "global_step": 44, "lr": 0.1}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    steps, lrs = step_lrs(load_run(str(run)))
    assert steps == list(range(1, 45))
    assert lrs == [lr_at(i, 22, 2, lr_config(recipe)) for i in range(44)]
    assert lrs[0] == pytest.approx(0.1 * (1 + 1 / 22)) and lrs[0] < lrs[10] < lrs[21] == 0.2
    (run / "manifest.json").write_text(json.dumps(info))  # no recipe: the logged points
    assert step_lrs(load_run(str(run))) == ([20, 22, 44], [0.2, 0.2, 0.1])


def test_tensorboard_gets_the_lr_of_every_step() -> None:
    from hvdtrain.worker.board import Board

    class Writer:
        def __init__(self) -> None:
            self.file_writer, self.got = self, []

        def flush(self) -> None:
            pass

        def add_summary(self, summary, step: int) -> None:
            self.got += [(step, v.tag, round(v.simple_value, 6)) for v in summary.value]

    board = Board(Writer(), first_step=3)  # resumed after step 3
    board.learning_rates(6, lambda i: i / 10)
    board.learning_rates(8, lambda i: i / 10)
    board.flush(force=True)
    assert board.writer.got == [(s, "train/lr", round((s - 1) / 10, 6)) for s in range(4, 9)]
