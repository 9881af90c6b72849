"""Root cause of a failed run, read from horovodrun's output: which rank failed first, on which host,
with what exit code or signal, the last lines of its stderr, and a hint for known Horovod failures.

Pure: fed one parsed ``Line`` at a time, then asked for a summary; unit-tested on recorded output.
"""

from __future__ import annotations

import re
import signal
from collections import deque
from dataclasses import dataclass, field

from hvdtrain.events import Line

EXIT_LINE = re.compile(r"^Process (\d+) exit with status code (-?\d+)\.")
RESET_LIMIT = re.compile(r"number of resets during elastic job exceeded limit: (\d+)")
# Stderr of a rank that died because another one did (Horovod shut down, peer connection lost).
SECONDARY = re.compile(r"Horovod has been shut down|Connection (closed|reset) by peer")
# ...unless it also shows a cause of its own.
PRIMARY = re.compile(r"Mismatched|non-finite|Wait timeout")
TAIL = 12

# (pattern in any worker's stderr, hint). The first match wins.
HINTS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"Mismatched (ALLREDUCE|ALLGATHER|BROADCAST).*shapes|Mismatched .*tensor shapes"),
     "ranks submitted tensors of different shapes: every rank must build the same model from the "
     "same recipe and code (check that all hosts run the same hvdtrain version)"),
    (re.compile(r"[Ss]talled|Missing ranks"),
     "a rank stopped joining collectives (hung or much slower than the others); Horovod's stall "
     "check shut the job down after horovod.stall_check_shutdown_seconds"),
    (re.compile(r"Wait timeout after \d+ seconds for key|[Gg]loo.*[Tt]imed out|Timed out waiting|"
                r"[Cc]onnect timeout|rendezvous.*timeout"),
     "not every rank reached the Gloo rendezvous in time{missing}: raise "
     "horovod.gloo_timeout_seconds (now {gloo_timeout} s) and launch.start_timeout (now "
     "{start_timeout} s), or find why that rank starts slowly"),
    (re.compile(r"Horovod has been shut down"),
     "Horovod shut down after another rank failed: the first failing rank is the root cause"),
]


def describe_exit(code: int) -> str:
    """'exit code 1', or 'killed by SIGKILL' for signal deaths (negative or 128+N codes)."""
    sig = -code if code < 0 else code - 128 if 128 < code < 160 else None
    if sig:
        try:
            return f"killed by {signal.Signals(sig).name} (exit code {code})"
        except ValueError:
            pass
    return f"exit code {code}"


