"""The installer's pure parts: cache key and build environment."""

from __future__ import annotations

import subprocess
import sys

from hvdtrain.setup.horovod_build import (
    PATCH,
    BuildConfig,
    detect_config,
    horovod_built_torch,
)

CFG = BuildConfig(horovod="0.28.1", torch="2.13.0+cpu", python="cp311", machine="x86_64",
                  mpi=False, nccl=False, patch_sha="abc123")


def test_cache_key_names_everything_that_changes_the_binary() -> None:
    assert CFG.key == "horovod-0.28.1_torch-2.13.0+cpu_cp311_x86_64_pytorch+gloo_patch-abc123"
    other = BuildConfig(**{**CFG.__dict__, "mpi": True, "nccl": True, "torch": "2.14.1"})
    assert other.key == "horovod-0.28.1_torch-2.14.1_cp311_x86_64_pytorch+gloo+mpi+nccl_patch-abc123"


def test_build_env_selects_frameworks_and_controllers_explicitly() -> None:
    env = CFG.build_env({"PATH": "/bin", "HOROVOD_WITH_MPI": "1", "HOROVOD_GPU_OPERATIONS": "NCCL"})
    assert env["HOROVOD_WITH_PYTORCH"] == "1"
    assert env["HOROVOD_WITH_GLOO"] == "1"
    assert env["HOROVOD_WITHOUT_MPI"] == "1"
    assert "HOROVOD_WITH_MPI" not in env  # an inherited setting must not contradict the config
    assert "HOROVOD_GPU_OPERATIONS" not in env
    assert env["HOROVOD_WITHOUT_TENSORFLOW"] == env["HOROVOD_WITHOUT_MXNET"] == "1"
    assert env["CMAKE_POLICY_VERSION_MINIMUM"] == "3.5"
    mpi = BuildConfig(**{**CFG.__dict__, "mpi": True, "nccl": True}).build_env({})
    assert (mpi["HOROVOD_WITH_MPI"], mpi["HOROVOD_GPU_OPERATIONS"]) == ("1", "NCCL")
    assert "HOROVOD_WITHOUT_MPI" not in mpi


def test_patch_sets_cxx17_and_fixes_the_gloo_interface() -> None:
    text = PATCH.read_text()
    assert text.count("+set(CMAKE_CXX_STANDARD 17)") == 1
    assert text.count("+    set(CMAKE_CXX_STANDARD 17)") == 1
    assert "+++ b/CMakeLists.txt" in text and "+++ b/horovod/torch/CMakeLists.txt" in text
    assert "+  gloo_iface_ = global_context.gloo_iface_;" in text


def test_installed_horovod_matches_this_environment() -> None:
    cfg = detect_config()
    assert horovod_built_torch() == cfg.torch


def test_rerun_is_a_no_op_when_installed() -> None:
    proc = subprocess.run([sys.executable, "-m", "hvdtrain.setup.horovod_build"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "already installed, built against torch" in proc.stdout


def test_horovodrun_keeps_the_built_with_answers_beside_the_library(tmp_path) -> None:
    """Patch item 8: "built with Gloo?" is a fact of the library file, so horovodrun asks it once
    (a child importing torch: 1.3 s of every launch), keyed by the file's identity."""
    import json
    import os

    from horovod.common import util

    path, key = util._built_check_key("torch", "built with Gloo")
    lib = path.replace(".extension_checks.json", "") + "mpi_lib_v2" + util.get_ext_suffix()
    st = os.stat(lib)
    assert key.startswith(f"{lib}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|built with Gloo|")
    assert util._built_check_key("torch", "running with GPU") is None  # a run-time question
    assert util._built_check_key("tensorflow", "built with Gloo") is None  # not built here
    mine = (str(tmp_path / "checks.json"), key)
    assert util._read_built_check(mine) is None
    util._write_built_check(mine, True)
    assert util._read_built_check(mine) == (True,)
    assert util._read_built_check((mine[0], key.replace("|built with Gloo|", "|built with MPI|"))) \
        is None  # another question, or a rebuilt library (another key), is asked again
    (tmp_path / "checks.json").write_text("{not json")
    assert util._read_built_check(mine) is None
    assert util.gloo_built() is True  # the real answer, asked or kept
    assert json.loads(open(path).read())[key] is True
