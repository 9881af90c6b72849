"""`hvdtrain eval`, `predict` and `export`, the launcher half: check what can be checked without
torch (the run directory, the checkpoint, the output path), start the inference process
(``python -m hvdtrain.worker.after``, under horovodrun for `eval --np N`) in its own process
group, and draw the JSON it leaves. The checkpoint's model card tells that process everything
else (hvdtrain/card.py)."""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from hvdtrain.errors import UserError
from hvdtrain.launcher import scores
from hvdtrain.launcher.helpers import run_helper
from hvdtrain.launcher.plan import default_horovodrun
from hvdtrain.rundir import RunDir

TIMEOUT = 7 * 24 * 3600.0  # a large set may take long; Ctrl-C still ends the group at once


class ChildFailed(UserError):
    """The inference process crashed (not bad input): its traceback is shown."""

    exit_code = 1


def open_run(path: str) -> RunDir:
    folder = RunDir(Path(path).expanduser())
    info = folder.read_manifest() if folder.path.is_dir() else None
    if not isinstance(info, dict) or "argv" not in info:
        raise UserError(f"{path} is not an hvdtrain run directory (no readable manifest.json): "
                        "give a directory `hvdtrain run` created (see `hvdtrain runs`)")
    return folder


def checkpoints(folder: RunDir, which: str | None) -> list[Path]:
    """The checkpoint files to try, the preferred first: ``best`` (checkpoints/best.pt), ``last``
    (the newest, then older ones, as --resume falls back), or a file; default best, else last."""
    best = folder.best_checkpoint
    if which == "best" or (which is None and best.is_file()):
        if not best.is_file():
            raise UserError(f"{best}: missing: no evaluated epoch has finished yet (or an older "
                            "hvdtrain trained the run): use --checkpoint last")
        return [best]
    if which in (None, "last"):
        found = [p for _, p in reversed(folder.list_checkpoints())]
        if not found:
            raise UserError(f"no checkpoint in {folder.checkpoints}: the run has not written one "
                            "yet (train.checkpoint_every), or they were deleted")
        return found
    path = Path(which).expanduser()
    if not path.is_file():
        raise UserError(f"--checkpoint {which}: no such file: give best, last or a checkpoint "
                        "file")
    return [path]


