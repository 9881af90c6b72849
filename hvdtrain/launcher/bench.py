"""`hvdtrain bench RECIPE`: the recipe's model on synthetic input of its shape, for each world size
and compression (``--np 1,2 --compression fp16,none``), on this machine or the hosts of
``--hosts``/``--hostfile``; with ``--reference ddp`` the same model, batches and hosts under
torchrun + DistributedDataParallel, without and with ``fp16_compress_hook`` (and with
``powerSGD_hook`` at the same rank, error feedback and warm start when powersgd is benched).

Each configuration is one real launch (horovodrun or torchrun) of ``hvdtrain.worker.bench`` in
its own folder of the bench directory; rank 0 reports the timings as one ``bench`` event. Rows:
images/s in total and per rank, scaling efficiency against np=1 of the same kind, MB allreduced per
step and the share of the step spent waiting for the allreduce. With ``--rounds N`` the whole set
runs N times, interleaved, and each row holds the medians and every round's images/s. JSON:
``<dir>/bench.json``.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hvdtrain.errors import UserError
from hvdtrain.events import BenchEvent, Event, parse_line
from hvdtrain.imagefolder import class_names
from hvdtrain.launcher.hosts import THIS_MACHINE, Host, HostList, assign
from hvdtrain.recipe import Recipe
from hvdtrain.rundir import RunDir, write_json_atomic

COMPRESSIONS = ("fp16", "none", "powersgd")
# PowerSGD's uncompressed first steps in a bench, both sides (DDP's hook needs at least 2 with
# error feedback or warm start); the timing warm-up (--warmup) covers them.
BENCH_POWERSGD_WARMUP = 2


@dataclass(frozen=True)
class Config:
    kind: str  # "hvdtrain" or "ddp"
    np: int
    compression: str  # fp16 | none (ddp: the comm hook)

    @property
    def label(self) -> str:
        return f"{self.kind}-np{self.np}-{self.compression}"


def parse_list(flag: str, text: str, parse: Callable[[str], object],
               allowed: str) -> list:
    """``--np 1,2`` / ``--compression fp16,none``: every item valid, no duplicates."""
    items = [t.strip() for t in text.split(",")]
    out = []
    for item in items:
        try:
            value = parse(item)
        except ValueError:
            raise UserError(f"{flag} {text!r}: {item!r} is not {allowed}") from None
        if value in out:
            raise UserError(f"{flag} {text!r} lists {item} twice")
        out.append(value)
    return out


def positive(item: str) -> int:
    value = int(item) if len(item) <= 6 else 0  # (no rank count has more digits)
    if value < 1:
        raise ValueError(item)
    return value


def compression(item: str) -> str:
    if item not in COMPRESSIONS:
        raise ValueError(item)
    return item


def check_world(np: int, host_list: HostList) -> None:
    """Enough slots for the largest --np; on this machine alone, at most one rank per core
    (more would share cores, and the numbers would measure the sharing)."""
    if np > host_list.total_slots:
        raise UserError(f"--np {np} needs more slots than {host_list.source} has "
                        f"({host_list.total_slots}): lower --np or add hosts")
    cores = os.cpu_count() or 1
    if host_list.source == THIS_MACHINE and np > cores:
        raise UserError(f"--np {np} is more processes than this machine's {cores} cores: ranks "
                        "would share cores and the numbers would measure that; lower --np, or "
                        "give --hosts/--hostfile to bench more hosts")


def check_options(*, reference: str | None, warmup: int, steps: int, rounds: int,
                  comps: tuple[str, ...] = ()) -> None:
    """The numeric options and --reference, refused with the bounds before anything runs."""
    if "powersgd" in comps and warmup < BENCH_POWERSGD_WARMUP:
        raise UserError(f"--warmup {warmup}: benching powersgd needs at least "
                        f"{BENCH_POWERSGD_WARMUP} warm-up steps (its first "
                        f"{BENCH_POWERSGD_WARMUP} steps go uncompressed, as DDP's hook needs)")
    if reference not in (None, "ddp"):
        raise UserError(f"--reference {reference!r}: the only reference is ddp (torchrun + "
                        "DistributedDataParallel)")
    for flag, value, low, high in (("--warmup", warmup, 0, 100_000), ("--steps", steps, 1, 100_000),
                                   ("--rounds", rounds, 1, 100)):
        if not low <= value <= high:
            raise UserError(f"{flag} must be between {low} and {high}, got {value}")


def configs(nps: list[int], comps: list[str], reference: str | None) -> list[Config]:
    out = [Config("hvdtrain", n, c) for c in comps for n in nps]
    if reference == "ddp":
        hooks = ("none", "fp16", *(["powersgd"] if "powersgd" in comps else []))
        out += [Config("ddp", n, c) for c in hooks for n in nps]
    return out


def image_classes(recipe: Recipe) -> int | None:
    """An image folder's class count when the folder is here (else the bench assumes 10)."""
    if recipe.data.dataset != "imagefolder" or not recipe.data.data_dir:
        return None
    train = Path(recipe.data.data_dir) / "train"
    return len(class_names(train)) if train.is_dir() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def worker_args(folder: Path, warmup: int, steps: int, classes: int | None) -> list[str]:
    args = ["-m", "hvdtrain.worker.bench", "--run-dir", str(folder), "--warmup", str(warmup),
            "--steps", str(steps)]
    return args + (["--classes", str(classes)] if classes else [])


