"""What `hvdtrain forecast` measured, kept between runs in
``${XDG_CACHE_HOME:-~/.cache}/hvdtrain/forecast`` (or ``$HVDTRAIN_FORECAST_DIR``): the model's
profile per recipe shape and placement, the link per pair of hosts. `hvdtrain plan` reads them
back (``plan_line``) and never measures. No torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

from hvdtrain import TORCH_VERSION, __version__
from hvdtrain.launcher import costmodel as cm
from hvdtrain.recipe import Recipe
from hvdtrain.rundir import write_json_atomic


def bench_recipe(recipe: Recipe, found: dict | None) -> Recipe:
    """The recipe as bench and forecast measure it: a data component's samples replaced by
    synthetic ones of the shape and class count its probe found (``found``)."""
    if recipe.data.dataset != "component":
        return recipe
    found = found or {}
    synthetic = recipe.data.synthetic.model_copy(update={
        "image_shape": found["input_shape"], "num_classes": found["num_classes"]})
    data = recipe.data.model_copy(update={"dataset": "synthetic", "component": None,
                                          "kwargs": {}, "synthetic": synthetic})
    return recipe.model_copy(update={"data": data})


def cache_dir() -> Path:
    """Where measurements are kept: $HVDTRAIN_FORECAST_DIR, else the user's cache."""
    if os.environ.get("HVDTRAIN_FORECAST_DIR"):
        return Path(os.environ["HVDTRAIN_FORECAST_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hvdtrain" / "forecast"


def profile_key(recipe: Recipe, classes: int | None, ranks: int, threads: int) -> dict:
    """Everything the measured step depends on: the model, its input, the optimizer, the batch,
    PowerSGD's settings, the ranks sharing the host and their threads, the software."""
    data = recipe.data
    shape = ({"synthetic": [list(data.synthetic.image_shape), data.synthetic.num_classes]}
             if data.dataset == "synthetic" else
             {"imagefolder": [data.image_size, classes or 10]} if data.dataset == "imagefolder"
             else {"dataset": data.dataset})
    return {"model": recipe.model.model_dump(mode="json"), "input": shape,
            "optimizer": recipe.optimizer.model_dump(mode="json"),
            "powersgd": recipe.horovod.powersgd.model_dump(mode="json"),
            "batch_size": data.batch_size, "ranks": ranks, "threads": threads,
            "cpu_count": os.cpu_count(), "hvdtrain": __version__, "torch": TORCH_VERSION}


def _digest(key: object) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def profile_path(key: dict) -> Path:
    return cache_dir() / "profiles" / f"{_digest(key)}.json"


def link_path(hosts: list[str]) -> Path:
    return cache_dir() / "links" / f"{_digest(sorted(hosts))}.json"


def stored(path: Path) -> dict | None:
    """A kept measurement, or None (missing or unreadable: measured again)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def keep(path: Path, data: dict) -> dict:
    """Keep a measurement (stamped); a cache that cannot be written only costs a measurement
    next time."""
    data = {**data, "measured_at": time.strftime("%Y-%m-%d %H:%M")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, data)
    except OSError as exc:
        print(f"warning: cannot keep the measurement in {path}: {exc.strerror}", file=sys.stderr)
    return data


def to_profile(ev: dict, recipe: Recipe) -> cm.Profile:
    """The cost model's view of a profile event, with the bytes from the shapes."""
    from hvdtrain.powersgd_layout import layout, wire

    cfg = recipe.horovod.powersgd
    shapes = [(name, tuple(shape)) for name, shape in ev["shapes"]]
    layers = layout(shapes, cfg.rank, cfg.min_compression_rate)
    psgd = wire(layers, cfg.rank, 2 if cfg.rest == "fp16" else 4)
    return cm.Profile(
        forward_s=ev["forward_s"], backward_s=ev["backward_s"], update_s=ev["update_s"],
        step_s=tuple(ev["step_s"]),
        powersgd_step_s=tuple(ev["powersgd_step_s"]) if ev.get("powersgd_step_s") else None,
        sum_s_per_byte=ev["sum_s_per_byte"], params=sum(math.prod(s) for _, s in shapes),
        tensors=len(shapes), powersgd_bytes=psgd.wire_bytes if psgd.compressed_layers else None,
        batch_size=ev["batch_size"], threads=ev["threads"], ranks=ev["ranks"],
        groups=_groups(recipe, [math.prod(s) for _, s in shapes]))


def _groups(recipe: Recipe, numels: list[int]) -> int | None:
    """The allreduce groups a step of none/fp16 sends (Adasum's allreduces are per tensor)."""
    from hvdtrain.gradient_groups import group_lengths

    hv = recipe.horovod
    lengths = group_lengths(numels, hv.group_mb) if hv.op == "average" else None
    return len(lengths) if lengths else None


def on_gpu(recipe: Recipe) -> bool:
    """The run would compute on GPUs (the profile measures this machine's CPU)."""
    device = recipe.train.device
    return device not in ("cpu", "auto") or (
        device == "auto" and any(Path("/dev").glob("nvidia[0-9]*")))


def plan_line(recipe: Recipe, found: dict | None, classes: int | None, placement: list[str],
              np: int) -> str | None:
    """The plan's forecast for its own np and hosts (``placement``: each rank's host) from what
    an earlier forecast kept here; None when nothing was (the plan never measures)."""
    from collections import Counter

    rph = max(Counter(placement).values())
    cores = os.cpu_count() or 1
    if on_gpu(recipe) or rph > cores:
        return None
    key = profile_key(bench_recipe(recipe, found), classes, rph, max(1, cores // rph))
    kept = stored(profile_path(key))
    if kept is None:
        return None
    prof = to_profile(kept["profile"], recipe)
    comp = recipe.horovod.compression
    if comp == "powersgd" and prof.powersgd_bytes is None:
        return None
    names = list(dict.fromkeys(placement))
    link, said = cm.parse_link("1gbit"), "1gbit assumed"
    link_kept = stored(link_path(names[:2] if len(names) > 1 else ["localhost"]))
    if link_kept:
        link = cm.fit_link(link_kept["sizes"], link_kept["seconds"])
        said = "measured link" if len(names) > 1 else "measured loopback"
    elif len(names) == 1 and np > 1:
        return None
    f = cm.forecast(prof, np, comp, link, measured=link_kept is not None)
    slow, point, fast = f.images_per_s
    return (f"{point:,.0f} images/s ({slow:,.0f}-{fast:,.0f}), {f.efficiency:.0%} scaling, "
            f"{comp} on {said if np > 1 else 'one rank'}")
