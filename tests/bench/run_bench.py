"""`make bench`: the speed goals, measured side by side in one run (never in timed tests).

1. `hvdtrain run digits-cnn --np 2` wall time (goal: <= 15 s on a 2-core machine).
2. hvdtrain's loop at np=1 vs a plain PyTorch loop (tests/bench/plain_loop.py) on the same model,
   batch size, batch order and thread count (goal: >= 0.95x the plain loop's images/s).
3. For the record: np=2 throughput with fp16 vs no compression.
Prints a table and writes JSON to bench-results.json (or $BENCH_OUT). Exit 1 when a goal is missed.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
REPS = int(os.environ.get("BENCH_REPS", "3"))


def hvdtrain_epochs(args: list[str], field: str = "images_per_s") -> list[float]:
    """``field`` of each epoch after the first (warm-up) from a `hvdtrain run --json`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([str(BIN / "hvdtrain"), "run", *args, "--json", "--run-dir",
                              f"{tmp}/run"], capture_output=True, text=True, check=True, cwd=ROOT)
    rates = [e[field] for e in map(json.loads, out.stdout.splitlines())
             if e.get("event") == "epoch"]
    return rates[1:]


def image_folder(reps: int) -> dict:
    """np=2 on a generated image folder (192-320 px images, 64 px crops, a narrow ResNet-18):
    images/s and the share of each epoch spent waiting for batches, with 0 and 2 loader workers
    per rank."""
    sys.path.insert(0, str(ROOT / "tests"))
    from shapes import write_folder

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_folder(Path(tmp) / "shapes", per_class=200, val_per_class=20,
                            sizes=(192, 256, 320))
        for workers in (0, 2):
            args = ["imagefolder-resnet", f"data.data_dir={data}", "data.image_size=64",
                    "model.width=16", "train.epochs=4", f"data.loader_workers={workers}",
                    "--np", "2"]
            rates, waits = [], []
            for _ in range(reps):
                rates += hvdtrain_epochs(args)
                waits += hvdtrain_epochs(args, "data_wait_share")
            out[f"loader_workers={workers}"] = {"images_per_s": statistics.median(rates),
                                                "data_wait_share": statistics.median(waits)}
    return out


def plain_epochs(recipe: str, threads: int, overrides: list[str]) -> list[float]:
    out = subprocess.run([sys.executable, str(ROOT / "tests/bench/plain_loop.py"), recipe,
                          str(threads), *overrides], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    return [json.loads(x)["images_per_s"] for x in out.stdout.splitlines()][1:]


def demo_wall() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run([str(BIN / "hvdtrain"), "run", "digits-cnn", "--np", "2", "--run-dir",
                        f"{tmp}/run"], capture_output=True, check=True, cwd=ROOT)
        return time.perf_counter() - t0


def main() -> int:
    results: dict = {"cpu_count": os.cpu_count(), "reps": REPS}
    walls = [demo_wall() for _ in range(REPS)]
    results["demo_wall_s"] = {"runs": walls, "median": statistics.median(walls)}

    threads = os.cpu_count() or 1  # what the worker picks at np=1 on this host
    comparisons = {}
    for recipe, overrides in (("synthetic-bench", ["train.epochs=5", "train.max_steps_per_epoch=60"]),
                              ("digits-cnn", ["train.epochs=5"])):
        plain, ours = [], []
        for _ in range(REPS):  # interleaved, so drift in machine load hits both alike
            plain += plain_epochs(recipe, threads, overrides)
            ours += hvdtrain_epochs([recipe, "--np", "1", *overrides])
        # Best epoch of each side: on a shared 2-core VM the noise is one-sided (slowdowns), so the
        # fastest epoch is the least disturbed estimate of what each loop can do.
        comparisons[recipe] = {"plain_images_per_s": max(plain), "hvdtrain_images_per_s": max(ours),
                               "ratio": max(ours) / max(plain),
                               "plain_median": statistics.median(plain),
                               "hvdtrain_median": statistics.median(ours)}
    results["np1_vs_plain"] = comparisons

    np2 = {}
    for comp in ("fp16", "none"):
        rates = []
        for _ in range(REPS):
            rates += hvdtrain_epochs(["synthetic-bench", "--np", "2", f"horovod.compression={comp}",
                                      "train.epochs=4"])
        np2[comp] = statistics.median(rates)
    results["np2_synthetic_images_per_s"] = np2
    results["np2_image_folder"] = folder = image_folder(REPS)

    goals = {
        "demo <= 15 s": results["demo_wall_s"]["median"] <= 15.0,
        "np=1 >= 0.95x plain (synthetic-bench)": comparisons["synthetic-bench"]["ratio"] >= 0.95,
    }
    results["goals"] = goals
    print(f"demo wall (median of {REPS}): {results['demo_wall_s']['median']:.2f} s  "
          f"runs: {', '.join(f'{w:.2f}' for w in walls)}")
    for recipe, c in comparisons.items():
        print(f"np=1 {recipe:16s} best epoch: plain {c['plain_images_per_s']:6.0f} img/s, hvdtrain "
              f"{c['hvdtrain_images_per_s']:6.0f} img/s, ratio {c['ratio']:.3f}   (medians "
              f"{c['plain_median']:.0f} / {c['hvdtrain_median']:.0f})")
    print(f"np=2 synthetic-bench: fp16 {np2['fp16']:.0f} img/s, none {np2['none']:.0f} img/s")
    for name, r in folder.items():
        print(f"np=2 image folder, {name}: {r['images_per_s']:.0f} img/s, waiting for data "
              f"{r['data_wait_share'] * 100:.1f} % of each epoch")
    for goal, ok in goals.items():
        print(f"{'PASS' if ok else 'MISS'}  {goal}")
    out = Path(os.environ.get("BENCH_OUT", ROOT / "bench-results.json"))
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {out}")
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
