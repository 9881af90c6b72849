"""`hvdtrain report RUN_DIR [RUN_DIR ...]`: one PNG of the curves (loss and accuracy by epoch,
the LR of every step, images/s by epoch), several runs overlaid and named by what differs between them,
and a text summary. It reads only run directories (manifest.json, metrics.jsonl): no torch, no
horovod, so a copied run directory can be looked at anywhere matplotlib is installed."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hvdtrain.errors import UserError
from hvdtrain.launcher.runs import describe
from hvdtrain.manifest import EPOCH_NUMBERS, Manifest, Status, records
from hvdtrain.recipe import Recipe, lr_config
from hvdtrain.rundir import RunDir
from hvdtrain.schedule import LRConfig, lr_at

# Settings that never tell runs apart in a legend; at most this many keys name a run.
IGNORED = ("description", "launch.output_dir")
MAX_LABEL_KEYS = 4


@dataclass
class Run:
    folder: Path
    manifest: Manifest
    steps: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    skipped_lines: int = 0
    label: str = ""

    @property
    def running(self) -> bool:
        return self.manifest.get("status") == Status.RUNNING


def load_run(path: str) -> Run:
    """A run directory's manifest and metrics; lines cut off by a killed writer are counted."""
    folder = RunDir(Path(path))
    manifest = folder.read_manifest()
    if not isinstance(manifest, dict) or "argv" not in manifest:
        raise UserError(f"{path} is not an hvdtrain run directory (no readable manifest.json): "
                        "give directories that `hvdtrain run` created (see `hvdtrain runs`)")
    rows, bad = folder.read_metrics()
    steps, odd_steps = records(rows, "step", ("global_step", "lr"))
    epochs, odd_epochs = records(rows, "epoch", EPOCH_NUMBERS)
    return Run(folder.path, manifest, steps, epochs, bad + odd_steps + odd_epochs)


def _settings(m: Manifest) -> dict[str, Any]:
    """The run's recipe as dotted keys (and np), for telling runs apart."""
    def flat(data: object, prefix: str) -> dict[str, Any]:
        if isinstance(data, dict):
            return {k: v for key, sub in data.items() for k, v in flat(sub, f"{prefix}{key}.")
                    .items()}
        return {prefix.rstrip("."): data}

    recorded = m.get("recipe_resolved")
    out = flat(recorded, "") if isinstance(recorded, dict) else {}
    out = {k: v for k, v in out.items() if not k.startswith(IGNORED)}
    return {"recipe": m.get("recipe"), "np": m.get("np"), **out}


def name_runs(runs: list[Run]) -> None:
    """Label each run by every setting that differs between the runs (at most MAX_LABEL_KEYS,
    else by its directory)."""
    settings = [_settings(r.manifest) for r in runs]
    keys = ["recipe", "np", *sorted({k for s in settings for k in s} - {"recipe", "np"})]
    differing = [k for k in keys if len({json.dumps(s.get(k), default=str) for s in settings}) > 1]
    for r, mine in zip(runs, settings):
        parts = [f"{k}={mine.get(k)}" for k in differing[:MAX_LABEL_KEYS]]
        more = len(differing) - MAX_LABEL_KEYS
        r.label = (", ".join(parts) + (f" (+{more} more)" if more > 0 else "")
                   if parts else r.folder.name)
    labels = [r.label for r in runs]
    for r in runs:
        if labels.count(r.label) > 1 and r.label != r.folder.name:  # same settings: say which
            r.label += f" ({r.folder.name})"
        if r.running:
            r.label += " (still running)"


def recorded_lr_config(info: Manifest) -> LRConfig | None:
    """The LR schedule of the run's recorded recipe; None when the manifest's recipe cannot be
    read (edited, or another hvdtrain's): then only the logged LRs are known."""
    try:
        return lr_config(Recipe.model_validate(info.get("recipe_resolved")))
    except (ValueError, TypeError):
        return None


