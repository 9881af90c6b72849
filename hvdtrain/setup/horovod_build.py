"""Build and install Horovod 0.28.1 against the installed PyTorch, with a wheel cache.

Horovod's last release does not build as published: it asks for C++14 while PyTorch >= 2.1
headers need C++17, and CMake 4 rejects its old ``cmake_minimum_required``. This module downloads
the PyPI sdist, applies ``patches/horovod-0.28.1.patch`` (C++17, and a Gloo interface fix for
multi-host runs) and builds a wheel with PyTorch +
Gloo (plus MPI when an MPI compiler is on PATH, NCCL when torch has CUDA). The wheel is cached
outside the repo under a key of everything that changes the binary, so a re-install takes seconds.

Standard library only: it runs before hvdtrain itself is installed, as
``python -m hvdtrain.setup.horovod_build`` from the repository root, with the target environment's python.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hvdtrain import HOROVOD_VERSION
from hvdtrain.machine import BUILD_INFO, horovod_build_info, horovod_dir, installed_version

PATCH = Path(__file__).parent.parent / "patches" / f"horovod-{HOROVOD_VERSION}.patch"
# What Horovod's setup.py needs importable when it runs without build isolation.
BUILD_DEPS = ["setuptools", "wheel", "packaging", "psutil", "cffi", "cloudpickle", "pyyaml"]


class BuildError(Exception):
    """A step failed; the message says which and what to do."""


@dataclass(frozen=True)
class BuildConfig:
    """Everything that changes the built binary, and so the cache key."""

    horovod: str
    torch: str
    python: str  # e.g. "cp311"
    machine: str
    mpi: bool
    nccl: bool
    patch_sha: str

    @property
    def flags(self) -> list[str]:
        return ["pytorch", "gloo"] + (["mpi"] if self.mpi else []) + (["nccl"] if self.nccl else [])

    @property
    def key(self) -> str:
        return (f"horovod-{self.horovod}_torch-{self.torch}_{self.python}_{self.machine}_"
                f"{'+'.join(self.flags)}_patch-{self.patch_sha}")

    def build_env(self, base: dict[str, str]) -> dict[str, str]:
        """The environment for Horovod's setup.py: frameworks and controllers, explicitly."""
        env = dict(base)
        env.update({
            "HOROVOD_WITH_PYTORCH": "1",
            "HOROVOD_WITH_GLOO": "1",
            "HOROVOD_WITHOUT_TENSORFLOW": "1",
            "HOROVOD_WITHOUT_MXNET": "1",
            # CMake 4 refuses cmake_minimum_required(VERSION < 3.5) in Horovod's third_party.
            "CMAKE_POLICY_VERSION_MINIMUM": "3.5",
            "MAKEFLAGS": f"-j{os.cpu_count() or 1}",
        })
        for inherited in ("HOROVOD_WITH_MPI", "HOROVOD_WITHOUT_MPI", "HOROVOD_GPU_OPERATIONS"):
            env.pop(inherited, None)
        env["HOROVOD_WITH_MPI" if self.mpi else "HOROVOD_WITHOUT_MPI"] = "1"
        if self.nccl:
            env["HOROVOD_GPU_OPERATIONS"] = "NCCL"
        return env


