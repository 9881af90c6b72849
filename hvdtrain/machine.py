"""Facts about a machine that both the launcher and the set-up side read: which interfaces reach
other hosts, and which package versions are installed. Standard library only (no torch)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import ipaddress
import json
import re
from pathlib import Path

# Interfaces Gloo must not pick for cross-host traffic: traffic on them never leaves the box.
_VIRTUAL_PATTERNS = [
    (re.compile(r"^lo\d*$"), "loopback"),
    (re.compile(r"^(docker\d*|br-[0-9a-f]+|veth\w*)$"), "docker"),
    (re.compile(r"^(virbr\d*|br\d*|cni\d*|flannel[.\w]*|cali\w+|lxcbr\d*|lxdbr\d*)$"), "bridge"),
]


def classify_interface(name: str, addresses: list[str]) -> str:
    """physical | loopback | docker | bridge: only physical interfaces reach other hosts."""
    for pattern, kind in _VIRTUAL_PATTERNS:
        if pattern.match(name):
            return kind
    if addresses and all(_is_loopback(a) for a in addresses):
        return "loopback"
    return "physical"


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr.split("%")[0]).is_loopback
    except ValueError:
        return False


def installed_version(dist: str) -> str | None:
    """The installed version of distribution ``dist`` (read from its metadata, not imported)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


BUILD_INFO = "hvdtrain-build.json"  # written into the horovod package by the installer


def horovod_dir() -> Path | None:
    """The installed horovod package directory, found without importing it (or torch)."""
    spec = importlib.util.find_spec("horovod")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def horovod_build_info() -> dict | None:
    """How the installed Horovod was built ({"controllers": {"gloo": .., "mpi": ..}, ...}), as
    recorded at install time by ``python -m hvdtrain.setup.horovod_build``; None if unknown."""
    folder = horovod_dir()
    try:
        return json.loads((folder / BUILD_INFO).read_text()) if folder else None
    except (OSError, ValueError):
        return None
