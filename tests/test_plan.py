"""The plan: exact argv lists, derived numbers, and Horovod's own parser accepting every argv."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hvdtrain.errors import UserError
from hvdtrain.launcher.hosts import Host
from hvdtrain.launcher.plan import build_argv, placement
from hvdtrain.launcher.prelaunch import make_plan
from hvdtrain.recipe import Recipe
from hvdtrain.recipe_files import load_recipe

WORKER = ["/py", "-m", "hvdtrain.worker", "--run-dir", "/runs/x"]
TUNING_DEFAULTS = ["--start-timeout", "30", "--fusion-threshold-mb", "128", "--cycle-time-ms", "1",
                   "--cache-capacity", "1024", "--no-hierarchical-allreduce",
                   "--stall-check-warning-time-seconds", "60",
                   "--stall-check-shutdown-time-seconds", "120"]


def recipe(**sections) -> Recipe:
    return Recipe.model_validate(sections)


def test_localhost_argv() -> None:
    argv = build_argv(recipe(), [Host("localhost", 2)], 2, WORKER)
    assert argv == ["horovodrun", "-np", "2", "-H", "localhost:2", "--gloo", *TUNING_DEFAULTS,
                    "--gloo-timeout-seconds", "30", *WORKER]


def test_multi_host_argv() -> None:
    argv = build_argv(recipe(), [Host("n1", 2), Host("n2", 1)], 3, WORKER, horovodrun="/v/horovodrun")
    assert argv == ["/v/horovodrun", "-np", "3", "-H", "n1:2,n2:1", "--gloo", *TUNING_DEFAULTS,
                    "--gloo-timeout-seconds", "30", *WORKER]


def test_mpi_controller_argv_has_no_gloo_timeout() -> None:
    argv = build_argv(recipe(launch={"controller": "mpi"}), [Host("n1", 2)], 2, WORKER)
    assert argv == ["horovodrun", "-np", "2", "-H", "n1:2", "--mpi", *TUNING_DEFAULTS, *WORKER]


def test_every_tuning_flag() -> None:
    r = recipe(horovod={"fusion_threshold_mb": 0, "cycle_time_ms": 2.5, "cache_capacity": 0,
                        "hierarchical_allreduce": True, "timeline_file": "/tmp/tl.json",
                        "autotune": True, "autotune_log_file": "/tmp/at.csv",
                        "stall_check_warning_seconds": 10, "stall_check_shutdown_seconds": 20,
                        "gloo_timeout_seconds": 7},
               launch={"start_timeout": 12})
    argv = build_argv(r, [Host("localhost", 2)], 2, WORKER)
    assert argv == ["horovodrun", "-np", "2", "-H", "localhost:2", "--gloo", "--start-timeout", "12",
                    "--fusion-threshold-mb", "0", "--cycle-time-ms", "2.5", "--cache-capacity", "0",
                    "--hierarchical-allreduce", "--timeline-filename", "/tmp/tl.json", "--autotune",
                    "--autotune-log-file", "/tmp/at.csv", "--stall-check-warning-time-seconds", "10",
                    "--stall-check-shutdown-time-seconds", "20", "--gloo-timeout-seconds", "7",
                    *WORKER]


def test_network_interfaces_and_ssh_options() -> None:
    r = recipe(launch={"network_interfaces": ["eth0", "ib0"], "ssh_port": 2222,
                       "ssh_identity_file": "/keys/id_ed25519"})
    argv = build_argv(r, [Host("n1", 1), Host("n2", 1)], 2, WORKER)
    assert argv[:14] == ["horovodrun", "-np", "2", "-H", "n1:1,n2:1", "--gloo",
                         "--network-interfaces", "eth0,ib0", "-p", "2222",
                         "-i", "/keys/id_ed25519", "--start-timeout", "30"]


def test_elastic_flags_with_hosts_and_with_discovery_script() -> None:
    r = recipe(elastic={"min_np": 2, "max_np": 4, "slots_per_host": 2, "reset_limit": 3,
                        "cooldown_range": [5, 30], "elastic_timeout": 60})
    argv = build_argv(r, [Host("n1", 1), Host("n2", 1)], 2, WORKER)
    assert argv[:19] == ["horovodrun", "-np", "2", "-H", "n1:1,n2:1", "--min-np", "2", "--max-np", "4",
                         "--slots-per-host", "2", "--elastic-timeout", "60", "--reset-limit", "3",
                         "--blacklist-cooldown-range", "5", "30", "--gloo"]
    r = recipe(elastic={"min_np": 1, "host_discovery_script": "/opt/discover.sh"})
    argv = build_argv(r, [Host("n1", 1)], 2, WORKER)
    assert argv[:10] == ["horovodrun", "-np", "2", "--host-discovery-script", "/opt/discover.sh",
                         "--min-np", "1", "--elastic-timeout", "600", "--gloo"]


def test_a_discovery_script_path_with_a_space_reaches_the_shell_as_one_word(tmp_path: Path) -> None:
    """horovodrun runs the script through /bin/sh (safe_shell_exec, shell=True): the argv value
    must be one shell word, and a command line must not run."""
    folder = tmp_path / "my dir"
    folder.mkdir()
    script = folder / "disc.sh"
    script.write_text("#!/bin/sh\necho node1:1\necho node2:1\n")
    script.chmod(0o755)
    r = recipe(elastic={"min_np": 1, "host_discovery_script": str(script)})
    argv = build_argv(r, [], 2, WORKER)
    value = argv[argv.index("--host-discovery-script") + 1]
    assert value == f"'{script}'"
    out = subprocess.run(value, shell=True, capture_output=True, text=True)  # what horovodrun does
    assert (out.returncode, out.stdout) == (0, "node1:1\nnode2:1\n")


def test_env_passing_goes_through_the_process_environment(tmp_path: Path) -> None:
    loaded = load_recipe("digits-cnn", ["launch.env={NCCL_DEBUG: INFO, MY_FLAG: 'a b;c'}"])
    plan = make_plan(loaded, np=2, run_dir=tmp_path, python="/py", horovodrun="horovodrun")
    assert plan.env == {"NCCL_DEBUG": "INFO", "MY_FLAG": "a b;c"}
    assert not any("MY_FLAG" in a for a in plan.argv)  # data, never spliced into the command


def parse_with_horovod(argv: list[str], monkeypatch):
    from horovod.runner import launch

    monkeypatch.setattr(sys, "argv", ["horovodrun", *argv[1:]])
    return launch.parse_args()


def test_horovods_own_parser_accepts_a_maximal_argv(monkeypatch) -> None:
    r = recipe(horovod={"fusion_threshold_mb": 64, "cycle_time_ms": 2.5, "cache_capacity": 512,
                        "hierarchical_allreduce": True, "timeline_file": "/tmp/tl.json",
                        "autotune": True, "autotune_log_file": "/tmp/at.csv",
                        "stall_check_warning_seconds": 10, "stall_check_shutdown_seconds": 20,
                        "gloo_timeout_seconds": 7},
               launch={"network_interfaces": ["eth0", "ib0"], "ssh_port": 2222,
                       "ssh_identity_file": "/keys/id", "start_timeout": 12},
               elastic={"min_np": 2, "max_np": 4, "slots_per_host": 2, "reset_limit": 3,
                        "cooldown_range": [5, 30], "elastic_timeout": 60})
    argv = build_argv(r, [Host("n1", 2), Host("n2", 1)], 3, WORKER)
    a = parse_with_horovod(argv, monkeypatch)
    assert (a.num_proc, a.hosts, a.use_gloo, a.use_mpi) == (3, "n1:2,n2:1", True, False)
    assert (a.min_num_proc, a.max_num_proc, a.slots, a.elastic_timeout, a.reset_limit,
            a.cooldown_range) == (2, 4, 2, 60, 3, [5, 30])
    assert a.nics == {"eth0", "ib0"}
    assert (a.ssh_port, a.ssh_identity_file, a.start_timeout) == (2222, "/keys/id", 12)
    assert (a.fusion_threshold_mb, a.cycle_time_ms, a.cache_capacity) == (64, 2.5, 512)
    assert a.hierarchical_allreduce is True
    assert (a.timeline_filename, a.autotune, a.autotune_log_file) == ("/tmp/tl.json", True, "/tmp/at.csv")
    assert (a.stall_check_warning_time_seconds, a.stall_check_shutdown_time_seconds) == (10, 20)
    assert a.gloo_timeout_seconds == 7
    assert a.output_filename is None  # per-rank logs are written by hvdtrain (see plan.py)
    assert a.command == WORKER


@pytest.mark.parametrize("name", ["digits-cnn", "synthetic-bench", "mnist-cnn", "cifar10-resnet"])
def test_horovods_parser_accepts_every_shipped_recipes_plan(name: str, monkeypatch,
                                                             tmp_path: Path) -> None:
    from datafiles import write_cifar, write_mnist

    # The built-in sets' files must exist before a local launch (prelaunch refuses otherwise).
    data = write_mnist(tmp_path / "mnist") if name == "mnist-cnn" else write_cifar(tmp_path / "c")
    overrides = [f"data.data_dir={data}"] if name in ("mnist-cnn", "cifar10-resnet") else []
    plan = make_plan(load_recipe(name, overrides), np=2, hosts="localhost:2", run_dir=tmp_path)
    a = parse_with_horovod(plan.argv, monkeypatch)
    assert (a.num_proc, a.hosts, a.use_gloo) == (2, "localhost:2", True)
    assert a.hierarchical_allreduce is False
    assert a.stall_check_shutdown_time_seconds == 120
    assert a.command == [sys.executable, "-m", "hvdtrain.worker", "--run-dir", str(tmp_path)]


def test_mpi_argv_parses(monkeypatch) -> None:
    argv = build_argv(recipe(launch={"controller": "mpi"}), [Host("n1", 2)], 2, WORKER)
    a = parse_with_horovod(argv, monkeypatch)
    assert (a.use_mpi, a.use_gloo) == (True, False)


def test_derived_numbers_for_digits(tmp_path: Path) -> None:
    plan = make_plan(load_recipe("digits-cnn", ["optimizer.base_lr=0.05"]), np=2, run_dir=tmp_path,
                      python="/py")
    assert (plan.np, plan.batch_size, plan.global_batch) == (2, 32, 64)
    assert plan.steps_per_epoch == 1437 // 2 // 32 == 22
    assert (plan.base_lr, plan.peak_lr, plan.warmup_steps) == (0.05, 0.1, 22)
    assert plan.lr_points[0] == ("first step", 0, pytest.approx(0.05 * (1 / 22 + 1)))
    assert plan.lr_points[2] == ("warmup end", 21, pytest.approx(0.1))
    assert [(p.rank, p.host, p.local_rank) for p in plan.placement] == [(0, "localhost", 0),
                                                                        (1, "localhost", 1)]


def test_placement_fills_hosts_in_order() -> None:
    placed = placement([Host("a", 2), Host("b", 1), Host("c", 3)])
    assert [(p.rank, p.host, p.local_rank) for p in placed] == [
        (0, "a", 0), (1, "a", 1), (2, "b", 0), (3, "c", 0), (4, "c", 1), (5, "c", 2)]


def test_np_sources_and_host_filling(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.write_text("a slots=2\nb slots=2\nc slots=2\n")
    loaded = load_recipe("digits-cnn", ["launch.np=null"])
    assert make_plan(loaded, hostfile=str(hf), run_dir=tmp_path).np == 6  # total slots
    plan = make_plan(loaded, np=3, hostfile=str(hf), run_dir=tmp_path)  # --np wins
    assert plan.argv[1:5] == ["-np", "3", "-H", "a:2,b:1"]
    assert [(p.rank, p.host, p.local_rank) for p in plan.placement] == [(0, "a", 0), (1, "a", 1),
                                                                        (2, "b", 0)]
    plan = make_plan(load_recipe("digits-cnn", ["launch.np=4"]), hostfile=str(hf), run_dir=tmp_path)
    assert plan.argv[1:5] == ["-np", "4", "-H", "a:2,b:2"]  # the recipe's np
    with pytest.raises(UserError, match=r"^np=7 needs more slots than .*hf has \(6\)"):
        make_plan(loaded, np=7, hostfile=str(hf), run_dir=tmp_path)
    with pytest.raises(UserError, match=r"^give either --hosts or --hostfile, not both$"):
        make_plan(loaded, hosts="a:1", hostfile=str(hf), run_dir=tmp_path)


def test_plan_and_dry_run_print_the_same_and_launch_nothing(in_cli, tmp_path: Path) -> None:
    common = ["digits-cnn", "train.epochs=2", "--np", "2", "--hosts", "localhost:2", "--json"]
    plan = json.loads(in_cli("plan", *common).stdout)
    dry = json.loads(in_cli("run", *common, "--dry-run", "--run-dir", plan["run_dir"]).stdout)
    assert plan == dry
    assert plan["argv"][:5] == [str(Path(sys.executable).parent / "horovodrun"), "-np", "2", "-H",
                                "localhost:2"]
    assert plan["command"].split()[0] == plan["argv"][0]
    assert plan["steps_per_epoch"] == 22 and plan["peak_lr"] == 0.2
    assert not Path(plan["run_dir"]).exists()  # nothing written, nothing launched
    table = in_cli("plan", "digits-cnn", "--np", "2")
    assert table.returncode == 0
    for text in ("rank placement", "32 per worker x 2 workers = 64 global", "peak 0.2",
                 "horovodrun command:", "-H localhost:2"):
        assert text in table.stdout


def test_a_dry_run_refuses_bad_input_as_run_does(in_cli, tmp_path: Path) -> None:
    """(`run`'s refusals, each with its exact message: test_bad_input.py.)"""
    proc = in_cli("run", "digits-cnn", "--hosts", "a;b:1", "--dry-run")
    assert proc.returncode == 2
    assert "invalid hostname 'a;b'" in proc.stderr and "Traceback" not in proc.stderr


def test_dry_run_of_a_resume_shows_the_real_argv(in_cli, tmp_path: Path) -> None:
    from datafiles import fake_run

    run_dir = fake_run(tmp_path / "run")
    before = sorted(p.name for p in run_dir.iterdir())
    args = ["digits-cnn", "train.epochs=20", "--resume", str(run_dir), "--json"]
    dry = in_cli("run", *args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["argv"][-5:] == ["-m", "hvdtrain.worker", "--run-dir", str(run_dir), "--resume"]
    assert plan["resume"] is True and plan["run_dir"] == str(run_dir)
    assert json.loads(in_cli("plan", *args).stdout) == plan  # `plan --resume` says the same
    assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing written
    other = in_cli("run", *args, "--dry-run", "--run-dir", str(tmp_path / "elsewhere"))
    assert other.returncode == 2
    assert other.stderr == (f"error: --run-dir {tmp_path / 'elsewhere'} and --resume {run_dir} "
                            "name different directories: --resume continues the run in its own "
                            "directory; drop --run-dir\n")
    assert json.loads(other.stdout) == {"ok": False, "errors": [other.stderr[7:-1]]}


def test_the_pre_launch_checks_report_every_problem_at_once(tmp_path: Path) -> None:
    """Facts in, messages out (hvdtrain/launcher/checks.py): a machine with no GPU, little memory
    and a Horovod without MPI, for a recipe that wants all three."""
    from hvdtrain.launcher.checks import Machine, machine_problems

    plan = make_plan(load_recipe("digits-cnn", ["train.device=cuda", "launch.controller=mpi"]),
                     np=2, run_dir=tmp_path)
    machine = Machine(gpus=0, memory_bytes=1 << 10, build={"controllers": {"gloo": True,
                                                                           "mpi": False}})
    assert [p.split(",")[0] for p in machine_problems(plan, machine)] == [
        "launch.controller=mpi", "train.device=cuda", "the data set needs about 0.0 GiB in every "
        "worker (0.0 GiB for the 2 worker(s) on localhost)"]
    enough = Machine(gpus=2, memory_bytes=1 << 40, build={"controllers": {"gloo": True,
                                                                          "mpi": True}})
    assert machine_problems(plan, enough) == []


def test_the_discovery_scripts_output_is_judged_without_running_it() -> None:
    from hvdtrain.launcher.checks import discovery_output_problems

    assert discovery_output_problems("d.sh", (0, "a:2\nb:2\n", ""), 4, None) == []
    assert discovery_output_problems("d.sh", (3, "", "boom\nno hosts\n"), 2, None) == [
        "elastic.host_discovery_script d.sh failed (exit code 3): no hosts"]
    assert discovery_output_problems("d.sh", (0, "a\nb\n", ""), 3, 1) == [
        "elastic.host_discovery_script d.sh: it printed 2 host(s) with 2 slot(s), fewer than "
        "elastic.min_np=3: horovodrun would wait for more until elastic.elastic_timeout"]
    assert discovery_output_problems("d.sh", "it cannot run", 2, None) == ["it cannot run"]
    # what horovodrun's parser (split on ':', int(slots)) would fail on, each line named
    said = "; horovodrun reads one HOST or HOST:SLOTS per line and would fail on it"
    assert discovery_output_problems("d.sh", (0, "a:2\nb slots=1\nc:abc\nd:\n:3\ne:1:2\n",
                                              ""), 2, None) == [
        "elastic.host_discovery_script d.sh printed line 2 'b slots=1': invalid hostname "
        "'b slots=1': use letters, digits, '-' and '.' (an RFC 1123 hostname or an IPv4 "
        "address)" + said,
        "elastic.host_discovery_script d.sh printed line 3 'c:abc': slots 'abc' is not a "
        "positive whole number" + said,
        "elastic.host_discovery_script d.sh printed line 4 'd:': slots '' is not a positive "
        "whole number" + said,
        "elastic.host_discovery_script d.sh printed line 5 ':3': no host name" + said,
        "elastic.host_discovery_script d.sh printed line 6 'e:1:2': 'e:1:2' has more than one "
        "':': write host:slots (an ssh port goes in launch.ssh_port)" + said]
