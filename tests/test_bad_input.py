"""Bad recipes, overrides, hostfiles and flags at the `hvdtrain run` edge: exact message, exit 2,
no run directory, no process started, nothing executed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import _job_processes

MARK = "/tmp/hvdtrain-pwned-marker"
RECIPE = "error: recipe {root}/recipes/digits-cnn.yaml is invalid (1 problem):\n  "
# One rule, one message: the recipe, the plan and each worker judge it with hvdtrain.rules.
FP16 = ("train.precision=fp16 needs CUDA (fp16 autocast on CPUs is slow and unsupported for many "
        "ops), but ")
# Nine levels of nested aliases: gigabytes if expanded, refused while parsing.
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))

CASES = [
    # (id, extra args, files {name: text}, exact stderr with {d} = tmp dir)
    ("unknown-recipe", ["no-such-recipe"], {},
     "error: no recipe named 'no-such-recipe'; shipped recipes: cifar10-resnet, custom-model, "
     "digits-cnn, imagefolder-resnet, mnist-cnn, synthetic-bench (see `hvdtrain recipes`), or pass "
     "a path to a YAML file\n"),
    ("typo-key", ["{d}/r.yaml"], {"r.yaml": "optimizer:\n  base_lrr: 0.1\n"},
     "error: recipe {d}/r.yaml is invalid (1 problem):\n"
     "  {d}/r.yaml:2: optimizer.base_lrr: unknown key (did you mean 'base_lr'?)\n"),
    ("bad-type-override", ["digits-cnn", "train.epochs=many"], {},
     "error: recipe {root}/recipes/digits-cnn.yaml is invalid (1 problem):\n"
     "  override 'train.epochs=many': train.epochs: Input should be a valid integer, unable to "
     "parse string as an integer, got 'many'\n"),
    ("bad-override-syntax", ["digits-cnn", "epochs"], {},
     "error: invalid override:\n  override 'epochs' is not KEY=VALUE with a dotted key, e.g. "
     "optimizer.base_lr=0.1 or train.epochs=3\n"),
    ("fp8", ["digits-cnn", "horovod.compression=fp8"], {},
     "error: recipe {root}/recipes/digits-cnn.yaml is invalid (1 problem):\n"
     "  override 'horovod.compression=fp8': horovod.compression: Input should be 'fp16', 'none' or "
     "'powersgd', got 'fp8'\n"),
    ("env-name-injection", ["digits-cnn", "launch.env={'X;touch " + MARK + "': 1}"], {},
     "error: recipe {root}/recipes/digits-cnn.yaml is invalid (1 problem):\n"
     "  override \"launch.env={'X;touch " + MARK + "': 1}\": launch.env: 'X;touch " + MARK +
     "' is not a valid environment variable name (letters, digits and _, not starting with a "
     "digit)\n"),
    ("iface-injection", ["digits-cnn", "launch.network_interfaces=['$(touch " + MARK + ")']"], {},
     "error: recipe {root}/recipes/digits-cnn.yaml is invalid (1 problem):\n"
     "  override \"launch.network_interfaces=['$(touch " + MARK + ")']\": "
     "launch.network_interfaces: '$(touch " + MARK + ")' is not a network interface name "
     "(e.g. eth0, ens5)\n"),
    ("hosts-injection", ["digits-cnn", "--hosts", "a;touch " + MARK + ":2"], {},
     "error: invalid host list --hosts (1 problem):\n  --hosts entry 1: invalid hostname "
     "'a;touch': use letters, digits, '-' and '.' (an RFC 1123 hostname or an IPv4 address)\n"),
    ("hostfile-injection", ["digits-cnn", "--hostfile", "{d}/hf"], {"hf": "`touch " + MARK + "` slots=1\n"},
     "error: invalid host list {d}/hf (1 problem):\n  {d}/hf:1: invalid hostname '`touch': use "
     "letters, digits, '-' and '.' (an RFC 1123 hostname or an IPv4 address)\n"),
    ("hostfile-is-dev-zero", ["digits-cnn", "--hostfile", "/dev/zero"], {},  # never ends
     "error: hostfile /dev/zero is not a regular file (a directory, device, FIFO or socket): give "
     "the path of a text file\n"),
    ("int-too-long-in-override", ["digits-cnn", "train.epochs=" + "9" * 5000], {},
     "error: invalid override:\n  override 'train.epochs=999999999999999999999999999... (5013 "
     "characters)': a number of 5000 digits is longer than any setting takes (at most 40)\n"),
    ("int-too-long-in-file", ["{d}/r.yaml"], {"r.yaml": "train:\n  epochs: " + "9" * 5000 + "\n"},
     "error: {d}/r.yaml:2: a number of 5000 digits is longer than any setting takes (at most "
     "40)\n"),
    ("hostfile-missing", ["digits-cnn", "--hostfile", "{d}/nope"], {},
     "error: hostfile not found: {d}/nope\n"),
    ("hostfile-zero-slots", ["digits-cnn", "--hostfile", "{d}/hf"], {"hf": "node1 slots=0\n"},
     "error: invalid host list {d}/hf (1 problem):\n  {d}/hf:1: slots must be at least 1, got 0\n"),
    ("hostfile-duplicate", ["digits-cnn", "--hostfile", "{d}/hf"], {"hf": "a:1\na:1\n"},
     "error: invalid host list {d}/hf (1 problem):\n  {d}/hf:2: duplicate host 'a' (first listed "
     "{d}/hf:1): list each host once with its total slots\n"),
    ("np-too-big", ["digits-cnn", "--np", "5", "--hosts", "localhost:2"], {},
     "error: np=5 needs more slots than --hosts has (2): lower --np or add slots/hosts\n"),
    ("np-zero", ["digits-cnn", "--np", "0"], {}, "error: --np must be at least 1, got 0\n"),
    ("both-host-sources", ["digits-cnn", "--hosts", "a:1", "--hostfile", "{d}/hf"],
     {"hf": "a slots=1\n"}, "error: give either --hosts or --hostfile, not both\n"),
    ("batch-too-big", ["digits-cnn", "data.batch_size=5000"], {},
     "error: data.batch_size=5000 is larger than each worker's share of the 1437 training samples "
     "(718 with np=2): lower data.batch_size or the number of processes\n"),
    ("elastic-one-host", ["digits-cnn", "elastic={min_np: 1}"], {},
     "error: elastic training needs at least 2 hosts (Horovod: \"Cannot run in fault tolerance "
     "mode with fewer than 2 hosts\"): list two or more hosts, set elastic.host_discovery_script, "
     "or remove the elastic section\n"),
    ("yaml-python-tag", ["{d}/r.yaml"], {"r.yaml": "train: !!python/object/apply:os.system ['touch "
                                                   + MARK + "']\n"},
     None),  # message checked by prefix below: PyYAML's wording
    ("resume-not-a-run-dir", ["digits-cnn", "--resume", "{d}"], {},
     "error: cannot resume {d}: no manifest.json there, so it is not a run hvdtrain started (a "
     "run writes one when it launches); nothing in it was changed\n"),
    # YAML that would be slow, big or silently lossy
    ("alias-bomb", ["{d}/r.yaml"], {"r.yaml": BOMB},
     "error: {d}/r.yaml:1: YAML anchors and aliases (&name, *name) are not allowed in recipes: "
     "write the values out\n"),
    ("alias-in-override", ["digits-cnn", "launch.env=&a {X: '1'}"], {},
     "error: invalid override:\n  override \"launch.env=&a {X: '1'}\": YAML anchors and aliases "
     "(&name, *name) are not allowed in recipes: write the values out\n"),
    ("duplicate-key", ["{d}/r.yaml"], {"r.yaml": "data:\n  batch_size: 32\n  batch_size: 64\n"},
     "error: recipe {d}/r.yaml has duplicate keys:\n  {d}/r.yaml:3: data.batch_size: duplicate key "
     "(first at line 2); YAML would keep only the last one: remove one of them\n"),
    ("empty-recipe", ["{d}/r.yaml"], {"r.yaml": "# nothing\n"},
     "error: recipe {d}/r.yaml is empty: start from a shipped one, e.g. `hvdtrain show digits-cnn "
     "> my-recipe.yaml`\n"),
    ("recipe-is-a-directory", ["{d}"], {},
     "error: recipe {d} is a directory: give the path of a YAML file\n"),
    ("recipe-is-dev-null", ["/dev/null"], {},
     "error: recipe /dev/null is not a regular file (a device, FIFO or socket): give the path of a "
     "YAML file\n"),
    # values that used to pass validation and fail after launch
    ("lr-inf", ["digits-cnn", "optimizer.base_lr=inf"], {},
     RECIPE + "override 'optimizer.base_lr=inf': optimizer.base_lr: Input should be a finite "
     "number, got 'inf'\n"),
    ("warmup-1e308", ["digits-cnn", "optimizer.warmup_epochs=1e308"], {},
     RECIPE + "override 'optimizer.warmup_epochs=1e308': optimizer.warmup_epochs: Input should be "
     "less than or equal to 1000000, got '1e308'\n"),
    ("seed-overflow", ["digits-cnn", "train.seed=99999999999999999999999"], {},
     RECIPE + "override 'train.seed=99999999999999999999999': train.seed: Input should be less "
     "than or equal to 4611686018427387904, got 99999999999999999999999\n"),
    ("bool-as-batch-size", ["digits-cnn", "data.batch_size=true"], {},
     RECIPE + "override 'data.batch_size=true': data.batch_size: Input should be a number, not a "
     "boolean, got True\n"),
    ("bool-as-port", ["digits-cnn", "launch.ssh_port=true"], {},
     RECIPE + "override 'launch.ssh_port=true': launch.ssh_port: Input should be a number, not a "
     "boolean, got True\n"),
    ("fused-not-a-bool", ["digits-cnn", "optimizer.fused=maybe"], {},
     RECIPE + "override 'optimizer.fused=maybe': optimizer.fused: Input should be a valid "
     "boolean, unable to interpret input, got 'maybe'\n"),
    ("step-decay-without-milestones", ["digits-cnn", "optimizer.decay=step"], {},
     RECIPE + "override 'optimizer.decay=step': optimizer: decay: step needs decay_epochs (the "
     "epochs at which the LR is multiplied by decay_factor), e.g. decay_epochs: [30, 60]\n"),
    ("milestones-with-cosine", ["digits-cnn", "optimizer.decay_epochs=[5]"], {},
     RECIPE + "override 'optimizer.decay_epochs=[5]': optimizer: decay_epochs applies only to "
     "decay: step (decay is 'cosine'): remove decay_epochs or set decay: step\n"),
    ("loader-workers-for-data-in-memory", ["digits-cnn", "data.loader_workers=2"], {},
     RECIPE + "override 'data.loader_workers=2': data: loader_workers applies to imagefolder and "
     "component data sets: 'digits' is held in memory and loads nothing per step; set "
     "loader_workers: 0\n"),
    ("watchdog-too-short", ["digits-cnn", "train.watchdog_seconds=1"], {},
     RECIPE + "override 'train.watchdog_seconds=1': train.watchdog_seconds: must be 0 (off) or at "
     "least 10 s: the ranks need time to start and to send heartbeats (every 2 s) before the "
     "watchdog can judge them, got 1\n"),
    ("error-in-a-section-check-names-the-override",
     ["digits-cnn", "horovod.stall_check_warning_seconds=500"], {},
     RECIPE + "override 'horovod.stall_check_warning_seconds=500': horovod: "
     "stall_check_shutdown_seconds must be greater than stall_check_warning_seconds (or 0 to never "
     "shut down)\n"),
    ("unicode-key", ["digits-cnn", "données.taille=1"], {},
     RECIPE + "override 'données.taille=1': données: unknown key; valid keys: description, data, "
     "model, optimizer, train, horovod, launch, elastic, tracking\n"),
    # hosts
    ("empty-hosts", ["digits-cnn", "--hosts", ""], {},
     "error: --hosts is empty: give host:slots,..., or leave it out to run on this machine\n"),
    ("empty-hostfile", ["digits-cnn", "--hostfile", ""], {},
     "error: --hostfile is empty: give a path, or leave it out to run on this machine\n"),
    ("empty-launch-hosts", ["digits-cnn", "launch.hosts=''"], {},
     RECIPE + "override \"launch.hosts=''\": launch.hosts: is empty: give host:slots,... (hosts) "
     "or a path (hostfile), or null for this machine, got ''\n"),
    ("host-with-two-colons", ["digits-cnn", "--hosts", "node1:22:2"], {},
     "error: invalid host list --hosts (1 problem):\n  --hosts entry 1: 'node1:22:2' has more than "
     "one ':': write host:slots (an ssh port goes in launch.ssh_port)\n"),
    ("host-name-too-long", ["digits-cnn", "--hosts", "a" * 300 + ":1"], {},
     "error: invalid host list --hosts (1 problem):\n  --hosts entry 1: host name 'aaaaaaaaaaaaaaa"
     "aaaaaaaaaaaaaaaaaaaaaaaaa'... is 300 characters long: a host name has at most 253 characters, "
     "and at most 63 between dots\n"),
    # elastic discovery scripts: a file, run as one word, checked before launch
    ("discovery-script-is-a-command",
     ["digits-cnn", "elastic={min_np: 1, host_discovery_script: '/usr/bin/touch " + MARK + "'}"], {},
     "error: elastic.host_discovery_script '/usr/bin/touch " + MARK + "' is not a file: give the "
     "path of an executable script that prints one 'host:slots' per line (a command with "
     "arguments is not allowed: put it in a script)\n"),
    ("discovery-script-not-executable",
     ["digits-cnn", "elastic={min_np: 1, host_discovery_script: '{d}/disc.txt'}"],
     {"disc.txt": "#!/bin/sh\necho a:1\n"},
     "error: elastic.host_discovery_script {d}/disc.txt is not executable: chmod +x {d}/disc.txt\n"),
    ("discovery-prints-one-host",
     ["digits-cnn", "elastic={min_np: 1, host_discovery_script: '{d}/disc.sh'}"],
     {"disc.sh": "#!/bin/sh\necho localhost:2\n"},
     "error: elastic.host_discovery_script {d}/disc.sh: it printed 1 host(s) with 2 slot(s); "
     "Horovod's elastic mode needs at least 2 hosts (\"Cannot run in fault tolerance mode with "
     "fewer than 2 hosts\") and would wait for them until elastic.elastic_timeout; nothing "
     "launched\n"),
    ("discovery-prints-nothing",
     ["digits-cnn", "elastic={min_np: 1, host_discovery_script: '{d}/disc.sh'}"],
     {"disc.sh": "#!/bin/sh\nexit 0\n"},
     "error: elastic.host_discovery_script {d}/disc.sh: it printed 0 host(s) with 0 slot(s); "
     "Horovod's elastic mode needs at least 2 hosts (\"Cannot run in fault tolerance mode with "
     "fewer than 2 hosts\") and would wait for them until elastic.elastic_timeout; nothing "
     "launched\n"),
    ("discovery-prints-then-hangs",
     ["digits-cnn", "launch.check_timeout=1",
      "elastic={min_np: 1, host_discovery_script: '{d}/disc.sh'}"],
     {"disc.sh": "#!/bin/sh\necho 127.0.0.2:1\necho 127.0.0.3:1\nsleep 60\n"},
     "error: elastic.host_discovery_script {d}/disc.sh printed '127.0.0.2:1; 127.0.0.3:1' and then "
     "did not finish within 1 s (launch.check_timeout); horovodrun runs it again every few "
     "seconds and would hang with it: make it print its hosts and exit; nothing launched\n"),
    ("discovery-prints-what-horovodrun-cannot-parse",
     ["digits-cnn", "elastic={min_np: 1, host_discovery_script: '{d}/disc.sh'}"],
     {"disc.sh": "#!/bin/sh\necho 127.0.0.2:1\necho '127.0.0.3 slots=1'\n"},
     "error: elastic.host_discovery_script {d}/disc.sh printed line 2 '127.0.0.3 slots=1': invalid "
     "hostname '127.0.0.3 slots=1': use letters, digits, '-' and '.' (an RFC 1123 hostname or an "
     "IPv4 address); horovodrun reads one HOST or HOST:SLOTS per line and would fail on it; "
     "nothing launched\n"),
    # image folders, components, devices
    ("image-folder-without-val", ["imagefolder-resnet", "data.data_dir={d}"], {"train/a/x.png": ""},
     "error: image folder {d} is not usable (1 problem):\n  {d}/val: missing: the layout is "
     "DATA_DIR/train/<class>/<image> and DATA_DIR/val/<class>/<image>\n"),
    ("image-folder-val-class-not-in-train", ["imagefolder-resnet", "data.data_dir={d}"],
     {"train/a/x.png": "", "val/a/y.png": "", "val/b/z.png": "", "train/c/notes.txt": ""},
     "error: image folder {d} is not usable (2 problems):\n  {d}/train/c: no images (.jpg, .jpeg, "
     ".png, .bmp, .webp): add some or remove the folder\n  {d}/val/b: class 'b' is not in "
     "{d}/train: every validation class needs training images\n"),
    ("component-without-colon", ["digits-cnn", "model.component=mymodels.build"], {},
     RECIPE + "override 'model.component=mymodels.build': model.component: 'mymodels.build' is "
     "not \"package.module:factory\" (a module path, one ':', then the function or class to "
     "call), e.g. model.component: \"examples.custom_model:build\", got 'mymodels.build'\n"),
    ("component-module-not-found", ["digits-cnn", "model.component=no_such_pkg.models:build"], {},
     "error: model.component 'no_such_pkg.models:build': module no_such_pkg.models not found from "
     "{root} or PYTHONPATH: run hvdtrain from the directory that holds it (workers start in the "
     "same directory), or add its folder to PYTHONPATH\n"),
    ("component-factory-raises", ["digits-cnn", "model.component=examples.custom_model:stripes",
                                  "model.kwargs={train: -1}"], {},
     "error: model.component 'examples.custom_model:stripes' raised TypeError: stripes() got an "
     "unexpected keyword argument 'input_shape'\n"),
    # (more component mistakes, checked by the same probe in process: test_component_checks.py)
    ("cuda-without-a-gpu", ["digits-cnn", "train.device=cuda"], {},
     "error: train.device=cuda, but this machine has no usable NVIDIA GPU: use train.device=auto "
     "(CUDA where there is one, else CPU) or cpu\n"),
    ("fp16-on-cpu", ["digits-cnn", "train.device=cpu", "train.precision=fp16"], {},
     RECIPE + "override 'train.device=cpu': train: " + FP16 + "train.device is cpu: use "
     "train.precision=bf16 or fp32 on CPUs\n"),
    ("fp16-on-a-machine-without-gpu", ["digits-cnn", "train.precision=fp16"], {},
     "error: " + FP16 + "this machine has no usable NVIDIA GPU: use train.precision=bf16 or fp32 "
     "on CPUs\n"),
    # run directories that cannot be one
    ("run-dir-is-a-file", ["digits-cnn", "--run-dir", "{d}/f"], {"f": "x"},
     "error: run directory {d}/f is a file: choose another --run-dir (or launch.output_dir)\n"),
    ("run-dir-under-a-file", ["digits-cnn", "--run-dir", "{d}/f/run"], {"f": "x"},
     "error: cannot create run directory {d}/f/run: Not a directory: choose another --run-dir (or "
     "launch.output_dir)\n"),
    ("run-dir-under-proc", ["digits-cnn", "--run-dir", "/proc/hvdtrain-x"], {},
     "error: cannot create run directory /proc/hvdtrain-x: No such file or directory: choose "
     "another --run-dir (or launch.output_dir)\n"),
]


@pytest.mark.parametrize(("args", "files", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_anything_runs(in_cli, tmp_path: Path, args, files,
                                                   expected) -> None:
    from conftest import ROOT

    Path(MARK).unlink(missing_ok=True)
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".png"):
            from PIL import Image

            Image.new("RGB", (8, 8)).save(tmp_path / name)
            continue
        (tmp_path / name).write_text(text)
        if name.endswith(".sh"):
            (tmp_path / name).chmod(0o755)
    run_dir = tmp_path / "run"
    argv = [a.replace("{d}", str(tmp_path)) for a in args]
    if "--run-dir" not in argv:
        argv += ["--run-dir", str(run_dir)]
    proc = in_cli("run", *argv)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    if expected is None:
        assert proc.stderr.startswith(f"error: {tmp_path}/r.yaml:1: YAML syntax error: ")
    else:
        assert proc.stderr == expected.replace("{d}", str(tmp_path)).replace("{root}", str(ROOT))
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()  # nothing launched, nothing written
    assert not Path(MARK).exists()  # nothing executed
    assert _job_processes() == []  # no horovodrun, no worker


def test_an_output_dir_that_cannot_exist_is_refused(in_cli, tmp_path: Path) -> None:
    proc = in_cli("run", "digits-cnn", "launch.output_dir=/proc/hvdtrain-x")
    assert proc.returncode == 2
    assert re.fullmatch(r"error: cannot create run directory /proc/hvdtrain-x/digits-cnn-\d{8}-"
                        r"\d{6}: No such file or directory: choose another --run-dir \(or "
                        r"launch.output_dir\)\n", proc.stderr), proc.stderr


def test_ctrl_c_during_start_up_is_quiet() -> None:
    """SIGINT while the CLI is still importing typer: exit 130, no traceback."""
    import subprocess
    import sys

    code = ("import sys\n"
            "class Interrupt:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'typer': raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            "sys.argv = ['hvdtrain', '--version']\n"
            "from hvdtrain.__main__ import main\n"
            "main()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (130, "", "interrupted\n")



def test_a_data_set_too_big_for_memory_is_refused(in_cli, tmp_path: Path) -> None:
    import psutil

    run_dir = tmp_path / "run"
    proc = in_cli("run", "synthetic-bench", "data.synthetic.train_samples=100000000", "--np", "2",
                   "--run-dir", str(run_dir))
    per_worker = (100_000_000 + 1024) * (4 * 3 * 32 * 32 + 8) / (1 << 30)
    total = psutil.virtual_memory().total / (1 << 30)
    assert proc.returncode == 2
    assert proc.stderr == (f"error: the data set needs about {per_worker:,.1f} GiB in every worker "
                           f"({2 * per_worker:,.1f} GiB for the 2 worker(s) on localhost), more "
                           f"than this machine's {total:,.1f} GiB: lower "
                           "data.synthetic.train_samples / eval_samples or image_shape, or use "
                           "fewer workers per host\n")
    assert not run_dir.exists()


def test_a_controller_horovod_was_not_built_with_is_refused(in_cli, tmp_path: Path) -> None:
    from hvdtrain.machine import horovod_build_info

    info = horovod_build_info()
    assert info is not None, "make install records how Horovod was built"
    if info["controllers"]["mpi"]:
        pytest.skip("this Horovod was built with MPI")
    proc = in_cli("run", "digits-cnn", "launch.controller=mpi", "--run-dir", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert proc.stderr == ("error: launch.controller=mpi, but the installed Horovod was built "
                           "without MPI (controllers: gloo): use launch.controller=gloo, or rebuild "
                           "Horovod with mpicxx available (python -m hvdtrain.setup.horovod_build "
                           "--force)\n")
    assert not (tmp_path / "r").exists()


def test_hosts_check_options_need_check_and_sane_values(in_cli) -> None:
    cases = [
        (["--timeout", "5"], "error: --timeout only applies with --check: add --check, or leave it "
                             "out\n"),
        (["--ssh-port", "22", "--timeout", "5"], "error: --ssh-port, --timeout only apply with "
                                                 "--check: add --check, or leave them out\n"),
        (["--check", "--timeout", "nan"], "error: --timeout must be a number of seconds between 0 "
                                          "and 3600 (per host), got nan\n"),
        (["--check", "--timeout", "0"], "error: --timeout must be a number of seconds between 0 "
                                        "and 3600 (per host), got 0\n"),
        (["--check", "--ssh-port", "0"], "error: --ssh-port must be a TCP port between 1 and "
                                         "65535, got 0\n"),
    ]
    for args, expected in cases:
        proc = in_cli("hosts", "hostfiles/localhost", *args)
        assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", expected), args


def test_settings_without_effect_are_warned_about(in_cli) -> None:
    proc = in_cli("plan", "digits-cnn", "optimizer.warmup_epochs=30", "data.data_dir=/data",
                   "horovod.autotune_log_file=/tmp/at.csv", "--json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["warnings"] == [
        "optimizer.warmup_epochs (30) is longer than training (train.epochs=12): the LR never "
        "reaches its peak",
        "data.data_dir is set but data.dataset=digits reads no files: it is ignored",
        "horovod.autotune_log_file is set but horovod.autotune is false: nothing is logged"]


def test_validation_stays_fast_and_small_on_any_file(tmp_path: Path) -> None:
    """Nine nested alias levels, a 1 MiB file, 16,000 unknown keys: answered in under a second."""
    import subprocess
    import sys

    (tmp_path / "bomb.yaml").write_text(BOMB)
    (tmp_path / "big.yaml").write_text("# x\n" * (1 << 18) + "data: {}\n")
    (tmp_path / "keys.yaml").write_text("data:\n" + "".join(f"  k{i}: {i}\n" for i in range(16000)))
    code = ("import sys, time\nfrom hvdtrain.recipe_files import load_recipe\n"
            "t0 = time.process_time()\n"
            "for f in sys.argv[1:]:\n"
            "    try: load_recipe(f)\n"
            "    except Exception as e: print(type(e).__name__, e, *e.problems[-1:])\n"
            "print(next(int(x.split()[1]) for x in open('/proc/self/status')\n"
            "           if x.startswith('VmHWM:')))\n"
            "print(time.process_time() - t0)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "bomb.yaml"),
                          str(tmp_path / "big.yaml"), str(tmp_path / "keys.yaml")],
                         capture_output=True, text=True, timeout=60)
    lines = out.stdout.splitlines()
    assert float(lines[4]) < 1.0  # CPU seconds for all three files
    assert lines[0].startswith("UserError ") and "anchors and aliases" in lines[0]
    assert lines[1].startswith("UserError recipe ") and "larger than 256 KiB" in lines[1]
    assert "is invalid (16000 problems)" in lines[2] and lines[2].endswith(
        "... and 15950 more problems")
    assert int(lines[3]) < 200 * 1024  # peak RSS of this process image in KiB (VmHWM: unlike
    # ru_maxrss it does not inherit the high-water mark of pytest across fork + exec)