def horovod_argv(recipe: Recipe, hosts: list[Host], np: int, args: list[str]) -> list[str]:
    from hvdtrain.launcher.plan import build_argv, default_horovodrun

    return build_argv(recipe, hosts, np, [sys.executable, *args], horovodrun=default_horovodrun())


def ddp_argvs(recipe: Recipe, hosts: list[Host], args: list[str]) -> list[list[str]]:
    """One torchrun per host (ssh for remote ones, with the recipe's ssh settings)."""
    from hvdtrain.launcher.preflight import is_local, local_addresses

    launch, port, local = recipe.launch, free_port(), local_addresses()
    env = ([f"GLOO_SOCKET_IFNAME={launch.network_interfaces[0]}"]
           if launch.network_interfaces else [])
    out = []
    for rank, host in enumerate(hosts):
        run = [*(["env", *env] if env else []), sys.executable, "-m", "torch.distributed.run",
               f"--nnodes={len(hosts)}", f"--node-rank={rank}",
               f"--nproc-per-node={host.slots}", f"--master-addr={hosts[0].name}",
               f"--master-port={port}", *args]
        if len(hosts) == 1 and is_local(host.name, local):
            out.append(run)
            continue
        ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "LogLevel=ERROR"]
        ssh += ["-p", str(launch.ssh_port)] if launch.ssh_port else []
        ssh += ["-i", launch.ssh_identity_file] if launch.ssh_identity_file else []
        out.append([*ssh, host.name, shlex.join(["cd", os.getcwd()]) + " && " + shlex.join(run)])
    return out


