"""Root-cause analysis on recorded horovodrun failure output (pure, no processes)."""

from __future__ import annotations

from hvdtrain.events import parse_line
from hvdtrain.launcher.failure import Diagnosis, TracebackFolder, describe_exit, stall_report

# Recorded from a real run where rank 1 raised and horovodrun happened to report rank 0 first.
RACE = """\
[1]<stderr>:Traceback (most recent call last):
[1]<stderr>:  File "/work/main/hvdtrain/train.py", line 218, in run
[1]<stderr>:RuntimeError: injected fault: rank 1 raised at epoch 2
[0]<stderr>:Traceback (most recent call last):
[0]<stderr>:horovod.common.exceptions.HorovodInternalError: Horovod has been shut down. This was caused by an exception on one of the ranks
Process 0 exit with status code 1.
Terminating remaining workers after failure of Process 0.
Process 1 exit with status code 1.
"""


def diagnose(text: str, **settings) -> Diagnosis:
    d = Diagnosis(hosts={0: ("localhost", 0), 1: ("localhost", 1)}, settings=settings)
    for raw in text.splitlines():
        d.feed(parse_line(raw))
    return d


def test_knock_on_failures_are_not_blamed_even_when_reported_first() -> None:
    d = diagnose(RACE)
    assert d.first_failure() == (1, 1)
    lines = d.summary(1)
    assert lines[0] == "rank 1 (host localhost, local rank 1) failed first: exit code 1"
    assert lines[-2:] == ["    RuntimeError: injected fault: rank 1 raised at epoch 2",
                          "then stopped: rank(s) 0"]


def test_exit_codes_and_signals() -> None:
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(137) == "killed by SIGKILL (exit code 137)"
    assert describe_exit(-11) == "killed by SIGSEGV (exit code -11)"
    assert describe_exit(134) == "killed by SIGABRT (exit code 134)"


def test_rendezvous_timeout_hint_names_rank_and_settings() -> None:
    d = diagnose("[0]<stderr>:  what():  [http_store.cc:54] Wait timeout after 5 seconds for "
                 "key(s): 1. You may want to increase the timeout\nProcess 0 exit with status code 134.",
                 gloo_timeout=5, start_timeout=7)
    assert d.summary(1)[-1] == ("hint: not every rank reached the Gloo rendezvous in time (rank 1 "
                                "never arrived): raise horovod.gloo_timeout_seconds (now 5 s) and "
                                "launch.start_timeout (now 7 s), or find why that rank starts slowly")


def test_success_has_no_summary_and_unknown_failure_still_says_something() -> None:
    assert diagnose(RACE).summary(0) == []
    assert diagnose("").summary(2) == ["horovodrun failed (exit code 2) before any rank reported "
                                       "an exit"]


def test_traceback_folder_shows_only_the_exception_line() -> None:
    f = TracebackFolder()
    shown = [t for t in ["Traceback (most recent call last):", '  File "x.py", line 1', "    boom()",
                         "ValueError: boom", "", "During handling of the above exception, another "
                         "exception occurred:", "Traceback (most recent call last):", "  File 'y'",
                         "RuntimeError: again", "a normal warning"] if f.show(1, t)]
    assert shown == ["ValueError: boom", "RuntimeError: again", "a normal warning"]


def test_stall_report_names_the_missing_rank() -> None:
    beats = {0: (100.0, {"phase": "allreduce", "epoch": 1, "step": 3}),
             1: (100.5, {"phase": "compute", "epoch": 1, "step": 3})}
    assert stall_report(beats, 101.0, 2, 2.0) == [
        "rank(s) 0 wait in the gradient allreduce of epoch 1 step 3; missing: rank(s) 1 "
        "(rank 1: compute epoch 1 step 3)"]
    frozen = {0: (100.0, {"phase": "allreduce", "epoch": 1, "step": 3}),
              1: (80.0, {"phase": "compute", "epoch": 1, "step": 2})}
    assert stall_report(frozen, 101.0, 3, 2.0) == [
        "rank 1 sent no heartbeat for 21 s (last seen: compute epoch 1 step 2): its process is frozen",
        "rank 2 never sent a heartbeat: it did not start"]
