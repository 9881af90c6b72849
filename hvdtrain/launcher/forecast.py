"""`hvdtrain forecast RECIPE --np 2,4,8 --link 1gbit|25|measured`: images/s and scaling for each
world size and compression, before any cluster is rented. It measures what it must on this
machine (the recipe's model: ``hvdtrain.worker.profile``; with ``--link measured`` the link
between two of ``--hosts``: ``hvdtrain.worker.linkprobe``), keeps what it measured
(launcher/profiles.py: the plan reads it back without running anything) and hands the numbers
to the pure cost model (launcher/costmodel.py). No torch here.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from hvdtrain.errors import UserError
from hvdtrain.launcher import costmodel as cm
from hvdtrain.launcher.hosts import Host, HostList
from hvdtrain.launcher.profiles import (
    keep,
    link_path,
    on_gpu,
    profile_key,
    profile_path,
    stored,
    to_profile,
)
from hvdtrain.recipe import Recipe

PROBE_TIMEOUT_S = 300
MAX_NP = 100_000


@dataclass(frozen=True)
class Options:
    nps: list[int]
    compressions: list[str]
    link: cm.Link | None  # None: measured
    ranks_per_host: int | None  # None: from the hosts' slots, else 1
    warmup: int
    steps: int


def parse_options(*, np: str, compression: str, link: str, ranks_per_host: int | None,
                  warmup: int, steps: int, hosts: str | None, hostfile: str | None) -> Options:
    """Every option checked before anything is loaded or run; UserError naming the option."""
    from hvdtrain.launcher.bench import compression as one_compression
    from hvdtrain.launcher.bench import parse_list, positive

    def world(item: str) -> int:
        value = positive(item)
        if value > MAX_NP:
            raise ValueError(item)
        return value

    nps = sorted(parse_list("--np", np, world, f"a number of processes from 1 to {MAX_NP:,}"))
    comps = parse_list("--compression", compression, one_compression, "none, fp16 or powersgd")
    parsed = None
    if link.strip().lower() != "measured":
        try:
            parsed = cm.parse_link(link)
        except ValueError as exc:
            raise UserError(f"--link {exc}; or measured (with --hosts/--hostfile)") from None
    elif not (hosts or hostfile):
        raise UserError("--link measured needs the hosts to measure between: give --hosts or "
                        "--hostfile (two of them are probed), or name the link, e.g. --link 1gbit")
    if ranks_per_host is not None and not 1 <= ranks_per_host <= (os.cpu_count() or 1):
        raise UserError(f"--ranks-per-host must be between 1 and this machine's "
                        f"{os.cpu_count() or 1} cores (the compute is measured here, with that "
                        f"many ranks sharing it), got {ranks_per_host}")
    for flag, value, low, high in (("--warmup", warmup, 1, 1000), ("--steps", steps, 5, 1000)):
        if not low <= value <= high:
            raise UserError(f"{flag} must be between {low} and {high}, got {value}")
    return Options(nps, comps, parsed, ranks_per_host, warmup, steps)


# --- measuring ------------------------------------------------------------------------------------

def run_worker(recipe: Recipe, hosts: list[Host], args: list[str], kind: str, what: str) -> dict:
    """``python ARGS`` (alone, or under horovodrun on ``hosts``), its ``kind`` event; a
    UserError with its last line when it fails."""
    from hvdtrain.launcher.bench import horovod_argv, launch_one

    np = sum(h.slots for h in hosts)
    argv = horovod_argv(recipe, hosts, np, args) if np > 1 else [sys.executable, *args]
    ev, text = launch_one([argv], timeout=PROBE_TIMEOUT_S, kind=kind)
    if ev is None:
        last = [line for line in text.splitlines() if line.strip()][-1:] or ["no output"]
        raise UserError(f"measuring {what} failed: {last[0]}")
    return dict(ev)


def measure_profile(recipe: Recipe, classes: int | None, ranks: int, threads: int,
                    opts: Options) -> dict:
    """The profile event of ``ranks`` ranks of the recipe's model sharing this machine."""
    with tempfile.TemporaryDirectory(prefix="hvdtrain-forecast-") as tmp:
        path = Path(tmp) / "recipe.json"
        path.write_text(recipe.model_dump_json())
        args = ["-m", "hvdtrain.worker.profile", "--recipe", str(path), "--threads", str(threads),
                "--warmup", str(opts.warmup), "--steps", str(opts.steps),
                *(["--classes", str(classes)] if classes else []),
                *(["--horovod"] if ranks > 1 else [])]
        return run_worker(recipe, [Host("localhost", ranks)], args, "profile",
                          f"the model's step ({ranks} rank(s) of {threads} thread(s))")


