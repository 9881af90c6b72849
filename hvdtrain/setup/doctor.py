"""`hvdtrain doctor`: can this box run hvdtrain? Facts are gathered once, then judged by pure checks.

Gathering imports torch and horovod (lazily, inside ``gather_facts``); judging never does, so the
checks are unit-tested by handing them ``Facts`` directly.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import sys
from dataclasses import asdict, dataclass, field
from typing import Literal

from hvdtrain import HOROVOD_VERSION, TORCH_VERSION
from hvdtrain.machine import classify_interface

Level = Literal["ok", "info", "warn", "error"]

@dataclass
class Interface:
    name: str
    addresses: list[str]
    kind: str = "physical"  # physical | loopback | docker | bridge


@dataclass
class Facts:
    """What doctor found; every field is plain data so tests can build one by hand."""

    python_version: str
    python_executable: str
    cpu_count: int
    torch_version: str | None = None
    torch_error: str | None = None
    cuda_version: str | None = None
    gpu_count: int = 0
    horovod_version: str | None = None
    horovod_error: str | None = None
    horovod_built_torch: str | None = None  # from horovod/metadata.json
    frameworks: dict[str, bool] = field(default_factory=dict)  # pytorch, tensorflow, mxnet
    controllers: dict[str, bool] = field(default_factory=dict)  # mpi, gloo
    tensor_ops: dict[str, bool] = field(default_factory=dict)  # nccl, ddl, ccl, mpi, gloo
    interfaces: list[Interface] = field(default_factory=list)
    ssh: str | None = None
    mpirun: str | None = None


@dataclass
class Check:
    name: str
    level: Level
    detail: str
    fix: str | None = None


def rebuild_command(python: str) -> str:
    """The exact command that rebuilds Horovod for the torch installed in ``python``'s environment."""
    return f"{python} -m hvdtrain.setup.horovod_build --force"


def check(facts: Facts) -> list[Check]:
    """Judge the facts: every problem at once, each error with the command that fixes it."""
    py = facts.python_executable
    out: list[Check] = []
    ok_py = tuple(int(x) for x in facts.python_version.split(".")[:2]) >= (3, 10)
    out.append(Check("python", "ok" if ok_py else "error", f"{facts.python_version} ({py})",
                     None if ok_py else "hvdtrain needs Python >= 3.10"))

    if facts.torch_version is None:
        out.append(Check("torch", "error", f"not importable: {facts.torch_error or 'not installed'}",
                         f"make install  (or: {py} -m pip install torch=={TORCH_VERSION})"))
    else:
        gpus = f"CUDA {facts.cuda_version}, {facts.gpu_count} GPU(s)" if facts.cuda_version else "CPU build"
        out.append(Check("torch", "ok", f"{facts.torch_version} ({gpus})"))

    if facts.horovod_version is None:
        out.append(Check("horovod", "error",
                         f"not importable: {facts.horovod_error or 'not installed'}",
                         f"make install  (or: {py} -m hvdtrain.setup.horovod_build)"))
    else:
        level: Level = "ok" if facts.horovod_version == HOROVOD_VERSION else "warn"
        out.append(Check("horovod", level, facts.horovod_version,
                         None if level == "ok" else f"hvdtrain is tested with {HOROVOD_VERSION}"))
        on = lambda d: ", ".join(k for k, v in d.items() if v) or "none"  # noqa: E731
        if not facts.frameworks.get("pytorch"):
            out.append(Check("horovod frameworks", "error", f"built with: {on(facts.frameworks)}",
                             f"Horovod was built without PyTorch; rebuild: {rebuild_command(py)}"))
        else:
            out.append(Check("horovod frameworks", "ok", on(facts.frameworks)))
        if not facts.controllers.get("gloo"):
            out.append(Check("horovod controllers", "error", f"built with: {on(facts.controllers)}",
                             f"Horovod was built without Gloo; rebuild: {rebuild_command(py)}"))
        else:
            out.append(Check("horovod controllers", "ok", on(facts.controllers)))
        out.append(Check("horovod tensor ops", "info", on(facts.tensor_ops)))
        if facts.torch_version is not None:
            built = facts.horovod_built_torch
            if built is None:
                out.append(Check("horovod built for torch", "warn", "unknown (no metadata.json)",
                                 f"rebuild to be sure: {rebuild_command(py)}"))
            elif built != facts.torch_version:  # '+cpu' vs '+cu121' is a different ABI too
                out.append(Check("horovod built for torch", "error",
                                 f"built against torch {built}, installed torch is {facts.torch_version}",
                                 f"rebuild Horovod for this torch: {rebuild_command(py)}"))
            else:
                out.append(Check("horovod built for torch", "ok", built))

    out.append(Check("cpu cores", "ok", str(facts.cpu_count)))
    physical = [i for i in facts.interfaces if i.kind == "physical"]
    for iface in facts.interfaces:
        label = "" if iface.kind == "physical" else f"  [{iface.kind}: not for cross-host traffic]"
        out.append(Check(f"interface {iface.name}", "info",
                         (", ".join(iface.addresses) or "no address") + label))
    if not physical:
        out.append(Check("network", "warn", "no non-loopback interface with an address",
                         "single-host runs work; multi-host runs need a routable interface"))
    out.append(Check("ssh", "ok" if facts.ssh else "warn", facts.ssh or "not on PATH",
                     None if facts.ssh else "needed only for multi-host runs: install openssh-client"))
    out.append(Check("mpirun", "info", facts.mpirun or "not on PATH (Gloo is used)"))
    return out


