"""Doctor: pure checks on injected facts (healthy and broken), plus one real run on this machine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hvdtrain.machine import classify_interface
from hvdtrain.setup.doctor import Check, Facts, Interface, check, healthy


def healthy_facts(**changes) -> Facts:
    facts = Facts(
        python_version="3.11.7", python_executable="/venv/bin/python", cpu_count=2,
        torch_version="2.13.0+cpu", horovod_version="0.28.1", horovod_built_torch="2.13.0+cpu",
        frameworks={"pytorch": True, "tensorflow": False, "mxnet": False},
        controllers={"mpi": False, "gloo": True},
        tensor_ops={"nccl": False, "ddl": False, "ccl": False, "mpi": False, "gloo": True},
        interfaces=[Interface("eth0", ["10.0.0.2"]), Interface("lo", ["127.0.0.1"], "loopback")],
        ssh="/usr/bin/ssh",
    )
    for key, value in changes.items():
        setattr(facts, key, value)
    return facts


def by_name(checks: list[Check], name: str) -> Check:
    return next(c for c in checks if c.name == name)


def test_healthy_machine_passes() -> None:
    checks = check(healthy_facts())
    assert healthy(checks)
    assert [c.name for c in checks if c.level == "error"] == []
    assert by_name(checks, "horovod built for torch").detail == "2.13.0+cpu"


def test_missing_horovod_is_an_error_with_the_install_command() -> None:
    checks = check(healthy_facts(horovod_version=None,
                                 horovod_error="ModuleNotFoundError: No module named 'horovod'"))
    assert not healthy(checks)
    c = by_name(checks, "horovod")
    assert c.level == "error"
    assert c.detail == "not importable: ModuleNotFoundError: No module named 'horovod'"
    assert c.fix == "make install  (or: /venv/bin/python -m hvdtrain.setup.horovod_build)"


def test_torch_mismatch_gives_the_exact_rebuild_command() -> None:
    checks = check(healthy_facts(torch_version="2.14.1", horovod_built_torch="2.13.0+cpu"))
    c = by_name(checks, "horovod built for torch")
    assert (c.level, c.detail) == ("error", "built against torch 2.13.0+cpu, installed torch is 2.14.1")
    assert c.fix == "rebuild Horovod for this torch: /venv/bin/python -m hvdtrain.setup.horovod_build --force"
    assert not healthy(checks)


def test_gloo_absent_is_an_error() -> None:
    checks = check(healthy_facts(controllers={"mpi": True, "gloo": False}))
    c = by_name(checks, "horovod controllers")
    assert (c.level, c.detail) == ("error", "built with: mpi")
    assert c.fix == ("Horovod was built without Gloo; rebuild: "
                     "/venv/bin/python -m hvdtrain.setup.horovod_build --force")
    assert not healthy(checks)


def test_built_without_pytorch_is_an_error() -> None:
    checks = check(healthy_facts(frameworks={"pytorch": False, "tensorflow": True, "mxnet": False}))
    c = by_name(checks, "horovod frameworks")
    assert (c.level, c.detail) == ("error", "built with: tensorflow")
    assert not healthy(checks)


def test_missing_torch_is_an_error() -> None:
    checks = check(healthy_facts(torch_version=None, torch_error="ImportError: libc10.so"))
    assert by_name(checks, "torch").level == "error"
    assert not healthy(checks)


def test_missing_ssh_only_warns_and_only_loopback_warns() -> None:
    checks = check(healthy_facts(ssh=None, interfaces=[Interface("lo", ["127.0.0.1"], "loopback")]))
    assert healthy(checks)
    assert by_name(checks, "ssh").level == "warn"
    assert by_name(checks, "network").level == "warn"


@pytest.mark.parametrize(("name", "addrs", "kind"), [
    ("lo", ["127.0.0.1"], "loopback"),
    ("docker0", ["172.17.0.1"], "docker"),
    ("br-3f2a9c1d", ["172.18.0.1"], "docker"),
    ("veth12ab", [], "docker"),
    ("virbr0", ["192.168.122.1"], "bridge"),
    ("cni0", ["10.88.0.1"], "bridge"),
    ("eth0", ["10.0.0.2"], "physical"),
    ("ens5", ["10.0.0.3", "fe80::1%ens5"], "physical"),
    ("dummy0", ["127.0.0.2"], "loopback"),
])
def test_interface_classification(name: str, addrs: list[str], kind: str) -> None:
    assert classify_interface(name, addrs) == kind


def test_doctor_on_this_machine_reports_pytorch_and_gloo(in_cli) -> None:
    proc = in_cli("doctor", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] is True
    assert data["facts"]["frameworks"]["pytorch"] is True
    assert data["facts"]["controllers"]["gloo"] is True
    assert data["facts"]["horovod_built_torch"] == data["facts"]["torch_version"]


def test_doctor_table_renders(in_cli) -> None:
    proc = in_cli("doctor")
    assert proc.returncode == 0
    assert "This machine can run hvdtrain." in proc.stdout
    assert "[loopback: not for cross-host traffic]" in proc.stdout


def test_doctor_without_horovod_exits_1_with_fix(tmp_path) -> None:
    # A real interpreter where `import horovod` fails: shadow it with a broken package on sys.path.
    (tmp_path / "horovod").mkdir()
    (tmp_path / "horovod" / "__init__.py").write_text("raise ImportError('simulated missing build')\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); sys.argv = ['hvdtrain', 'doctor', '--json'];"
            "from hvdtrain.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    horovod = next(c for c in data["checks"] if c["name"] == "horovod")
    assert horovod["level"] == "error"
    assert horovod["detail"] == "not importable: ImportError: simulated missing build"
