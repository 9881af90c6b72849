"""`hvdtrain forecast --link measured`: ``python -m hvdtrain.worker.linkprobe [--repeats R]``
under ``horovodrun -np 2`` on two hosts (or on this machine, for the loopback a host's own ranks
share). Times Horovod allreduces of float32 buffers from 64 kB up to 16 MB, several in flight
at once and back to back (so a shaper's burst is spent after the first), and rank 0 prints one
``link`` event with each size's median; the launcher fits alpha and beta to them (launcher/costmodel.py ``fit_link``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from hvdtrain import events

SIZES = (64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20)  # bytes
IN_FLIGHT = 8  # allreduces started together, as a step's fused rounds are
ENOUGH_S = 0.05  # a size this slow a round is enough: the larger ones would only take longer


def probe(repeats: int) -> tuple[list[int], list[float]]:
    """Per size: the median over ``repeats`` of (seconds for IN_FLIGHT allreduces started
    together) / IN_FLIGHT, the rate a training step's pipelined rounds see (one synchronous
    allreduce mostly measures Horovod's wake-ups, milliseconds). Sizes stop growing once one
    takes ENOUGH_S (at least three sizes)."""
    import horovod.torch as hvd

    # Horovod: join the two probe ranks (Gloo over the link being measured).
    hvd.init()
    torch.set_num_threads(1)
    sizes, medians = [], []
    for size in SIZES:
        buffers = [torch.ones(size // 4) for _ in range(IN_FLIGHT)]
        times = []
        for i in range(repeats + 1):  # the first: Horovod's negotiation of new names, dropped
            t0 = time.perf_counter()
            # Horovod: IN_FLIGHT allreduces of ``size`` bytes at once, then wait for them all.
            handles = [hvd.allreduce_async_(b, op=hvd.Sum, name=f"link.{size}.{j}")
                       for j, b in enumerate(buffers)]
            for h in handles:
                hvd.synchronize(h)
            times.append((time.perf_counter() - t0) / IN_FLIGHT)
        # Horovod: the slower rank's median is the link's (the ring waits for it); both ranks
        # must agree on whether to go on.
        seconds = max(hvd.allgather_object(statistics.median(times[1:])))
        sizes.append(size)
        medians.append(seconds)
        if seconds >= ENOUGH_S and len(sizes) >= 3:
            break
    return (sizes, medians) if hvd.rank() == 0 else ([], [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hvdtrain.worker.linkprobe")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    sizes, seconds = probe(args.repeats)
    if sizes:
        events.emit("link", sizes=sizes, seconds=seconds)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # (as bench's worker: Horovod's teardown can race a peer's; the result is out)
