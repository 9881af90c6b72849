"""Bad recipes, overrides, hostfiles and flags at the `hvdtrain run` edge: exact message, exit 2,
no run directory, no process started, nothing executed."""

from __future__ import annotations

from pathlib import Path

import pytest

MARK = "/tmp/hvdtrain-pwned-marker"

CASES = [
    # (id, extra args, files {name: text}, exact stderr with {d} = tmp dir)
    ("unknown-recipe", ["no-such-recipe"], {},
     "error: no recipe named 'no-such-recipe'; shipped recipes: cifar10-resnet, digits-cnn, "
     "mnist-cnn, synthetic-bench (see `hvdtrain recipes`), or pass a path to a YAML file\n"),
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
     "  override 'horovod.compression=fp8': horovod.compression: Input should be 'fp16' or 'none', "
     "got 'fp8'\n"),
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
     "error: cannot resume {d}: no recipe.yaml there (is it an hvdtrain run directory?)\n"),
]


@pytest.mark.parametrize(("args", "files", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_anything_runs(run_cli, tmp_path: Path, args, files,
                                                   expected) -> None:
    from conftest import ROOT

    Path(MARK).unlink(missing_ok=True)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    run_dir = tmp_path / "run"
    argv = [a.replace("{d}", str(tmp_path)) for a in args]
    proc = run_cli("run", *argv, "--run-dir", str(run_dir))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    if expected is None:
        assert proc.stderr.startswith(f"error: {tmp_path}/r.yaml:1: YAML syntax error: ")
    else:
        assert proc.stderr == expected.replace("{d}", str(tmp_path)).replace("{root}", str(ROOT))
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()  # nothing launched, nothing written
    assert not Path(MARK).exists()  # nothing executed