def healthy(checks: list[Check]) -> bool:
    return not any(c.level == "error" for c in checks)


def _interfaces() -> list[Interface]:
    try:
        import psutil  # Horovod's own dependency; optional here so doctor still reports without it

        addrs = {
            name: [a.address for a in entries if a.family in (socket.AF_INET, socket.AF_INET6)]
            for name, entries in psutil.net_if_addrs().items()
        }
    except ImportError:
        addrs = {name: [] for _, name in socket.if_nameindex()}
    return [Interface(n, a, classify_interface(n, a)) for n, a in sorted(addrs.items())]


def gather_facts() -> Facts:
    """Look at the real environment. Imports torch and horovod; never raises for a broken install."""
    facts = Facts(
        python_version=platform.python_version(),
        python_executable=sys.executable,
        cpu_count=os.cpu_count() or 1,
        interfaces=_interfaces(),
        ssh=shutil.which("ssh"),
        mpirun=shutil.which("mpirun"),
    )
    try:
        import torch

        facts.torch_version = torch.__version__
        facts.cuda_version = torch.version.cuda
        facts.gpu_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception as exc:  # a broken torch is a finding, not a crash
        facts.torch_error = f"{type(exc).__name__}: {exc}"
    try:
        import horovod
        from horovod.common.util import extension_available

        facts.horovod_version = horovod.__version__
        from hvdtrain.setup.horovod_build import horovod_built_torch

        facts.horovod_built_torch = horovod_built_torch()
        facts.frameworks = {
            "pytorch": bool(extension_available("torch")),
            "tensorflow": bool(extension_available("tensorflow")),
            "mxnet": bool(extension_available("mxnet")),
        }
    except Exception as exc:
        facts.horovod_error = f"{type(exc).__name__}: {exc}"
        return facts
    if facts.frameworks.get("pytorch"):
        try:
            import horovod.torch as hvd

            # Horovod: the *_built() calls ask the loaded extension what it was compiled with.
            facts.controllers = {"mpi": hvd.mpi_built(), "gloo": hvd.gloo_built()}
            facts.tensor_ops = {"nccl": hvd.nccl_built(), "ddl": hvd.ddl_built(),
                                "ccl": hvd.ccl_built(), "mpi": hvd.mpi_built(),
                                "gloo": hvd.gloo_built()}
        except Exception as exc:
            facts.horovod_error = f"horovod.torch failed to load: {type(exc).__name__}: {exc}"
            facts.frameworks["pytorch"] = False
    return facts


def report(facts: Facts, checks: list[Check]) -> dict:
    """The JSON form of a doctor run (``--json``)."""
    return {"ok": healthy(checks), "facts": asdict(facts), "checks": [asdict(c) for c in checks]}
