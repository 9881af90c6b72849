"""Cluster pre-flight: before horovodrun hangs on a bad host, ask every host (in parallel, with the
same ssh options horovodrun uses and a per-host timeout) whether it can run this job.

Each host runs a small probe with the launching host's interpreter path and working directory and
answers with JSON: versions, whether the interpreter and directory exist, network interfaces.
``judge`` compares the answers (pure, unit-tested) and recommends ``launch.network_interfaces``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from hvdtrain.errors import UserError
from hvdtrain.machine import classify_interface

# Runs on every host (python -c PROBE CWD). Standard library plus what hvdtrain needs anyway.
PROBE = r"""
import importlib.metadata as m, json, os, platform, socket, sys
def v(d):
    try: return m.version(d)
    except Exception: return None
try:
    import psutil
    ifs = {n: [a.address for a in e if a.family in (socket.AF_INET, socket.AF_INET6)]
           for n, e in psutil.net_if_addrs().items()}
except Exception:
    ifs = {n: [] for _, n in socket.if_nameindex()}
print(json.dumps({"python": platform.python_version(), "executable": sys.executable,
                  "cwd_exists": os.path.isdir(sys.argv[1]), "hostname": socket.gethostname(),
                  "versions": {d: v(d) for d in ("torch", "horovod", "hvdtrain")},
                  "interfaces": ifs}))
"""
# horovodrun's own ssh options (horovod/runner/util/remote.py), plus no prompts and a time limit.
SSH_BASE = ["-o", "PasswordAuthentication=no", "-o", "StrictHostKeyChecking=no",
            "-o", "BatchMode=yes"]


@dataclass
class HostReport:
    host: str
    local: bool
    reachable: bool
    error: str | None = None
    facts: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def ssh_argv(host: str, remote: list[str], port: int | None, identity: str | None,
             timeout: float) -> list[str]:
    argv = ["ssh", *SSH_BASE, "-o", f"ConnectTimeout={max(1, int(timeout))}"]
    if port:
        argv += ["-p", str(port)]
    if identity:
        argv += ["-i", identity]
    # ssh hands the remote side one command line: quote each argument for its shell.
    return argv + [host, shlex.join(remote)]


def local_addresses() -> set[str]:
    import psutil

    return {a.address.split("%")[0] for e in psutil.net_if_addrs().values() for a in e}


def is_local(host: str, local: set[str]) -> bool:
    import socket

    try:
        return socket.gethostbyname(host) in local or host in ("localhost", socket.gethostname())
    except OSError:
        return False


def probe(host: str, local: bool, port: int | None, identity: str | None, timeout: float,
          python: str, cwd: str) -> HostReport:
    remote = [python, "-c", PROBE, cwd]
    argv = remote if local else ssh_argv(host, remote, port, identity, timeout)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return HostReport(host, local, False, f"no answer within {timeout:g} s")
    except OSError as exc:
        return HostReport(host, local, False, str(exc))
    if out.returncode != 0:
        err = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
        if out.returncode == 127 or "No such file" in err:
            return HostReport(host, local, True, f"interpreter {python} not found: {err}")
        return HostReport(host, local, out.returncode != 255, err)
    try:
        return HostReport(host, local, True, None, json.loads(out.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return HostReport(host, local, True, f"unreadable probe answer: {out.stdout[-200:]!r}")


def judge(reports: list[HostReport], me: dict, wanted_ifaces: list[str]) -> tuple[list[str], list[str]]:
    """Fill each report's problems; return (common usable interfaces, recommended setting)."""
    common: set[str] | None = None
    for r in reports:
        if r.error:
            fix = ("check that plain `ssh` to it works without a password, with the recipe's "
                   "launch.ssh_port / launch.ssh_identity_file" if not r.reachable
                   else "install the same environment at the same path on every host")
            r.problems.append(f"{'unreachable' if not r.reachable else 'unusable'}: {r.error} ({fix})")
            continue
        f = r.facts
        if not f["cwd_exists"]:
            r.problems.append(f"working directory {os.getcwd()} does not exist there "
                              "(horovodrun runs `cd <cwd>` on every host)")
        if f["python"].rsplit(".", 1)[0] != me["python"].rsplit(".", 1)[0]:
            r.problems.append(f"Python {f['python']} here vs {me['python']} on the launching host")
        for dist in ("torch", "horovod", "hvdtrain"):
            if f["versions"].get(dist) != me["versions"].get(dist):
                r.problems.append(f"{dist} {f['versions'].get(dist)} vs {me['versions'].get(dist)} "
                                  "on the launching host")
        usable = {n for n, a in f["interfaces"].items() if classify_interface(n, a) == "physical"
                  and a}
        common = usable if common is None else common & usable
    common_list = sorted(common or [])
    for r in reports:
        if r.facts and wanted_ifaces:
            missing = [i for i in wanted_ifaces if i not in r.facts["interfaces"]]
            if missing:
                r.problems.append(f"launch.network_interfaces {missing} not on this host "
                                  f"(common interfaces: {common_list or 'none'})")
    if not common_list and any(r.facts for r in reports) and len(reports) > 1:
        for r in reports:
            if r.facts:
                r.problems.append("no non-loopback interface shared by all hosts: Gloo needs one "
                                  "interface name present on every host")
    return common_list, common_list[:1]


