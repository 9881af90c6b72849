"""Hostfiles and `--hosts` lists, parsed and validated here (Horovod's own parser crashes on
comments and blank lines and accepts duplicate hosts, which then abort).

Accepted, one host per line: ``host slots=N`` or ``host:N``; ``#`` comments (full-line or trailing);
blank lines; CRLF; tabs. Every problem is reported at once as ``file:line: reason``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from hvdtrain.errors import UserError

MAX_SLOTS = 4096
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
_SLOTS_KV = re.compile(r"^slots=(.*)$")
_LOCAL_NAMES = {"localhost", "127.0.0.1"}


@dataclass(frozen=True)
class Host:
    name: str
    slots: int
    line: int = 0  # where it was defined (0 for --hosts)


@dataclass(frozen=True)
class HostList:
    source: str  # file path, or "--hosts" / "launch.hosts"
    hosts: tuple[Host, ...]
    warnings: tuple[str, ...] = ()

    @property
    def total_slots(self) -> int:
        return sum(h.slots for h in self.hosts)


def hostname_problem(name: str) -> str | None:
    if name.count(":") > 1:
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            return (f"{name!r} has more than one ':': write host:slots (an ssh port goes in "
                    "launch.ssh_port)")
        return (f"{name!r} is an IPv6 address; horovodrun's -H accepts hostnames and IPv4 "
                "addresses only: use a hostname")
    if len(name) > 253 or any(len(label) > 63 for label in name.split(".")):
        return (f"host name {name[:40]!r}... is {len(name)} characters long: a host name has at "
                "most 253 characters, and at most 63 between dots")
    if not HOSTNAME.match(name):
        return (f"invalid hostname {name!r}: use letters, digits, '-' and '.' "
                "(an RFC 1123 hostname or an IPv4 address)")
    return None


def _parse_slots(text: str) -> tuple[int | None, str | None]:
    if not re.fullmatch(r"[+-]?\d+", text.strip() or "x"):
        return None, f"slots must be a whole number, got {text!r}"
    n = int(text)
    if n < 1:
        return None, f"slots must be at least 1, got {n}"
    if n > MAX_SLOTS:
        return None, f"slots {n} is more than {MAX_SLOTS}: is that a typo?"
    return n, None


def parse_entry(entry: str) -> tuple[str | None, int | None, str | None]:
    """One host spec (comments already stripped) -> (name, slots, error)."""
    fields = entry.split()
    if not fields:
        return None, None, "empty host entry"
    head = fields[0]
    if ":" in head and head.count(":") == 1:  # host:N
        if len(fields) > 1:
            return None, None, f"unexpected {' '.join(fields[1:])!r} after {head!r}"
        name, slots_text = head.split(":")
        err = hostname_problem(name)
        if err:
            return None, None, err
        slots, err = _parse_slots(slots_text)
        return (name, slots, None) if err is None else (None, None, err)
    err = hostname_problem(head)
    if err:
        return None, None, err
    rest = fields[1:]
    if not rest:
        return None, None, f"missing slots for {head!r}: write '{head} slots=N' or '{head}:N'"
    if rest[0] == "slots" or (rest[0] == "slots=" and len(rest) > 1):
        return None, None, ("write 'slots=N' with no spaces around '=' "
                            "('slots = N' is not supported)")
    m = _SLOTS_KV.match(rest[0])
    if not m:
        return None, None, f"expected 'slots=N' after {head!r}, got {rest[0]!r}"
    if len(rest) > 1:
        return None, None, (f"unsupported {' '.join(rest[1:])!r}: hvdtrain reads only "
                            "'host slots=N' (max_slots and other keys are not supported)")
    slots, err = _parse_slots(m.group(1))
    return (head, slots, None) if err is None else (None, None, err)


def _finish(source: str, entries: list[tuple[int, str]], where) -> HostList:
    """Validate parsed (line, text) entries; ``where(line)`` formats an error location."""
    problems: list[str] = []
    hosts: list[Host] = []
    seen: dict[str, int] = {}
    for line, text in entries:
        name, slots, err = parse_entry(text)
        if err:
            problems.append(f"{where(line)}: {err}")
            continue
        assert name is not None and slots is not None
        key = name.lower()
        if key in seen:
            problems.append(f"{where(line)}: duplicate host {name!r} (first listed {where(seen[key])}): "
                            "list each host once with its total slots")
            continue
        seen[key] = line
        hosts.append(Host(name, slots, line))
    if not problems and not hosts:
        problems.append(f"{source}: no hosts: add lines like 'node1 slots=2' or 'node1:2'")
    if problems:
        raise UserError(f"invalid host list {source} ({len(problems)} problem"
                        f"{'s' if len(problems) > 1 else ''}):", problems)
    return HostList(source, tuple(hosts), tuple(_same_machine_warnings(hosts)))


def is_this_machine(name: str) -> bool:
    """``name`` is this machine (localhost, 127.0.0.1 or its own host name)."""
    own = {socket.gethostname().lower(), socket.getfqdn().lower()}
    return name.lower() in _LOCAL_NAMES | own


def _same_machine_warnings(hosts: list[Host]) -> list[str]:
    local = [h.name for h in hosts if is_this_machine(h.name)]
    if len(local) > 1:
        return [f"{', '.join(local)} are all this machine: their ranks share its cores and "
                "horovodrun treats them as different hosts"]
    return []


MAX_HOSTFILE_BYTES = 1 << 20
THIS_MACHINE = "this machine"  # the source of the host list when no hosts are given


def parse_hostfile(path: str | Path) -> HostList:
    path = Path(path)
    try:
        if not path.is_file():  # a FIFO would block, /dev/zero never end
            raise UserError(f"hostfile {path} is not a regular file (a directory, device, FIFO "
                            "or socket): give the path of a text file" if path.exists() else
                            f"hostfile not found: {path}")
        if path.stat().st_size > MAX_HOSTFILE_BYTES:
            raise UserError(f"hostfile {path} is larger than {MAX_HOSTFILE_BYTES >> 20} MiB: a "
                            "hostfile has one short line per host")
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read hostfile {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (expected lines like 'node1 slots=2')") from None
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):  # splitlines handles CRLF
        body = line.split("#", 1)[0].strip()
        if body:
            entries.append((number, body))
    return _finish(str(path), entries, lambda n: f"{path}:{n}")


def parse_hosts_arg(spec: str, source: str = "--hosts") -> HostList:
    """``h1:2,h2:2`` (horovodrun's -H syntax)."""
    parts = [p.strip() for p in spec.split(",")]
    entries = [(i, p) for i, p in enumerate(parts, start=1)]
    return _finish(source, entries, lambda n: f"{source} entry {n}")


def assign(hosts: HostList, np: int) -> list[Host]:
    """Take the first ``np`` slots in host order: the normalized -H list horovodrun gets."""
    if np > hosts.total_slots:
        raise UserError(f"np={np} needs more slots than {hosts.source} has ({hosts.total_slots}): "
                        f"lower --np or add slots/hosts")
    out, left = [], np
    for h in hosts.hosts:
        if left == 0:
            break
        take = min(h.slots, left)
        out.append(Host(h.name, take, h.line))
        left -= take
    return out