def step_lrs(r: Run) -> tuple[list[int], list[float]]:
    """(step, LR) of every step up to the last logged one, the warmup included: the schedule is a
    pure function of the step (hvdtrain/schedule.py), so the run's recipe and each window's
    steps per epoch and world size give them all. The logged points alone when the recipe in the
    manifest cannot be read (edited, or another hvdtrain's)."""
    logged = [s["global_step"] for s in r.steps], [s["lr"] for s in r.steps]
    cfg = recorded_lr_config(r.manifest)
    if cfg is None:
        return logged
    sizes = {e["epoch"]: e.get("world_size") for e in r.epochs}
    xs: list[int] = []
    ys: list[float] = []
    for s in r.steps:
        spe, size = s.get("steps"), sizes.get(s.get("epoch")) or r.manifest.get("np")
        if not (isinstance(spe, int) and spe > 0 and isinstance(size, int) and size > 0):
            return logged
        for i in range(xs[-1] if xs else 0, s["global_step"]):  # step i+1 trained with lr_at(i)
            xs.append(i + 1)
            ys.append(lr_at(i, spe, size, cfg))
    return xs, ys


def figure(runs: list[Run]):
    """The 2x2 figure: loss, accuracy, LR, images/s (matplotlib's Agg backend, no display)."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("hvdtrain report draws with matplotlib, which is not installed here: "
                        "pip install 'hvdtrain[report]' (make install does)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), dpi=100)
    (loss, acc), (lr, speed) = axes
    for r in runs:
        ep = [e["epoch"] for e in r.epochs]
        line = loss.plot(ep, [e["train_loss"] for e in r.epochs], marker=".",
                         label=f"{r.label} train")[0]
        ev = [e for e in r.epochs if isinstance(e.get("eval_loss"), (int, float))]
        loss.plot([e["epoch"] for e in ev], [e["eval_loss"] for e in ev], "--", marker=".",
                  color=line.get_color(), label=f"{r.label} eval")
        acc.plot(ep, [e["train_acc"] for e in r.epochs], marker=".", color=line.get_color(),
                 label=f"{r.label} train")
        acc.plot([e["epoch"] for e in ev], [e["eval_acc"] for e in ev], "--", marker=".",
                 color=line.get_color(), label=f"{r.label} eval")
        lr.plot(*step_lrs(r), color=line.get_color(), label=r.label)
        speed.plot(ep, [e["images_per_s"] for e in r.epochs], marker=".",
                   color=line.get_color(), label=r.label)
    if all(v > 0 for line in loss.get_lines() for v in line.get_ydata()):
        loss.set_yscale("log")  # one diverged run must not flatten the others' curves
    for ax, title, xlabel in ((loss, "loss", "epoch"), (acc, "accuracy", "epoch"),
                              (lr, "learning rate (every step)", "global step"),
                              (speed, "images/s (all ranks)", "epoch")):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def summary(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per run: final and best eval accuracy, wall time, images/s, np, hosts."""
    rows = []
    for r in runs:
        accs = [e["eval_acc"] for e in r.epochs if isinstance(e.get("eval_acc"), (int, float))]
        rates = [e["images_per_s"] for e in r.epochs[1:] or r.epochs]
        rows.append({"run": r.label, "run_dir": str(r.folder), "np": r.manifest.get("np"),
                     "hosts": sorted({h.get("host") for h in r.manifest.get("hosts", [])}),
                     "epochs": len(r.epochs), "final_eval_acc": accs[-1] if accs else None,
                     "best_eval_acc": max(accs) if accs else None,
                     "wall_seconds": (describe(r.folder) or {}).get("wall_seconds"),
                     "images_per_s": statistics.median(rates) if rates else None,
                     "status": r.manifest.get("status"), "unreadable_lines": r.skipped_lines})
    return rows


def report(paths: list[str], out: str | None) -> tuple[Path, list[dict[str, Any]]]:
    """Write the PNG; returns its path and the summary rows."""
    runs = [load_run(p) for p in paths]
    empty = [str(r.folder) for r in runs if not r.epochs]
    if len(empty) == len(runs):
        raise UserError(f"nothing to plot: no completed epoch in {', '.join(empty)} (a run shows "
                        "up here after its first epoch)")
    name_runs(runs)
    target = Path(out) if out else (runs[0].folder / "report.png" if len(runs) == 1
                                    else Path("report.png"))
    if target.suffix.lower() != ".png":
        raise UserError(f"-o {out}: the report is a PNG picture: give a path ending in .png")
    try:
        figure(runs).savefig(target)
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror}: choose another -o") from None
    return target, summary(runs)