def measure_link(recipe: Recipe, hosts: list[str]) -> dict:
    """The link event between the first two of ``hosts`` (the same host twice: its loopback)."""
    pair = [Host(hosts[0], 2)] if len(hosts) == 1 else [Host(h, 1) for h in hosts[:2]]
    return run_worker(recipe, pair, ["-m", "hvdtrain.worker.linkprobe"], "link",
                      f"the link between {' and '.join(hosts[:2])}")


def link_of(recipe: Recipe, hosts: list[str], say: Callable[[str], None]) -> cm.Link:
    """The measured link between ``hosts`` (kept, or probed now). Two hosts are checked first
    (as `hosts --check`): a failing one is refused, nothing launched."""
    from hvdtrain.launcher.preflight import refuse_failing

    path = link_path(hosts)
    found = stored(path)
    if found is None:
        if len(hosts) > 1:
            refuse_failing(hosts, recipe.launch, lambda bad: (
                f"--link measured: {', '.join(bad)} failed the check above; nothing launched "
                "(fix the hosts in --hosts/--hostfile, or name the link: --link 1gbit)"))
        say(f"measuring the link between {' and '.join(hosts)} (Horovod allreduces, 64 kB to "
            "16 MB) ...")
        ev = measure_link(recipe, hosts)
        found = {"hosts": hosts, "sizes": ev["sizes"], "seconds": ev["seconds"]}
        keep(path, found)
    name = "loopback (measured)" if len(hosts) == 1 else "measured"
    return cm.fit_link(found["sizes"], found["seconds"], name)


# --- the forecast -------------------------------------------------------------------------------

def rows(prof: cm.Profile, opts: Options, link: cm.Link, loopback: cm.Link | None,
         ranks_per_host: int, measured: bool) -> list[dict]:
    """One row per world size and compression (powersgd only where it factors a layer), with
    the recommended compression of each world size marked."""
    out = []
    for np in opts.nps:
        hosts = math.ceil(np / ranks_per_host)
        on, is_measured = _link_for(hosts, link, measured, loopback)
        group = [cm.forecast(prof, np, c, on, is_measured) for c in _compared(prof, opts, np)]
        best = cm.recommend(group) if group else None
        for f in group:
            out.append({"np": np, "hosts": hosts, "compression": f.compression,
                        "images_per_s": f.images_per_s[1],
                        "band": [f.images_per_s[0], f.images_per_s[2]],
                        "efficiency": f.efficiency, "step_s": f.compute_s + f.exposed_s,
                        "compute_s": f.compute_s, "exposed_s": f.exposed_s,
                        "wire_bytes": f.wire_bytes, "link": on.name if np > 1 else None,
                        "recommended": f.compression == best})
    return out


def _link_for(hosts: int, link: cm.Link, measured: bool,
              loopback: cm.Link | None) -> tuple[cm.Link, bool]:
    """The link a world size's ring crosses, and whether it was measured: one host's ranks
    talk over its (measured) loopback."""
    return (link, measured) if hosts > 1 else (loopback or link, True)


def _compared(prof: cm.Profile, opts: Options, np: int) -> list[str]:
    """The compressions a world size compares: one row for one rank (nothing is sent), and
    powersgd only where it factors a layer."""
    if np == 1:
        return ["none"]
    return [c for c in opts.compressions if c != "powersgd" or prof.powersgd_bytes is not None]


def _hosts_of(host_list: HostList) -> list[str]:
    return list(dict.fromkeys(h.name for h in host_list.hosts))


def forecast_command(*, recipe: str, overrides: list[str], np: str, compression: str, link: str,
                     hosts: str | None, hostfile: str | None, ranks_per_host: int | None,
                     warmup: int, steps: int, fresh: bool, explain: bool, as_json: bool) -> int:
    """`hvdtrain forecast`: measure what is not kept yet, then the table (or JSON)."""
    from rich.console import Console

    from hvdtrain.recipe_files import load_recipe

    opts = parse_options(np=np, compression=compression, link=link, ranks_per_host=ranks_per_host,
                         warmup=warmup, steps=steps, hosts=hosts, hostfile=hostfile)
    loaded = load_recipe(recipe, overrides)
    names, rph, threads = placement(loaded.recipe, opts, hosts, hostfile)
    console = Console(stderr=True, highlight=False)
    say = (lambda text: console.print(text, style="dim"))
    path, kept = profile_of(loaded, rph, threads, opts, fresh, say)
    prof = to_profile(kept["profile"], loaded.recipe)
    if fresh:
        for where in ([names[:2]] if opts.link is None else []) + [["localhost"]]:
            link_path(where).unlink(missing_ok=True)
    the_link = opts.link or link_of(loaded.recipe, names[:2], say)
    loopback = (link_of(loaded.recipe, ["localhost"], say)
                if any(1 < n <= rph for n in opts.nps) else None)
    result = {"ok": True, "recipe": loaded.name, "overrides": overrides,
              "batch_size": prof.batch_size, "ranks_per_host": rph, "threads_per_rank": threads,
              "link": {**asdict(the_link), "measured": opts.link is None},
              "loopback": asdict(loopback) if loopback else None,
              "profile": {**kept["profile"], "file": str(path),
                          "measured_at": kept.get("measured_at")},
              "model": {"params": prof.params, "tensors": prof.tensors,
                        "powersgd_bytes": prof.powersgd_bytes,
                        "fusion_rounds": cm.fusion_rounds(prof)},
              "notes": notes(loaded.recipe, prof, opts),
              "forecasts": rows(prof, opts, the_link, loopback, rph, opts.link is None)}
    if as_json:
        print(json.dumps(result, indent=2))
        return 0
    from hvdtrain.launcher.display import print_forecast

    out = Console(highlight=False)
    print_forecast(out, result)
    if explain:
        out.print("\n".join(explain_lines(prof, opts, the_link, loopback, rph, result)),
                  soft_wrap=True)
    return 0


