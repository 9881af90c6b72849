"""A real two-host cluster on one machine: two network namespaces joined by a veth pair, an sshd in
each, and `hvdtrain run --hostfile` launched from inside the first. Skipped (with the reason) only
where namespaces cannot be made. Traffic goes only to the namespaces' own addresses."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import netns
import pytest
from conftest import BIN, ROOT

pytestmark = pytest.mark.horovod

REASON = netns.unavailable()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if REASON:
        pytest.skip(f"two-host cluster tests: {REASON}")
    c = netns.Cluster.create(tmp_path_factory.mktemp("cluster"))
    yield c
    c.close()
    leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert all(h.ns not in leftover for h in c.hosts)


def in_a(cluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    a = cluster.hosts[0]
    return subprocess.run(a.run(str(BIN / "hvdtrain"), *args), cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def ssh_settings(cluster) -> list[str]:
    return ["launch.ssh_port=2222", f"launch.ssh_identity_file={cluster.key}",
            "launch.network_interfaces=[hvd0]"]


def test_two_host_run_over_ssh_trains_on_both_hosts_over_the_veth(cluster, tmp_path: Path) -> None:
    b = cluster.hosts[1]
    rx_before = b.counter("rx_bytes")
    run_dir = tmp_path / "run"
    proc = in_a(cluster, "run", "digits-cnn", "--hostfile", str(cluster.hostfile()), "--np", "2",
                *ssh_settings(cluster), "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["final_eval_acc"] >= 0.97
    assert manifest["replicas_identical"] is True
    assert manifest["worker_hosts"] == ["198.51.100.1", "198.51.100.2"]  # one rank per host
    assert manifest["argv"][3:5] == ["-H", "198.51.100.1:1,198.51.100.2:1"]
    # Gloo's gradient traffic reached host b over the veth: at least one fp16 gradient per step.
    grad = manifest["wire"]["wire_bytes"]
    assert b.counter("rx_bytes") - rx_before > grad * 22 * 12


def test_preflight_reports_both_hosts_and_the_common_interface(cluster) -> None:
    proc = in_a(cluster, "hosts", str(cluster.hostfile()), "--check", "--ssh-port", "2222",
                "--ssh-identity-file", str(cluster.key), "--json", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    assert [(h["host"], h["local"], h["reachable"]) for h in report["hosts"]] == [
        ("198.51.100.1", True, True), ("198.51.100.2", False, True)]
    assert report["common_interfaces"] == ["hvd0"]
    assert report["recommended_network_interfaces"] == ["hvd0"]
    versions = {h["facts"]["versions"]["horovod"] for h in report["hosts"]}
    assert versions == {"0.28.1"}


def test_preflight_names_an_unreachable_host_without_hanging(cluster) -> None:
    b = cluster.hosts[1]
    cluster.stop_sshd(b)
    try:
        t0 = time.monotonic()
        proc = in_a(cluster, "hosts", str(cluster.hostfile()), "--check", "--ssh-port", "2222",
                    "--ssh-identity-file", str(cluster.key), "--timeout", "10", "--json",
                    timeout=60)
        assert time.monotonic() - t0 < 30
        assert proc.returncode == 1
        report = json.loads(proc.stdout)
        row = report["hosts"][1]
        assert (row["host"], row["reachable"]) == ("198.51.100.2", False)
        assert row["problems"][0].startswith("unreachable: ")
        assert "Connection refused" in row["problems"][0]
        table = in_a(cluster, "hosts", str(cluster.hostfile()), "--check", "--ssh-port", "2222",
                     "--ssh-identity-file", str(cluster.key), "--timeout", "10", timeout=60)
        assert table.returncode == 1 and "unreachable" in table.stdout
        assert "recommended: launch.network_interfaces=[hvd0]" in table.stdout
        assert "hvd0, lo (loopback)" in table.stdout  # loopback flagged, never recommended
        run = in_a(cluster, "run", "digits-cnn", "--hostfile", str(cluster.hostfile()),
                   *ssh_settings(cluster), "--run-dir", "/tmp/never-created-hvdtrain", timeout=60)
        assert run.returncode == 2
        assert "pre-flight check failed, nothing launched" in run.stderr
        assert not Path("/tmp/never-created-hvdtrain").exists()
        probe = in_a(cluster, "forecast", "digits-cnn", "--link", "measured", "--hostfile",
                     str(cluster.hostfile()), *ssh_settings(cluster), "--np", "2", timeout=60)
        assert probe.returncode == 2
        assert ("error: --link measured: 198.51.100.2 failed the check above; nothing launched "
                "(fix the hosts in --hosts/--hostfile, or name the link: --link 1gbit)"
                ) in " ".join(probe.stderr.split())
    finally:
        cluster.start_sshd(b)


def test_forecast_measures_the_shaped_link_between_the_hosts(cluster) -> None:
    """`forecast --link measured`: Horovod allreduces between the two hosts over ssh, at the
    veth's 100 Mbit/s; kept, so the plan of those hosts uses it."""
    cluster.limit_rate("100mbit")
    try:
        proc = in_a(cluster, "forecast", "digits-cnn", "--link", "measured", "--hostfile",
                    str(cluster.hostfile()), *ssh_settings(cluster), "--np", "2,4", "--json")
    finally:
        for h in cluster.hosts:
            subprocess.run(h.run("tc", "qdisc", "del", "dev", netns.IFACE, "root"),
                           capture_output=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "measuring the link between 198.51.100.1 and 198.51.100.2" in proc.stderr
    link = json.loads(proc.stdout)["link"]
    assert (link["name"], link["measured"]) == ("measured", True)
    assert 0.07 <= link["gbit"] <= 0.11  # the shaper's 100 Mbit/s, less TCP's and Gloo's share
    plan = in_a(cluster, "plan", "digits-cnn", "--hostfile", str(cluster.hostfile()),
                *ssh_settings(cluster), "--json")
    assert json.loads(plan.stdout)["forecast"].endswith("fp16 on measured link")


def test_rate_limited_link_is_in_force(cluster) -> None:
    """The fixture can shape the veth (for compression benchmarks): 4 MB at 100 Mbit/s >= 0.3 s."""
    a, b = cluster.hosts
    cluster.limit_rate("100mbit")
    server = subprocess.Popen(b.run("python3", "-c",
                                    "import socket\n"
                                    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                                    f"s.bind(('{b.address}', 5201)); s.listen(1); print('ready', flush=True)\n"
                                    "c, _ = s.accept(); n = 0\n"
                                    "while (d := c.recv(65536)): n += len(d)\n"
                                    "print(n, flush=True)\n"),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        client = subprocess.run(a.run("python3", "-c",
                                      "import socket, time\n"
                                      f"s = socket.create_connection(('{b.address}', 5201))\n"
                                      "t = time.monotonic(); s.sendall(b'x' * 4_000_000)\n"
                                      "s.shutdown(socket.SHUT_WR); s.recv(1); print(time.monotonic() - t)\n"),
                                capture_output=True, text=True, timeout=60)
        received = int(server.stdout.readline())
        seconds = float(client.stdout.strip())
    finally:
        server.kill()
        server.wait()
        for h in cluster.hosts:
            subprocess.run(h.run("tc", "qdisc", "del", "dev", netns.IFACE, "root"),
                           capture_output=True)
    assert received == 4_000_000
    assert seconds >= 0.3  # 32 Mbit at 100 Mbit/s is 0.32 s
