"""Recipes: every shipped one validates; bad ones report every problem with file, key and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from hvdtrain.errors import UserError
from hvdtrain.recipe import Recipe
from hvdtrain.recipe_files import load_recipe, shipped_recipes


def test_six_recipes_ship_and_every_one_validates() -> None:
    names = sorted(p.stem for p in shipped_recipes())
    assert names == ["cifar10-resnet", "custom-model", "digits-cnn", "imagefolder-resnet",
                     "mnist-cnn", "synthetic-bench"]
    for path in shipped_recipes():
        loaded = load_recipe(str(path))
        assert loaded.recipe.description, path


def test_every_key_in_every_shipped_recipe_has_a_comment() -> None:
    for path in shipped_recipes():
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            stripped = line.strip()
            if stripped and not stripped.startswith("#") and ":" in stripped \
                    and not stripped.startswith("description:"):
                assert "#" in line, f"{path.name}:{number} has no comment: {line!r}"


def test_bare_name_and_path_resolve_to_the_same_recipe() -> None:
    by_name = load_recipe("digits-cnn")
    by_path = load_recipe(str(ROOT / "recipes" / "digits-cnn.yaml"))
    assert by_name.recipe == by_path.recipe
    assert by_name.name == "digits-cnn"
    assert by_name.recipe.horovod.compression == "fp16"


def test_overrides_are_typed_and_validated() -> None:
    loaded = load_recipe("digits-cnn", ["optimizer.base_lr=0.1", "train.epochs=3",
                                        "horovod.compression=none", "launch.network_interfaces=[eth0]",
                                        "launch.env={A: '1', OMP_NUM_THREADS: 4, FLAG: true}"])
    r = loaded.recipe
    assert (r.optimizer.base_lr, r.train.epochs, r.horovod.compression) == (0.1, 3, "none")
    assert r.launch.network_interfaces == ["eth0"]
    assert r.launch.env == {"A": "1", "OMP_NUM_THREADS": "4", "FLAG": "true"}


def test_defaults_fill_a_minimal_recipe(tmp_path: Path) -> None:
    p = tmp_path / "min.yaml"
    p.write_text("train:\n  epochs: 2\n")
    r = load_recipe(str(p)).recipe
    assert r.horovod.compression == "fp16"  # the default compression
    assert r.horovod.stall_check_shutdown_seconds == 120  # never "hang forever" by default
    assert r == Recipe(train={"epochs": 2})


def errors_of(tmp_path: Path, text: str, overrides: list[str] | None = None) -> tuple[str, list[str]]:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(UserError) as info:
        load_recipe(str(p), overrides or [])
    return str(info.value).replace(str(p), "r.yaml"), [e.replace(str(p), "r.yaml")
                                                       for e in info.value.problems]


def test_all_errors_at_once_with_lines_and_did_you_mean(tmp_path: Path) -> None:
    head, problems = errors_of(tmp_path, (
        "data:\n"
        "  batch_size: -3\n"
        "  datset: digits\n"
        "optimizer:\n"
        "  base_lrr: 0.1\n"
        "  decay: linear\n"
        "horovod:\n"
        "  compression: fp8\n"
        "trian:\n"
        "  epochs: 2\n"))
    assert head == "recipe r.yaml is invalid (6 problems):"
    assert problems == [
        "r.yaml:2: data.batch_size: Input should be greater than 0, got -3",
        "r.yaml:3: data.datset: unknown key (did you mean 'dataset'?)",
        "r.yaml:6: optimizer.decay: Input should be 'none', 'cosine' or 'step', got 'linear'",
        "r.yaml:5: optimizer.base_lrr: unknown key (did you mean 'base_lr'?)",
        "r.yaml:8: horovod.compression: Input should be 'fp16', 'none' or 'powersgd', got 'fp8'",
        "r.yaml:9: trian: unknown key (did you mean 'train'?)",
    ]


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path: Path) -> None:
    _, problems = errors_of(tmp_path, "train:\n  zzz: 1\n")
    assert problems == ["r.yaml:2: train.zzz: unknown key; valid keys: epochs, seed, eval_every, "
                        "checkpoint_every, keep_checkpoints, log_interval, max_steps_per_epoch, "
                        "on_nonfinite, watchdog_seconds, device, precision, tensorboard"]


def test_override_errors_name_the_override(tmp_path: Path) -> None:
    _, problems = errors_of(tmp_path, "train:\n  epochs: 2\n",
                            ["train.epochs=abc", "optimizer.momentum=2"])
    assert problems == [
        "override 'optimizer.momentum=2': optimizer.momentum: Input should be less than 1, got 2",
        "override 'train.epochs=abc': train.epochs: Input should be a valid integer, unable to "
        "parse string as an integer, got 'abc'",
    ]


def test_malformed_override_and_override_into_a_value(tmp_path: Path) -> None:
    head, problems = errors_of(tmp_path, "train:\n  epochs: 2\n", ["epochs", "train.epochs.x=1"])
    assert head == "invalid overrides:"
    assert problems == [
        "override 'epochs' is not KEY=VALUE with a dotted key, e.g. optimizer.base_lr=0.1 or "
        "train.epochs=3",
        "override 'train.epochs.x=1': train.epochs is not a section",
    ]


INJECTION = [
    ("launch:\n  env: {'A;B': x}\n",
     "r.yaml:2: launch.env: 'A;B' is not a valid environment variable name (letters, digits and _, "
     "not starting with a digit)"),
    ("launch:\n  network_interfaces: ['$(touch /tmp/pwned)']\n",
     "r.yaml:2: launch.network_interfaces: '$(touch /tmp/pwned)' is not a network interface name "
     "(e.g. eth0, ens5)"),
    ("launch:\n  ssh_identity_file: '$(touch /tmp/pwned)'\n",
     "r.yaml:1: launch: ssh_identity_file '$(touch /tmp/pwned)' has characters hvdtrain does not "
     "pass on (allowed: letters, digits, and _ . / ~ + @ % = , - space)"),
    ("horovod:\n  timeline_file: 'a;b'\n",
     "r.yaml:1: horovod: timeline_file 'a;b' has characters hvdtrain does not pass on (allowed: "
     "letters, digits, and _ . / ~ + @ % = , - space)"),
    ("launch:\n  hosts: a:1\n  hostfile: f\n",
     "r.yaml:1: launch: set either hosts or hostfile, not both"),
    ("data:\n  dataset: mnist\n",
     "r.yaml:1: data: dataset 'mnist' reads files: set data.data_dir to their directory"),
    ("horovod:\n  op: adasum\n  gradient_predivide_factor: 2\n",
     "r.yaml:1: horovod: gradient_predivide_factor applies only to op: average (Horovod rejects it "
     "with adasum): set it to 1.0 or use op: average"),
    ("horovod:\n  op: adasum\n",
     "r.yaml:2: horovod.op: adasum needs launch.controller: mpi (Horovod implements Adasum only "
     "over MPI; with Gloo every rank fails with 'No Adasum operation enabled'): use op: average, "
     "or controller: mpi with an MPI-enabled Horovod build"),
    ("horovod:\n  stall_check_warning_seconds: 60\n  stall_check_shutdown_seconds: 30\n",
     "r.yaml:1: horovod: stall_check_shutdown_seconds must be greater than "
     "stall_check_warning_seconds (or 0 to never shut down)"),
    ("elastic:\n  min_np: 4\n  max_np: 2\n",
     "r.yaml:1: elastic: max_np (2) is less than min_np (4)"),
    ("elastic:\n  max_np: 2\n", "r.yaml:1: elastic.min_np: required key is missing"),
    ("launch:\n  ssh_port: 70000\n",
     "r.yaml:2: launch.ssh_port: Input should be less than or equal to 65535, got 70000"),
]


@pytest.mark.parametrize(("text", "message"), INJECTION, ids=[i[1][:40] for i in INJECTION])
def test_bad_values_and_injection_strings_are_rejected(tmp_path: Path, text: str, message: str) -> None:
    _, problems = errors_of(tmp_path, text)
    assert problems == [message]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("train:\n  epochs: 2\n bad: [\n")
    with pytest.raises(UserError) as info:
        load_recipe(str(p))
    assert str(info.value).startswith(f"{p}:3: YAML syntax error: ")


def test_non_mapping_and_unknown_name(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(UserError, match=r"a recipe is a YAML mapping of sections .* got a list$"):
        load_recipe(str(p))
    with pytest.raises(UserError) as info:
        load_recipe("digits-cnm")
    assert str(info.value) == ("no recipe named 'digits-cnm' (did you mean 'digits-cnn'?); shipped "
                               "recipes: cifar10-resnet, custom-model, digits-cnn, imagefolder-resnet, "
                               "mnist-cnn, synthetic-bench (see `hvdtrain recipes`), or pass a path "
                               "to a YAML file")
    with pytest.raises(UserError, match=r"^recipe file not found: nope/x.yaml$"):
        load_recipe("nope/x.yaml")


def test_yaml_tags_are_not_executed(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    marker = tmp_path / "pwned"
    p.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(UserError, match="YAML syntax error"):
        load_recipe(str(p))
    assert not marker.exists()


def test_cli_validate_show_and_recipes(in_cli, tmp_path: Path) -> None:
    proc = in_cli("validate", "digits-cnn", "synthetic-bench", "--hostfile", "hostfiles/localhost")
    assert (proc.returncode, proc.stdout) == (0, "OK     digits-cnn\nOK     synthetic-bench\n"
                                                 "OK     hostfiles/localhost\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 0\n")
    proc = in_cli("validate", "digits-cnn", str(bad))
    assert proc.returncode == 2
    assert proc.stdout == "OK     digits-cnn\n"
    assert proc.stderr == (f"ERROR  {bad}\n       recipe {bad} is invalid (1 problem):\n"
                           f"       {bad}:2: train.epochs: Input should be greater than 0, got 0\n")
    shown = in_cli("show", "digits-cnn", "train.epochs=3")
    assert shown.returncode == 0
    assert shown.stdout.startswith("# resolved from ")
    resolved = yaml.safe_load(shown.stdout)
    assert resolved["train"]["epochs"] == 3
    assert Recipe.model_validate(resolved) == load_recipe("digits-cnn", ["train.epochs=3"]).recipe
    listing = json.loads(in_cli("recipes", "--json").stdout)
    assert [r["name"] for r in listing] == ["cifar10-resnet", "custom-model", "digits-cnn",
                                            "imagefolder-resnet", "mnist-cnn", "synthetic-bench"]
    assert all(r["description"] and not r["description"].startswith("INVALID") for r in listing)
    proc = in_cli("show", str(bad))
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (f"error: recipe {bad} is invalid (1 problem):\n"
                           f"  {bad}:2: train.epochs: Input should be greater than 0, got 0\n")


def test_a_channel_std_that_would_overflow_the_inputs_is_refused(tmp_path: Path) -> None:
    """data.std=[1e-300, 1, 1] is 0 in float32: every input becomes Inf and step 1 NaN."""
    _, problems = errors_of(tmp_path, "data:\n  dataset: imagefolder\n  data_dir: /tmp\n"
                                      "  std: [0.229, 1.0e-300, 0.225]\n")
    assert problems == [
        "r.yaml:4: data.std.1: a channel std of 1e-300 is outside 0.0001..1000 (pixels are in "
        "0..1, so their std is about 0.1-0.3; a tiny std overflows the inputs), got 1e-300"]