def placement(recipe: Recipe, opts: Options, hosts: str | None,
              hostfile: str | None) -> tuple[list[str], int, int]:
    """(the distinct hosts given, ranks a host, torch threads a rank): refused when the link
    must be measured between fewer than two hosts, or a host has more ranks than cores here."""
    from hvdtrain.launcher.prelaunch import resolve_hosts

    host_list = (resolve_hosts(recipe, None, hosts, hostfile, slurm=False)
                 if hosts or hostfile else None)
    names = _hosts_of(host_list) if host_list else []
    if opts.link is None and len(names) < 2:
        raise UserError(f"--link measured needs two different hosts, {host_list.source} has one "
                        f"({names[0]}): add a host, or name the link, e.g. --link 1gbit")
    cores = os.cpu_count() or 1
    rph = opts.ranks_per_host or (host_list.hosts[0].slots if host_list else 1)
    if rph > cores:
        raise UserError(f"{host_list.source}: {rph} slots on {names[0]} is more ranks than this "
                        f"machine's {cores} cores, where the compute is measured: give "
                        "--ranks-per-host (at most the cores here)")
    return names, rph, max(1, cores // rph)


def profile_of(loaded, rph: int, threads: int, opts: Options, fresh: bool,
               say: Callable[[str], None]) -> tuple[Path, dict]:
    """The kept profile of the recipe's model at this placement, or a new measurement."""
    from hvdtrain.launcher.bench import for_bench, image_classes

    bench_recipe, classes = for_bench(loaded.recipe), image_classes(loaded.recipe)
    key = profile_key(bench_recipe, classes, rph, threads)
    path = profile_path(key)
    kept = None if fresh else stored(path)
    if kept is None:
        say(f"measuring {loaded.name}'s step on this machine ({rph} rank(s) of {threads} "
            f"thread(s), {opts.warmup} + {opts.steps} steps, then with PowerSGD) ...")
        t0 = time.monotonic()
        kept = keep(path, {"key": key, "profile": measure_profile(bench_recipe, classes, rph,
                                                                   threads, opts)})
        say(f"measured in {time.monotonic() - t0:.0f} s; kept in {path}")
    return path, kept


def keep_for_plan(loaded, host_list: HostList, np: int, say: Callable[[str], None]) -> None:
    """After `bench`: the model's profile at the benched ranks per host (and, for one host's
    ranks, its loopback), kept for `plan` and `forecast`; a failure only says so."""
    cores = os.cpu_count() or 1
    rph = min(host_list.hosts[0].slots, np)
    if rph > cores or on_gpu(loaded.recipe):
        return
    opts = Options([np], list(cm.COMPRESSIONS), None, rph, 5, 20)
    try:
        profile_of(loaded, rph, max(1, cores // rph), opts, False, say)
        if rph > 1:
            link_of(loaded.recipe, ["localhost"], say)
    except UserError as exc:
        say(f"warning: the forecast's profile was not kept: {exc.render()}")


def notes(recipe: Recipe, prof: cm.Profile, opts: Options) -> list[str]:
    out = []
    if on_gpu(recipe):
        out.append(f"train.device is {recipe.train.device}: the compute was measured on this "
                   "machine's CPU, so the numbers hold for CPU hosts like this one")
    if "powersgd" in opts.compressions and prof.powersgd_bytes is None:
        out.append("powersgd left out: it factors no layer of this model (horovod.powersgd's "
                   "rank and min_compression_rate)")
    return out


def explain_lines(prof: cm.Profile, opts: Options, link: cm.Link, loopback: cm.Link | None,
                  rph: int, result: dict) -> list[str]:
    """``--explain``: the inputs, then each row's arithmetic (costmodel.explain)."""
    measured = result["link"]["measured"]
    lines = ["", "inputs (launcher/costmodel.py):", *cm.explain_inputs(prof, link, loopback)]
    for n in opts.nps:
        on, is_measured = _link_for(math.ceil(n / rph), link, measured, loopback)
        for c in _compared(prof, opts, n):
            lines += cm.explain(prof, n, c, on, is_measured)
    return lines