def launch_one(argvs: list[list[str]], timeout: float,
               kind: str = "bench") -> tuple[Event | None, str]:
    """Run the launches of one configuration together; (rank 0's ``kind`` event, their output).
    As `run` does (launcher/supervisor.py): each in a session of its own that dies with
    hvdtrain, and SIGINT/SIGTERM/SIGHUP or the timeout stop everything under it first."""
    from hvdtrain.launcher.supervisor import Supervisor

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sups: list[Supervisor] = []
    asked: list[int] = []  # a signal only sets this; collect() acts on it at a safe point
    previous = {sig: signal.signal(sig, lambda signum, _f: asked.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        for argv in argvs:
            sups.append(Supervisor(argv, env))
        texts = collect(sups, time.monotonic() + timeout, asked)
        bad = [code for code in (s.wait() for s in sups) if code] if texts is not None else []
    finally:
        if sups and sups[0].descendants():
            sups[0].stop(grace=5)  # (every process under hvdtrain: all the launches)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if asked:
        raise SystemExit(128 + asked[0])  # stopped first, then exit as `run` does (130/143/129)
    if texts is None:
        return None, f"no result within {timeout:.0f} s"
    text = "".join("".join(t) for t in texts)
    found = [e for line in map(parse_line, text.splitlines()) for e in line.events
             if e["event"] == kind]
    return (found[0] if found and not bad else None), text


def collect(sups: list, deadline: float, asked: list[int]) -> list[list[str]] | None:
    """Every launch's output lines until all end; None at the deadline or on a signal."""
    texts: list[list[str]] = [[] for _ in sups]
    running = set(range(len(sups)))
    while running:
        if time.monotonic() > deadline or asked:
            return None
        for i in sorted(running):
            try:
                line = sups[i].next_line(timeout=0.05)
            except EOFError:
                running.discard(i)
                continue
            if line is not None:
                texts[i].append(line)
    return texts


def for_bench(recipe: Recipe) -> Recipe:
    """The recipe benched: a data component's samples replaced by synthetic ones of the shape
    and class count its probe reports (bench measures steps, never reads data)."""
    if recipe.data.dataset != "component":
        return recipe
    from hvdtrain.launcher.prelaunch import probe_components
    from hvdtrain.launcher.profiles import bench_recipe

    return bench_recipe(recipe, probe_components(recipe))


def row(cfg: Config, ev: BenchEvent) -> dict:
    """One configuration's numbers from rank 0's ``bench`` event."""
    walls = [w for w, _ in ev["per_rank"]]
    wall = max(walls)  # the job is as fast as its slowest rank
    images = ev["np"] * ev["batch_size"] * ev["steps"]
    waits = [w / t for t, w in ev["per_rank"] if w is not None and t]
    return {"kind": cfg.kind, "np": cfg.np, "compression": cfg.compression,
            "images_per_s": images / wall, "images_per_s_per_rank": images / wall / cfg.np,
            "step_ms": 1000 * wall / ev["steps"], "allreduce_mb_per_step": ev["wire_bytes"] / 1e6,
            "allreduce_wait_share": statistics.mean(waits) if waits else None,
            "threads_per_rank": ev["threads"]}


def add_efficiency(rows: list[dict]) -> None:
    """Scaling efficiency: images/s at np=N over N times np=1's, for the same kind/compression."""
    base = {(r["kind"], r["compression"]): r["images_per_s"] for r in rows if r.get("np") == 1
            and r.get("images_per_s")}
    for r in rows:
        one = base.get((r["kind"], r["compression"]))
        r["efficiency"] = (r["images_per_s"] / (r["np"] * one)) if one and r.get("images_per_s") \
            else None


def prepare(folder: RunDir, recipe: Recipe, cfg: Config, rnd: int | None) -> Path:
    """The configuration's own folder (one per round when there are several), with the recipe it
    runs (compression set)."""
    sub = folder.path / cfg.label / (f"round-{rnd + 1}" if rnd is not None else "")
    sub.mkdir(parents=True, exist_ok=True)
    hv = recipe.horovod.model_copy(update={"compression": cfg.compression, "powersgd": (
        recipe.horovod.powersgd.model_copy(update={"warmup_steps": BENCH_POWERSGD_WARMUP}))})
    RunDir(sub).write_recipe(recipe.model_copy(update={"horovod": hv}))
    return sub


def measure(recipe: Recipe, host_list: HostList, cfg: Config, sub: Path, warmup: int, steps: int,
            classes: int | None) -> dict:
    """One launch of one configuration: its row, or its error (the output is in ``sub``)."""
    hosts = assign(host_list, cfg.np)
    if cfg.kind == "hvdtrain":
        argvs = [horovod_argv(recipe, hosts, cfg.np, worker_args(sub, warmup, steps, classes))]
    else:
        argvs = ddp_argvs(recipe, hosts, [*worker_args(sub, warmup, steps, classes), "--ddp",
                                          cfg.compression])
    t0 = time.monotonic()
    ev, text = launch_one(argvs, timeout=600)
    (sub / "output.log").write_text(text)
    result = row(cfg, ev) if ev else {
        "kind": cfg.kind, "np": cfg.np, "compression": cfg.compression,
        "error": f"failed: see {sub / 'output.log'}"}
    result["seconds"] = time.monotonic() - t0
    return result


def combine(runs: list[dict]) -> dict:
    """A configuration's rounds as one row: the median of each timing, every round's images/s and
    their spread ((max - min) / median); a failed round makes the row an error."""
    failed = [r for r in runs if "error" in r]
    out = dict(failed[0] if failed else runs[0])
    out["seconds"] = sum(r["seconds"] for r in runs)
    if failed:
        return out
    rates = [r["images_per_s"] for r in runs]
    for key in ("images_per_s", "images_per_s_per_rank", "step_ms", "allreduce_wait_share"):
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = statistics.median(values) if values else None
    out["rounds_images_per_s"] = rates
    out["spread"] = (max(rates) - min(rates)) / out["images_per_s"]
    return out


def run_all(folder: RunDir, recipe: Recipe, host_list: HostList, todo: list[Config],
            warmup: int, steps: int, progress: Callable[[Config, dict, int], None],
            rounds: int = 1) -> list[dict]:
    """Every configuration ``rounds`` times, interleaved (A B C, A B C, ...): a shared or virtual
    machine has slow spells lasting seconds to minutes, and interleaving spreads them over every
    configuration instead of one. A configuration that failed is not run again."""
    classes = image_classes(recipe)
    runs: dict[Config, list[dict]] = {cfg: [] for cfg in todo}
    for rnd in range(rounds):
        for cfg in todo:
            if any("error" in r for r in runs[cfg]):
                continue
            sub = prepare(folder, recipe, cfg, rnd if rounds > 1 else None)
            runs[cfg].append(measure(recipe, host_list, cfg, sub, warmup, steps, classes))
            progress(cfg, runs[cfg][-1], rnd)
    rows = [combine(r) for r in runs.values()]
    add_efficiency(rows)
    return rows


def write(folder: RunDir, meta: dict, rows: list[dict]) -> Path:
    path = folder.path / "bench.json"
    write_json_atomic(path, {**meta, "results": rows})
    return path
