"""Components checked before launch (issue 26): the probe pushes one batch through the model
(hvdtrain/worker/probe.py, here in process), and every helper the launcher runs before a launch
is killed with whatever it started (hvdtrain/launcher/helpers.py)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import ROOT

from hvdtrain.errors import UserError
from hvdtrain.launcher.helpers import run_helper
from hvdtrain.recipe_files import load_recipe

MINE = '''
import torch
from torch import nn

class Five(nn.Module):  # 5 logits, whatever the data set has
    def __init__(self): super().__init__(); self.fc = nn.Linear(256, 5)
    def forward(self, x): return self.fc(x.flatten(1))

class Flat(Five):
    def forward(self, x): return self.fc(x.flatten(1))[:, 0]

class Broken(Five):
    def forward(self, x): return self.fc(x)

def five(input_shape, num_classes): return Five()
def flat(input_shape, num_classes): return Flat()
def nothing(input_shape, num_classes): return nn.Flatten()
def broken(input_shape, num_classes): return Broken()

class Labels(torch.utils.data.Dataset):
    def __len__(self): return 4
    def __getitem__(self, i): return torch.zeros(1, 16, 16), 7

def bad_labels(): return Labels(), Labels(), 2
'''


@pytest.fixture
def mine(tmp_path: Path, monkeypatch) -> Path:
    (tmp_path / "mine.py").write_text(MINE)
    monkeypatch.chdir(tmp_path)  # mine.py: the start directory; examples/: on PYTHONPATH
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("mine", None)


@pytest.mark.parametrize(("overrides", "expected"), [
    (["model.component=mine:five", "model.kwargs={}"],
     "model.component 'mine:five' returned (2, 5) for a batch of (2, 1, 16, 16): it must return "
     "logits of shape (batch, num_classes) = (2, 2)"),
    (["model.component=mine:flat", "model.kwargs={}"],
     "model.component 'mine:flat' returned (2,) for a batch of (2, 1, 16, 16): it must return "
     "logits of shape (batch, num_classes) = (2, 2)"),
    (["model.component=mine:nothing", "model.kwargs={}"],
     "model.component 'mine:nothing' has no trainable parameters: there is nothing to train (does "
     "it register its layers as attributes of the nn.Module?)"),
    (["model.component=mine:broken", "model.kwargs={}"],
     "model.component 'mine:broken' failed on a batch of (2, 1, 16, 16): RuntimeError: mat1 and "
     "mat2 shapes cannot be multiplied (32x16 and 256x5)"),
    # (moved from test_bad_input.py's table, which keeps one probe case end to end)
    (["model.component=examples.custom_model:Stripes", "model.kwargs={}"],
     "model.component 'examples.custom_model:Stripes' raised TypeError: Stripes.__init__() got "
     "an unexpected keyword argument 'input_shape'"),
    (["data.component=examples.custom_model:build",
      "data.kwargs={input_shape: [1, 2, 2], num_classes: 2}"],
     "data.component 'examples.custom_model:build' returned TinyMLPConv: it must return "
     "(train_dataset, val_dataset, num_classes)"),
    (["data.component=mine:bad_labels", "data.kwargs={}"],
     "data.component 'mine:bad_labels': labels [7, 7] of its first samples are not class indices "
     "0..1 (num_classes=2)"),
])
def test_the_probe_refuses_a_model_that_cannot_train(mine, overrides, expected) -> None:
    from hvdtrain.worker.probe import probe

    with pytest.raises(UserError) as info:
        probe(load_recipe("custom-model", overrides).recipe)
    assert str(info.value) == expected


def test_a_helper_is_stopped_with_its_children_and_what_it_printed_is_kept() -> None:
    """A helper that printed, then hung, with a child holding its output pipe: killed at the
    timeout, its output kept, the child gone too."""
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "print('host-a:1', child.pid, flush=True)\n"
              "time.sleep(60)\n")
    started = time.monotonic()
    ran = run_helper([sys.executable, "-c", script], timeout=1)
    assert ran.code is None and ran.stdout.startswith("host-a:1 ")
    assert time.monotonic() - started < 10
    child = int(ran.stdout.split()[1])
    assert gone(child)


def test_a_helper_that_exits_is_not_held_by_a_child_keeping_the_pipe() -> None:
    script = ("import subprocess, sys\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "print(child.pid, flush=True)\n")
    started = time.monotonic()
    ran = run_helper([sys.executable, "-c", script], timeout=30)
    assert ran.code == 0 and time.monotonic() - started < 10
    child = int(ran.stdout)
    assert gone(child)


def test_a_component_that_hangs_at_import_is_stopped_at_check_timeout(tmp_path: Path,
                                                                      in_cli) -> None:
    (tmp_path / "slow.py").write_text("import time\ntime.sleep(120)\n")
    proc = in_cli("plan", "digits-cnn", "model.component=slow:build", "launch.check_timeout=1",
                  cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "error: checking slow:build took longer than launch.check_timeout=1 s (does it hang at "
        "import, or wait for something?): stopped it and every process it started; nothing "
        "launched. Its last line: ")
    probes = [p for p in psutil.process_iter(["cmdline", "cwd"])
              if "hvdtrain.worker.probe" in " ".join(p.info["cmdline"] or [])
              and p.info["cwd"] == str(tmp_path)]
    assert probes == []


def test_a_recipe_cannot_run_the_standard_library_or_installed_packages(tmp_path: Path,
                                                                         in_cli) -> None:
    """Issue 26 item 7: a recipe with no Python file of its own ran a shell command during
    `plan`. Components come from the user's project only; every command refuses it before any
    of its code runs."""
    import subprocess

    mark = tmp_path / "ran"
    recipe = tmp_path / "shared.yaml"
    recipe.write_text(load_recipe("digits-cnn", [
        "data.dataset=component", "data.component=subprocess:run",
        f"data.kwargs={{args: 'touch {mark}', shell: true}}"]).recipe.to_yaml())
    expected = (f"data.component 'subprocess:run': module subprocess is not part of your project "
                f"({ROOT} or PYTHONPATH): it is installed ({subprocess.__file__}). A recipe's "
                "components run only your own code; to use an installed package, name it when "
                "you run hvdtrain: HVDTRAIN_COMPONENT_PACKAGES=subprocess")
    for args in (["plan", str(recipe)], ["run", str(recipe), "--run-dir", str(tmp_path / "r")],
                 ["sbatch", str(recipe), "--dry-run"]):
        proc = in_cli(*args)
        assert (proc.returncode, proc.stderr) == (2, f"error: {expected}\n"), args
    checked = in_cli("validate", str(recipe))
    assert checked.returncode == 2 and f"       {expected}" in checked.stderr
    assert not mark.exists() and not (tmp_path / "r").exists()
    ok = in_cli("validate", "custom-model")
    assert ok.stdout == (f"OK     custom-model\n       runs code: data.component from "
                         f"{ROOT}/examples/custom_model.py\n       runs code: model.component from "
                         f"{ROOT}/examples/custom_model.py\n")
    planned = json.loads(in_cli("plan", "custom-model", "--json").stdout)
    assert planned["components"] == [
        {"key": key, "spec": f"examples.custom_model:{name}",
         "file": f"{ROOT}/examples/custom_model.py"}
        for key, name in (("data.component", "stripes"), ("model.component", "build"))]


def gone(pid: int) -> bool:
    """The process ended (killed with its helper's group), within a few seconds."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False
