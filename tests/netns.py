"""Test hosts on one machine: network namespaces joined by a veth pair (two hosts) or by veths to a
bridge in a namespace of its own (three or more: a switch), each with its own sshd listening only
on its namespace address. Only these addresses (TEST-NET-2, which exist only inside
the namespaces) and loopback ever carry traffic. Everything is torn down by ``close()``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SUBNET = "198.51.100"  # TEST-NET-2 (RFC 5737): never routed, only inside our namespaces
IFACE = "hvd0"  # the same name on both ends, so horovodrun finds a common interface
PORT = 2222


def unavailable() -> str | None:
    """Why this machine cannot build the namespace hosts (None when it can)."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path(SSHD).exists():
        return f"{SSHD} is missing (make test-hosts-deps installs openssh-server)"
    probe = f"hvdt-probe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create network namespaces: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


@dataclass
class Host:
    ns: str
    address: str
    sshd: subprocess.Popen | None = None

    def run(self, *argv: str) -> list[str]:
        """argv prefixed to run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def counter(self, name: str) -> int:
        out = sh(*self.run("cat", f"/sys/class/net/{IFACE}/statistics/{name}"))
        return int(out.stdout.strip())


@dataclass
class Cluster:
    workdir: Path
    hosts: list[Host] = field(default_factory=list)
    key: Path | None = None
    switch: str | None = None  # the bridge's namespace (three hosts or more)

    @classmethod
    def create(cls, workdir: Path, n: int = 2) -> Cluster:
        tag = uuid.uuid4().hex[:6]
        c = cls(workdir, [Host(f"hvdt-{tag}-{chr(97 + i)}", f"{SUBNET}.{i + 1}") for i in range(n)])
        if n > 2:
            c.switch = f"hvdt-{tag}-sw"
        try:
            c._build()
        except BaseException:
            c.close()
            raise
        return c

    def _build(self) -> None:
        for h in self.hosts:
            sh("ip", "netns", "add", h.ns)
            sh(*h.run("ip", "link", "set", "lo", "up"))
        if self.switch is None:
            a, b = self.hosts
            sh("ip", "link", "add", "hvdt-tmp-a", "type", "veth", "peer", "name", "hvdt-tmp-b")
            ends = [(a, "hvdt-tmp-a"), (b, "hvdt-tmp-b")]
        else:
            ends = self._switch()
        for h, end in ends:
            sh("ip", "link", "set", end, "netns", h.ns)
            sh(*h.run("ip", "link", "set", end, "name", IFACE))
            sh(*h.run("ip", "addr", "add", f"{h.address}/24", "dev", IFACE))
            sh(*h.run("ip", "link", "set", IFACE, "up"))
        self.key = self.workdir / "id_ed25519"
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key))
        (self.workdir / "authorized_keys").write_text(Path(f"{self.key}.pub").read_text())
        for h in self.hosts:
            self.start_sshd(h)

    def _switch(self) -> list[tuple[Host, str]]:
        """A bridge in its own namespace with one veth port per host (a switch: each host's
        egress shaped on its own end, as on switched Ethernet)."""
        sw = ["ip", "netns", "exec", self.switch]
        sh("ip", "netns", "add", self.switch)
        sh(*sw, "ip", "link", "add", "br0", "type", "bridge")
        sh(*sw, "ip", "link", "set", "br0", "up")
        ends = []
        for i, h in enumerate(self.hosts):
            port, end = f"hvdt-p{i}", f"hvdt-tmp-{i}"
            sh("ip", "link", "add", end, "type", "veth", "peer", "name", port)
            sh("ip", "link", "set", port, "netns", self.switch)
            sh(*sw, "ip", "link", "set", port, "master", "br0")
            sh(*sw, "ip", "link", "set", port, "up")
            ends.append((h, end))
        return ends

    def start_sshd(self, h: Host) -> None:
        d = self.workdir / h.ns
        d.mkdir(exist_ok=True)
        hostkey = d / "host_key"
        if not hostkey.exists():
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey))
        config = d / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {h.address}", f"Port {PORT}", f"HostKey {hostkey}",
            f"PidFile {d / 'sshd.pid'}", f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}",
            "PermitRootLogin yes", "PasswordAuthentication no", "StrictModes no", "UsePAM no",
            "PermitUserEnvironment no", "AcceptEnv *", "MaxStartups 100", "LogLevel ERROR",
        ]) + "\n")
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege-separation directory
        h.sshd = subprocess.Popen(h.run(SSHD, "-D", "-e", "-f", str(config)),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = subprocess.run(h.run("ssh", *self.ssh_options(), h.address, "true"),
                                   capture_output=True, timeout=10)
            if probe.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"sshd in {h.ns} did not come up")

    def stop_sshd(self, h: Host) -> None:
        if h.sshd is not None and h.sshd.poll() is None:
            h.sshd.send_signal(signal.SIGTERM)
            try:
                h.sshd.wait(timeout=5)
            except subprocess.TimeoutExpired:
                h.sshd.kill()
                h.sshd.wait()
        h.sshd = None

    def ssh_options(self) -> list[str]:
        return ["-p", str(PORT), "-i", str(self.key), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR"]

    def limit_rate(self, rate: str) -> None:
        """Shape egress of both veth ends (e.g. '1gbit') so bytes on the wire cost time."""
        for h in self.hosts:
            sh(*h.run("tc", "qdisc", "replace", "dev", IFACE, "root", "tbf", "rate", rate,
                      "burst", "256kb", "latency", "100ms"))

    def hostfile(self, slots: int = 1) -> Path:
        path = self.workdir / "hostfile"
        path.write_text("".join(f"{h.address} slots={slots}\n" for h in self.hosts))
        return path

    def close(self) -> None:
        for h in self.hosts:
            self.stop_sshd(h)
            # Any process still inside the namespace (a stray worker) goes with it.
            pids = sh("ip", "netns", "pids", h.ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", h.ns, check=False)
        if self.switch is not None:
            sh("ip", "netns", "del", self.switch, check=False)