def output_path(value: str | None, option: str) -> Path | None:
    """Where a file will be written: refused when it is a directory or its folder is missing."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_dir():
        raise UserError(f"{option} {value}: is a directory: give a file path")
    if not path.parent.is_dir():
        raise UserError(f"{option} {value}: the folder {path.parent} does not exist: create it "
                        "first")
    return path


def run_child(command: str, files: list[Path], extra: list[str], np: int = 1,
              what: str | None = "") -> dict[str, Any]:
    """Run the inference process and return its result; bad input it found is a UserError.
    ``what``: the spinner's text on stderr; None: no spinner (the run's own view is drawing)."""
    with tempfile.TemporaryDirectory(prefix="hvdtrain-after-") as tmp:
        out = Path(tmp) / "result.json"
        argv = [sys.executable, "-m", "hvdtrain.worker.after", command, "--out", str(out),
                *(f"--checkpoint={p.resolve()}" for p in files), *extra]
        if np > 1:
            argv = [default_horovodrun(), "-np", str(np), "-H", f"localhost:{np}", "--gloo",
                    *argv]
        if what is None:
            ran = run_helper(argv, timeout=TIMEOUT)
        else:
            with Console(stderr=True).status(what or f"{command}: loading the model"):
                ran = run_helper(argv, timeout=TIMEOUT)
        result = json.loads(out.read_text()) if out.is_file() else None
    if isinstance(result, dict) and result.get("ok") is False:
        lines = result.get("error") or ["the inference process refused its input"]
        raise UserError(lines[0], lines[1:])
    if ran.code != 0 or not isinstance(result, dict):
        tail = (ran.stderr.strip() or ran.stdout.strip() or "(no output)").splitlines()[-15:]
        raise ChildFailed(f"{command} failed (exit code {ran.code}):", tail)
    return result


def eval_command(*, run_dir: str, data: str | None, checkpoint: str | None, np: int,
                 out: str | None, as_json: bool) -> int:
    """Score a checkpoint; print the numbers, per-class scores and the confusion matrix."""
    folder = open_run(run_dir)
    files, png = checkpoints(folder, checkpoint), output_path(out, "-o")
    if np < 1:
        raise UserError(f"--np {np}: give 1 or more processes")
    if data is not None and not Path(data).expanduser().is_dir():
        raise UserError(f"--data {data}: no such folder")
    extra = ["--data", str(Path(data).expanduser().resolve())] if data else []
    result = run_child("eval", files, extra, np, what=f"eval: scoring on {np} process(es)")
    result["per_class"] = scores.per_class(result["confusion"], result["classes"])
    if png is not None:
        scores.confusion_png(result["confusion"], result["classes"], png)
        result["png"] = str(png)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        Console(highlight=False, soft_wrap=True).print("\n".join(eval_lines(result)),
                                                       markup=False)
    return 0


def eval_lines(r: dict[str, Any]) -> list[str]:
    lines = [f"eval: {r['checkpoint']} (epoch {r['epoch']}) on {r['split']}: {r['samples']:,} "
             f"samples on {r['world_size']} process(es)",
             f"  loss {r['loss']:.4f}  top-1 {100 * r['top1']:.2f}%  top-{r['k']} "
             f"{100 * r['topk']:.2f}%"]
    if r.get("card_eval_acc") is not None and r["split"] == "the run's held-out split":
        lines.append(f"  (the run reported eval accuracy {100 * r['card_eval_acc']:.2f}% for these "
                     "weights)")
    if r["skipped_images"]:
        lines.append(f"  skipped {r['skipped_images']} image(s) that failed to decode, e.g. "
                     f"{r['skipped_example']}")
    lines += r["skipped_checkpoints"] and [f"  skipped: {s}" for s in r["skipped_checkpoints"]]
    lines += ["", *scores.per_class_lines(r["per_class"]), "",
              "confusion matrix (rows: true class, columns: predicted class):",
              *scores.confusion_lines(r["confusion"], r["classes"])]
    return lines + ([f"confusion matrix image: {r['png']}"] if r.get("png") else [])


def predict_command(*, run_dir: str, inputs: list[str], checkpoint: str | None, top_k: int,
                    as_json: bool, as_csv: bool) -> int:
    """Classify files; exit 1 when any of them could not be read (the others are printed)."""
    folder = open_run(run_dir)
    files = checkpoints(folder, checkpoint)
    if top_k < 1:
        raise UserError(f"--top-k {top_k}: give 1 or more")
    if not inputs:
        raise UserError("give the image files (or .npy arrays), or folders of them, to classify")
    if as_json and as_csv:
        raise UserError("--json and --csv: choose one")
    paths = [str(Path(p).expanduser().resolve()) for p in inputs]
    result = run_child("predict", files, ["--top-k", str(top_k),
                                          *(f"--input={p}" for p in paths)])
    records = result["predictions"]
    if as_json:
        print(json.dumps(result, indent=2))
    elif as_csv:
        write_csv(records)
    else:
        Console(highlight=False, soft_wrap=True).print(
            "\n".join(predict_lines(result)), markup=False)
    return 1 if any("error" in r for r in records) else 0


def predict_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"predict: {result['checkpoint']} (epoch {result['epoch']})"]
    for r in result["predictions"]:
        if "error" in r:
            lines.append(f"{r['file']}: cannot read it: {r['error']}")
        else:
            lines.append(f"{r['file']}: " + ", ".join(f"{t['class']} {100 * t['probability']:.1f}%"
                                                       for t in r["top"]))
    return lines


def write_csv(records: list[dict[str, Any]]) -> None:
    """One row per file and rank: file, rank, class, index, probability, error."""
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["file", "rank", "class", "index", "probability", "error"])
    for r in records:
        if "error" in r:
            out.writerow([r["file"], "", "", "", "", r["error"]])
        for n, t in enumerate(r.get("top", []), 1):
            out.writerow([r["file"], n, t["class"], t["index"], f"{t['probability']:.6f}", ""])


FORMATS = {"safetensors": ".safetensors", "torch-export": ".pt2", "onnx": ".onnx"}


def export_command(*, run_dir: str, checkpoint: str | None, fmt: str, out: str | None,
                   as_json: bool) -> int:
    """Export a checkpoint's model, verified against the checkpoint before it is reported done."""
    folder = open_run(run_dir)
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    files = checkpoints(folder, checkpoint)
    path = output_path(out, "-o")
    if path is None:  # RUN_DIR/export/<checkpoint name>.<format's suffix>
        path = folder.path / "export" / (files[0].stem + FORMATS[fmt])
        path.parent.mkdir(exist_ok=True)
    result = run_child("export", files, ["--format", fmt, "--output", str(path.resolve())],
                       what=f"export: writing and checking {fmt}")
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(f"exported {result['checkpoint']} (epoch {result['epoch']}) as {fmt}: "
              f"{result['output']} ({result['bytes']:,} bytes) and {result['sidecar']}\n"
              f"  checked: reloaded, outputs within {result['max_abs_diff']:.2g} of the "
              f"checkpoint's on a batch of {result['check_batch']} (tolerance "
              f"{result['tolerance']:g})")
    return 0