def say(msg: str) -> None:
    print(f"[hvdtrain install {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def default_cache_dir() -> Path:
    if os.environ.get("HVDTRAIN_CACHE_DIR"):
        return Path(os.environ["HVDTRAIN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hvdtrain" / "wheels"


def torch_has_cuda() -> bool:
    """Whether the installed torch is a CUDA build (asked in a child so this process stays light)."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.version.cuda or '')"],
                         capture_output=True, text=True)
    return bool(out.stdout.strip())


def detect_config() -> BuildConfig:
    torch_version = installed_version("torch")
    if torch_version is None:
        raise BuildError(f"torch is not installed in {sys.executable}; install it first: "
                         f"{sys.executable} -m pip install torch==<version>")
    nccl = torch_has_cuda() and shutil.which("nvcc") is not None
    return BuildConfig(
        horovod=HOROVOD_VERSION,
        torch=torch_version,
        python=f"cp{sys.version_info.major}{sys.version_info.minor}",
        machine=platform.machine(),
        mpi=shutil.which("mpicxx") is not None,
        nccl=nccl,
        patch_sha=hashlib.sha256(PATCH.read_bytes()).hexdigest()[:10],
    )


def horovod_built_torch() -> str | None:
    """The torch version recorded in the installed Horovod's metadata.json, if any."""
    folder = horovod_dir()
    try:
        return json.loads((folder / "metadata.json").read_text()).get("pytorch") if folder else None
    except (OSError, ValueError):
        return None


def run(argv: list[str], *, log: Path | None = None, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> None:
    """Run one step; on failure show the tail of its output and the log path."""
    if log is None:
        proc = subprocess.run(argv, env=env, cwd=cwd)
        if proc.returncode != 0:
            raise BuildError(f"command failed (exit {proc.returncode}): {' '.join(argv)}")
        return
    with log.open("ab") as fh:
        proc = subprocess.run(argv, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise BuildError(f"command failed (exit {proc.returncode}): {' '.join(argv)}\n"
                         f"--- last lines of {log} ---\n{tail}")


def pip(*args: str, log: Path | None = None, env: dict[str, str] | None = None) -> None:
    run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], log=log, env=env)


def build_wheel(cfg: BuildConfig, dest: Path, log: Path) -> Path:
    """Download the sdist, patch it and build a wheel into ``dest``."""
    with tempfile.TemporaryDirectory(prefix="hvdtrain-horovod-") as tmp_s:
        tmp = Path(tmp_s)
        say(f"installing build dependencies: {' '.join(BUILD_DEPS)}")
        pip("install", "--quiet", *BUILD_DEPS, log=log)
        say(f"downloading the horovod=={cfg.horovod} sdist from PyPI")
        pip("download", "--quiet", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
            "-d", str(tmp), f"horovod=={cfg.horovod}", log=log)
        sdist = next(tmp.glob("horovod-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        src = tmp / f"horovod-{cfg.horovod}"
        say(f"applying {PATCH.name}")
        run(["patch", "-p1", "--forward", "-i", str(PATCH)], cwd=src, log=log)
        say(f"building Horovod with {'+'.join(cfg.flags)} against torch {cfg.torch} "
            f"(first time only: ~2-5 min on 2 cores; log: {log})")
        out = tmp / "wheel"
        started = time.monotonic()
        pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(src),
            log=log, env=cfg.build_env(dict(os.environ)))
        say(f"built in {time.monotonic() - started:.0f} s")
        wheel = next(out.glob("horovod-*.whl"))
        dest.mkdir(parents=True, exist_ok=True)
        final = dest / wheel.name
        partial = dest / (wheel.name + ".partial")
        shutil.copyfile(wheel, partial)
        os.replace(partial, final)  # a killed copy never looks like a cached wheel
        return final


def ensure_horovod(cache_dir: Path, force: bool = False) -> str:
    """Make the patched Horovod importable here; returns what was done."""
    if not PATCH.is_file():
        raise BuildError(f"patch file missing: {PATCH}")
    cfg = detect_config()
    built_for = horovod_built_torch()
    recorded = (horovod_build_info() or {}).get("key")
    if not force and installed_version("horovod") == cfg.horovod and built_for == cfg.torch \
            and recorded == cfg.key:
        say(f"Horovod {cfg.horovod} already installed, built against torch {cfg.torch}: nothing to do")
        return "present"
    if installed_version("horovod") and recorded != cfg.key:
        say(f"installed Horovod was built as {recorded or 'an unknown build'}, this checkout wants "
            f"{cfg.key} (a new patch or flags): reinstalling")
    if built_for and built_for != cfg.torch:
        say(f"installed Horovod was built against torch {built_for}, torch is now {cfg.torch}: rebuilding")
    slot = cache_dir / cfg.key
    wheels = sorted(slot.glob("horovod-*.whl"))
    action = "cached"
    if wheels:
        wheel = wheels[-1]
        say(f"using cached wheel {wheel}")
    else:
        slot.mkdir(parents=True, exist_ok=True)
        log = slot / "build.log"
        log.write_text("")
        wheel = build_wheel(cfg, slot, log)
        action = "built"
    # Force: a same-version Horovod built against another torch must be replaced...
    pip("install", "--quiet", "--force-reinstall", "--no-deps", str(wheel))
    # ...then resolve its runtime deps from the wheel's own metadata.
    pip("install", "--quiet", str(wheel))
    say(f"Horovod {cfg.horovod} ({'+'.join(cfg.flags)}) installed from {action} wheel")
    record_build_info(cfg.key)
    return action


BUILD_PROBE = """import json, torch, horovod.torch as hvd
print(json.dumps({"controllers": {"gloo": bool(hvd.gloo_built()), "mpi": bool(hvd.mpi_built())},
                  "nccl": bool(hvd.nccl_built()), "torch": torch.__version__}))"""


def record_build_info(key: str) -> dict:
    """Ask the installed Horovod (in a child) how it was built, and record it beside the package
    with the cache ``key`` it came from, so the CLI can check launch.controller without importing
    torch or horovod, and a later install sees when the patch or flags changed."""
    out = subprocess.run([sys.executable, "-c", BUILD_PROBE], capture_output=True, text=True)
    folder = horovod_dir()
    if out.returncode != 0 or folder is None:
        raise BuildError(f"the installed Horovod does not load: {out.stderr.strip()[-500:]}")
    info = {**json.loads(out.stdout), "key": key}
    (folder / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
    say(f"recorded the build in {folder / BUILD_INFO}: controllers "
        + ", ".join(k for k, v in info["controllers"].items() if v))
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hvdtrain.setup.horovod_build",
        description="Build (or take from cache) Horovod patched for current PyTorch and install it "
                    "into this Python environment. Run it with the environment's python, after torch.")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                        help="where built wheels are kept (default: $HVDTRAIN_CACHE_DIR or "
                             "~/.cache/hvdtrain/wheels)")
    parser.add_argument("--force", action="store_true",
                        help="reinstall even when a matching Horovod is already installed")
    parser.add_argument("--print-key", action="store_true",
                        help="print the cache key for this environment and exit")
    args = parser.parse_args(argv)
    try:
        if args.print_key:
            print(detect_config().key)
            return 0
        ensure_horovod(args.cache_dir, force=args.force)
    except BuildError as exc:
        print(f"hvdtrain install: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
