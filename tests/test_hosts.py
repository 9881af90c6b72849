"""Hostfile and --hosts parsing: accepted forms, and every bad input with its exact message."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from conftest import ROOT

from hvdtrain.errors import UserError
from hvdtrain.launcher.hosts import Host, HostList, assign, parse_hostfile, parse_hosts_arg


def write(tmp_path: Path, text: str | bytes, name: str = "hf") -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def test_accepts_both_formats_comments_blank_lines_crlf_and_tabs(tmp_path: Path) -> None:
    p = write(tmp_path, b"# cluster\r\n\r\nnode1 slots=2   # trailing\r\n\tnode2:4\r\n  \t\r\n"
                        b"10.0.0.7\tslots=1\r\n")
    hl = parse_hostfile(p)
    assert hl.hosts == (Host("node1", 2, 3), Host("node2", 4, 4), Host("10.0.0.7", 1, 6))
    assert hl.total_slots == 7


def test_shipped_hostfiles_parse() -> None:
    assert parse_hostfile(ROOT / "hostfiles" / "localhost").hosts == (Host("localhost", 2, 2),)
    example = parse_hostfile(ROOT / "hostfiles" / "two-node.example")
    assert [(h.name, h.slots) for h in example.hosts] == [("node1", 2), ("node2", 2)]


BAD = [
    ("node1\n", "hf:1: missing slots for 'node1': write 'node1 slots=N' or 'node1:N'"),
    ("node1 slots=0\n", "hf:1: slots must be at least 1, got 0"),
    ("node1 slots=-2\n", "hf:1: slots must be at least 1, got -2"),
    ("node1 slots=two\n", "hf:1: slots must be a whole number, got 'two'"),
    ("node1 slots=1.5\n", "hf:1: slots must be a whole number, got '1.5'"),
    ("node1:0\n", "hf:1: slots must be at least 1, got 0"),
    ("node1 slots = 2\n", "hf:1: write 'slots=N' with no spaces around '=' ('slots = N' is not supported)"),
    ("node1 slots=2 max_slots=4\n",
     "hf:1: unsupported 'max_slots=4': hvdtrain reads only 'host slots=N' (max_slots and other keys "
     "are not supported)"),
    ("node1 cpus=2\n", "hf:1: expected 'slots=N' after 'node1', got 'cpus=2'"),
    ("bad_host slots=1\n",
     "hf:1: invalid hostname 'bad_host': use letters, digits, '-' and '.' (an RFC 1123 hostname or "
     "an IPv4 address)"),
    ("$(touch /tmp/pwned) slots=1\n",
     "hf:1: invalid hostname '$(touch': use letters, digits, '-' and '.' (an RFC 1123 hostname or "
     "an IPv4 address)"),
    ("a;b:1\n",
     "hf:1: invalid hostname 'a;b': use letters, digits, '-' and '.' (an RFC 1123 hostname or an "
     "IPv4 address)"),
    ("fe80::1 slots=1\n",
     "hf:1: 'fe80::1' is an IPv6 address; horovodrun's -H accepts hostnames and IPv4 "
     "addresses only: use a hostname"),
    ("node1 slots=99999\n", "hf:1: slots 99999 is more than 4096: is that a typo?"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[b[0].strip() for b in BAD])
def test_bad_lines_are_rejected_with_file_and_line(tmp_path: Path, monkeypatch, text: str,
                                                   message: str) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, text)
    with pytest.raises(UserError) as info:
        parse_hostfile("hf")
    assert info.value.problems == [message]
    assert str(info.value) == "invalid host list hf (1 problem):"


def test_every_problem_is_reported_at_once_including_duplicates(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "a slots=1\n# x\nb slots=0\nA:2\nc\n")
    with pytest.raises(UserError) as info:
        parse_hostfile("hf")
    assert info.value.problems == [
        "hf:3: slots must be at least 1, got 0",
        "hf:4: duplicate host 'A' (first listed hf:1): list each host once with its total slots",
        "hf:5: missing slots for 'c': write 'c slots=N' or 'c:N'",
    ]


def test_empty_missing_and_binary_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "# only comments\n\n")
    with pytest.raises(UserError) as info:
        parse_hostfile("hf")
    assert info.value.problems == ["hf: no hosts: add lines like 'node1 slots=2' or 'node1:2'"]
    with pytest.raises(UserError, match=r"^hostfile not found: nope$"):
        parse_hostfile("nope")
    write(tmp_path, b"\xff\xfe\x00", "bin")
    with pytest.raises(UserError, match=r"^bin: not a text file \(expected lines like 'node1 slots=2'\)$"):
        parse_hostfile("bin")


def test_same_machine_names_warn() -> None:
    own = socket.gethostname()
    hl = parse_hosts_arg(f"localhost:1,127.0.0.1:1,{own}:1")
    assert hl.warnings == (f"localhost, 127.0.0.1, {own} are all this machine: their ranks share "
                           "its cores and horovodrun treats them as different hosts",)
    assert parse_hosts_arg("localhost:2").warnings == ()


def test_hosts_arg_errors_name_the_entry() -> None:
    with pytest.raises(UserError) as info:
        parse_hosts_arg("a:2,,b:x")
    assert info.value.problems == ["--hosts entry 2: empty host entry",
                                   "--hosts entry 3: slots must be a whole number, got 'x'"]


def test_assign_fills_hosts_in_order_and_rejects_too_many() -> None:
    hl = HostList("f", (Host("a", 2), Host("b", 2), Host("c", 2)))
    assert assign(hl, 3) == [Host("a", 2), Host("b", 1)]
    assert assign(hl, 6) == [Host("a", 2), Host("b", 2), Host("c", 2)]
    with pytest.raises(UserError, match=r"^np=7 needs more slots than f has \(6\): lower --np or "
                                        r"add slots/hosts$"):
        assign(hl, 7)


def test_hosts_command_table_json_and_errors(in_cli, tmp_path: Path) -> None:
    good = write(tmp_path, "n1 slots=2\nn2:1\n", "good")
    proc = in_cli("hosts", str(good))
    assert proc.returncode == 0
    assert "n1" in proc.stdout and "3 slot(s)" in proc.stdout
    data = json.loads(in_cli("hosts", str(good), "--json").stdout)
    assert data == {"ok": True, "source": str(good), "total_slots": 3, "warnings": [],
                    "hosts": [{"host": "n1", "slots": 2, "line": 1},
                              {"host": "n2", "slots": 1, "line": 2}]}
    bad = write(tmp_path, "n1 slots=0\n", "bad")
    proc = in_cli("hosts", str(bad))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (f"error: invalid host list {bad} (1 problem):\n"
                           f"  {bad}:1: slots must be at least 1, got 0\n")
    assert "Traceback" not in proc.stderr
    proc = in_cli("hosts", str(bad), "--json")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["errors"] == [f"invalid host list {bad} (1 problem):",
                                                 f"{bad}:1: slots must be at least 1, got 0"]
