"""Pre-flight judgement (pure) and the ssh argv it uses; the real ssh runs are in test_cluster.py."""

from __future__ import annotations

import os
import sys

from hvdtrain.launcher.preflight import HostReport, check_hosts, judge, ssh_argv

ME = {"python": "3.11.7", "versions": {"torch": "2.13.0+cpu", "horovod": "0.28.1",
                                       "hvdtrain": "0.1.0"}}


def facts(**changes) -> dict:
    f = {"python": "3.11.7", "executable": "/venv/bin/python", "cwd_exists": True, "hostname": "n",
         "versions": dict(ME["versions"]),
         "interfaces": {"lo": ["127.0.0.1"], "eth0": ["10.0.0.2"], "docker0": ["172.17.0.1"]}}
    f.update(changes)
    return f


def test_healthy_hosts_share_eth0() -> None:
    reports = [HostReport("a", False, True, facts=facts()), HostReport("b", False, True, facts=facts())]
    common, recommended = judge(reports, ME, [])
    assert (common, recommended) == (["eth0"], ["eth0"])
    assert [r.problems for r in reports] == [[], []]


def test_every_mismatch_is_named() -> None:
    bad = facts(python="3.10.4", cwd_exists=False,
                versions={"torch": "2.14.1", "horovod": "0.28.1", "hvdtrain": None},
                interfaces={"lo": ["127.0.0.1"], "ens5": ["10.0.0.3"]})
    reports = [HostReport("a", False, True, facts=facts()), HostReport("b", False, True, facts=bad)]
    common, _ = judge(reports, ME, ["eth0"])
    assert common == []
    assert reports[1].problems == [
        f"working directory {os.getcwd()} does not exist there (horovodrun runs `cd <cwd>` on every host)",
        "Python 3.10.4 here vs 3.11.7 on the launching host",
        "torch 2.14.1 vs 2.13.0+cpu on the launching host",
        "hvdtrain None vs 0.1.0 on the launching host",
        "launch.network_interfaces ['eth0'] not on this host (common interfaces: none)",
        "no non-loopback interface shared by all hosts: Gloo needs one interface name present on "
        "every host",
    ]


def test_unreachable_and_missing_interpreter() -> None:
    reports = [HostReport("a", False, False, "ssh: connect to host a port 22: Connection refused"),
               HostReport("b", False, True, "interpreter /venv/bin/python not found: No such file")]
    judge(reports, ME, [])
    assert reports[0].problems == [
        "unreachable: ssh: connect to host a port 22: Connection refused (check that plain `ssh` "
        "to it works without a password, with the recipe's launch.ssh_port / "
        "launch.ssh_identity_file)"]
    assert reports[1].problems[0].startswith("unusable: interpreter /venv/bin/python not found")


def test_ssh_argv_uses_horovodruns_options_and_quotes_the_remote_command() -> None:
    argv = ssh_argv("node1", ["/opt/my env/python", "-c", "print(1)", "/work dir"], 2222, "/k", 10)
    assert argv == ["ssh", "-o", "PasswordAuthentication=no", "-o", "StrictHostKeyChecking=no",
                    "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", "2222", "-i", "/k",
                    "node1", "'/opt/my env/python' -c 'print(1)' '/work dir'"]


def test_localhost_check_runs_the_probe_for_real() -> None:
    report = check_hosts(["localhost"], timeout=60)
    assert report["ok"] is True, report
    host = report["hosts"][0]
    assert host["local"] is True and host["facts"]["executable"] == sys.executable
    assert host["facts"]["versions"]["horovod"] == "0.28.1"