@dataclass
class Diagnosis:
    """Accumulates what a failure summary needs while the output streams by."""

    hosts: dict[int, tuple[str, int]] = field(default_factory=dict)  # rank -> (host, local rank)
    settings: dict[str, object] = field(default_factory=dict)  # values hints quote
    tails: dict[int, deque[str]] = field(default_factory=dict)
    exits: list[tuple[int, int]] = field(default_factory=list)  # (rank, code) in report order
    errors: list[str] = field(default_factory=list)  # "error" events from rank 0
    stall: list[str] = field(default_factory=list)  # Horovod's stall-inspector lines
    reset_limit: int | None = None  # horovodrun stopped an elastic job at elastic.reset_limit

    def feed(self, line: Line) -> None:
        if line.events:
            self.errors += [e["message"] for e in line.events if e["event"] == "error"]
            return
        if line.rank is None:
            m = EXIT_LINE.match(line.text)
            if m:
                self.exits.append((int(m.group(1)), int(m.group(2))))
            limit = RESET_LIMIT.search(line.text)
            if limit:
                self.reset_limit = int(limit.group(1))
            return
        if line.stream == "stderr":
            self.tails.setdefault(line.rank, deque(maxlen=TAIL)).append(line.text)
            if "stalled" in line.text or "Missing ranks" in line.text or \
                    re.match(r"^\s*\d+: \[", line.text):
                self.stall.append(line.text.strip())

    def first_failure(self) -> tuple[int, int] | None:
        """The root-cause rank: the first reported non-zero exit whose stderr does not merely show
        the knock-on effect of another rank's death (horovodrun's report order is a race)."""
        failed = [(r, c) for r, c in self.exits if c != 0]
        primary = [(r, c) for r, c in failed if not self._secondary(r, c)]
        return (primary or failed or [None])[0]

    def _secondary(self, rank: int, code: int) -> bool:
        if code == 128 + 15:  # SIGTERM: horovodrun stopping the survivors
            return True
        text = "\n".join(self.tails.get(rank, ()))
        return bool(SECONDARY.search(text)) and not PRIMARY.search(text)

    def hint(self) -> str | None:
        """A hint from the first failing rank's stderr (all ranks' when no rank is known)."""
        first = self.first_failure()
        tails = [self.tails.get(first[0], ())] if first else list(self.tails.values())
        text = "\n".join(t for tail in tails for t in tail)
        keys = re.search(r"for key\(s\): ([\d, ]+)", text)
        missing = f" (rank {keys.group(1).strip()} never arrived)" if keys else ""
        values = {"missing": missing, "gloo_timeout": "?", "start_timeout": "?", **self.settings}
        return next((h.format(**values) for pattern, h in HINTS if pattern.search(text)), None)

    def summary(self, code: int) -> list[str]:
        """Lines of the failure block (empty when the run succeeded)."""
        if code == 0:
            return []
        out: list[str] = list(self.errors)
        first = self.first_failure()
        if first is not None:
            rank, rc = first
            host, local = self.hosts.get(rank, ("?", -1))
            out.append(f"rank {rank} (host {host}, local rank {local}) failed first: "
                       f"{describe_exit(rc)}")
            tail = list(self.tails.get(rank, ()))
            if tail:
                out.append(f"last lines of rank {rank}'s stderr:")
                out += [f"    {t}" for t in tail]
            others = [r for r, c in self.exits if c != 0 and r != rank]
            if others:
                out.append(f"then stopped: rank(s) {', '.join(map(str, sorted(set(others))))}")
        elif not out:
            out.append(f"horovodrun failed ({describe_exit(code)}) before any rank reported an exit")
            for rank, tail in sorted(self.tails.items()):
                out.append(f"last lines of rank {rank}'s stderr:")
                out += [f"    {t}" for t in tail]
        if self.stall:
            out.append("Horovod stall inspector: " + " | ".join(self.stall[-4:]))
        hint = self.hint()
        if self.reset_limit is not None:
            out.append(f"Horovod stopped the elastic job: it needed more than elastic.reset_limit"
                       f"={self.reset_limit} resets; raise elastic.reset_limit, or fix what keeps "
                       "failing, then resume from the last checkpoint")
        elif self.settings.get("elastic") and len({r for r, c in self.exits if c != 0}) > 1:
            hint = ("elastic mode could not continue: no worker survived; continue from the last "
                    "checkpoint with the resume command below")
        if hint and not self.errors:
            out.append(f"hint: {hint}")
        return out


class TracebackFolder:
    """Shows one line per worker traceback in the terminal (the exception), keeping the rest for the
    log and the failure summary. Fed (rank, text) of stderr lines; returns whether to display."""

    def __init__(self) -> None:
        self.inside: set[int] = set()

    def show(self, rank: int, text: str) -> bool:
        if text.startswith("Traceback (most recent call last)"):
            self.inside.add(rank)
            return False
        if not text.strip() or text.startswith(("During handling", "The above exception")):
            return False  # glue between chained tracebacks
        if rank not in self.inside:
            return True
        if text.startswith((" ", "\t")):
            return False
        self.inside.discard(rank)  # the exception line itself
        return True


def stall_report(beats: dict[int, tuple[float, dict]], now: float, np: int,
                 interval: float) -> list[str]:
    """Name the ranks a stalled run is waiting for, from every rank's last heartbeat.

    ``beats`` maps rank -> (monotonic time received, beat event). A rank with no recent beat is
    frozen (or never started); otherwise ranks waiting in an allreduce are blocked on the ranks
    that are not in it.
    """
    out: list[str] = []
    silent = [r for r in range(np) if r not in beats or now - beats[r][0] > 3 * interval]
    for r in silent:
        if r in beats:
            _, b = beats[r]
            out.append(f"rank {r} sent no heartbeat for {now - beats[r][0]:.0f} s (last seen: "
                       f"{b['phase']} epoch {b['epoch']} step {b['step']}): its process is frozen")
        else:
            out.append(f"rank {r} never sent a heartbeat: it did not start")
    alive = {r: beats[r][1] for r in range(np) if r in beats and r not in silent}
    waiting = {r: b for r, b in alive.items() if b["phase"] == "allreduce"}
    missing = sorted(r for r in alive if r not in waiting)
    if waiting and missing:
        w = next(iter(waiting.values()))
        out.append(f"rank(s) {', '.join(map(str, sorted(waiting)))} wait in the gradient allreduce "
                   f"of epoch {w['epoch']} step {w['step']}; missing: rank(s) "
                   f"{', '.join(map(str, missing))} ("
                   + "; ".join(f"rank {r}: {alive[r]['phase']} epoch {alive[r]['epoch']} step "
                               f"{alive[r]['step']}" for r in missing) + ")")
    elif not out:
        out.append("every rank is alive: " + "; ".join(
            f"rank {r}: {b['phase']} epoch {b['epoch']} step {b['step']}" for r, b in alive.items()))
    return out