def check_hosts(hosts: list[str], port: int | None = None, identity: str | None = None,
                timeout: float = 15.0, wanted_ifaces: list[str] | None = None) -> dict:
    """Probe every host in parallel; returns the JSON-ready report (``ok`` false on any problem)."""
    python, cwd = sys.executable, os.getcwd()
    local = local_addresses()
    with ThreadPoolExecutor(max_workers=min(32, len(hosts) or 1)) as pool:
        reports = list(pool.map(lambda h: probe(h, is_local(h, local), port, identity, timeout,
                                                python, cwd), hosts))
    me = probe("localhost", True, None, None, timeout, python, cwd).facts
    common, recommended = judge(reports, me, wanted_ifaces or [])
    return {"ok": not any(r.problems for r in reports), "hosts": [asdict(r) for r in reports],
            "common_interfaces": common, "recommended_network_interfaces": recommended,
            "launching_host": me}


def refuse_failing(hosts: list[str], launch, refusal: Callable[[list[str]], str]) -> None:
    """Check ``hosts`` with the recipe's launch settings (ssh port, key, interfaces); when one
    fails, the check's table on stderr and a UserError saying ``refusal(failing hosts)``."""
    report = check_hosts(hosts, launch.ssh_port, launch.ssh_identity_file, 15.0,
                         launch.network_interfaces)
    if report["ok"]:
        return
    from rich.console import Console

    from hvdtrain.launcher.display import print_preflight

    print_preflight(Console(stderr=True, highlight=False), report)
    raise UserError(refusal([h["host"] for h in report["hosts"] if h["problems"]]))


def run_discovery(script: str, timeout: float = 60.0) -> tuple[int, str, str] | str:
    """Run the elastic host discovery script once, as horovodrun will: (exit code, stdout,
    stderr), or why it could not run. It and whatever it starts are stopped after ``timeout``
    (launch.check_timeout). The judge: checks.discovery_output_problems."""
    from hvdtrain.launcher.helpers import run_helper

    try:
        ran = run_helper([script], timeout=timeout)
    except OSError as exc:
        return f"elastic.host_discovery_script {script} cannot run: {exc.strerror}"
    if ran.code is None:
        printed = ran.stdout.strip().splitlines()
        said = (f"printed {'; '.join(printed[:3])!r}{' ...' if len(printed) > 3 else ''} and "
                "then did not finish" if printed else "printed nothing")
        return (f"elastic.host_discovery_script {script} {said} within {timeout:g} s "
                "(launch.check_timeout); horovodrun runs it again every few seconds and would "
                "hang with it: make it print its hosts and exit")
    return ran.code, ran.stdout, ran.stderr
