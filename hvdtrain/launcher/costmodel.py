"""The cost model `hvdtrain forecast` will use (issue 30): pure arithmetic on a measured compute
step and the gradient's bytes on the wire, so a reader can check every number.

Ring allreduce (Thakur, Rabenseifner & Gropp, "Optimization of Collective Communication
Operations in MPICH", IJHPCA 2005; Patarasuk & Yuan 2009): p ranks reduce n bytes in 2(p - 1)
steps, each rank sending n / p bytes per step, so

    T_allreduce(p, n) = 2 (p - 1) alpha  +  2 (p - 1) / p * n * beta

with alpha the latency of one message and beta the seconds per byte on the link (8 / bit rate).
The reduction's own arithmetic is CPU time on the ranks and is left out here.

A training step is T_compute plus the part of the communication the backward pass cannot hide.
Horovod starts each gradient group's allreduce from a hook while backward still runs, so the
exposed part lies between max(0, T_comm - T_backward) (fully overlapped) and T_comm (not at all);
the point estimate assumes half of the possible overlap. PowerSGD's two rounds (P, then Q from
the averaged P) start after backward: nothing of them is hidden, each round pays its latency.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Named links: Gbit/s, and the one-message latency assumed for them (TCP over Ethernet: tens of
# microseconds within a rack; printed with every forecast).
LINKS = {"100mbit": 0.1, "1gbit": 1.0, "10gbit": 10.0, "25gbit": 25.0, "100gbit": 100.0}
LATENCY_S = {"100mbit": 100e-6, "1gbit": 50e-6}
FAST_LATENCY_S = 20e-6  # 10 Gbit/s and up
BACKWARD_SHARE = 2 / 3  # backward costs about twice the forward pass
POINT_OVERLAP = 0.5  # of the possible overlap, for the point estimate
MAX_GBIT = 10_000.0


@dataclass(frozen=True)
class Link:
    name: str
    gbit: float  # Gbit/s
    latency_s: float  # alpha

    @property
    def seconds_per_byte(self) -> float:  # beta
        return 8 / (self.gbit * 1e9)


def parse_link(text: str) -> Link:
    """A named link (100mbit, 1gbit, 10gbit, 25gbit, 100gbit) or Gbit/s as a number; ValueError
    with what is accepted."""
    key = text.strip().lower()
    if key in LINKS:
        return Link(key, LINKS[key], LATENCY_S.get(key, FAST_LATENCY_S))
    if re.fullmatch(r"\d+(\.\d+)?", key) and 0 < float(key) <= MAX_GBIT:
        gbit = float(key)
        return Link(f"{gbit:g} Gbit/s", gbit, LATENCY_S["1gbit"] if gbit <= 1 else FAST_LATENCY_S)
    raise ValueError(f"{text!r}: give {', '.join(LINKS)}, or Gbit/s as a number (e.g. 2.5)")


def allreduce_seconds(p: int, nbytes: float, link: Link, rounds: int = 1) -> float:
    """Ring allreduce of ``nbytes`` over ``p`` ranks, ``rounds`` times (latency each time)."""
    if p <= 1:
        return 0.0
    return rounds * 2 * (p - 1) * link.latency_s + 2 * (p - 1) / p * nbytes * \
        link.seconds_per_byte


@dataclass(frozen=True)
class Step:
    """One step's seconds: compute, and the exposed communication as a band and a point."""

    compute_s: float
    comm_s: float
    exposed_low_s: float  # fully overlapped with backward
    exposed_point_s: float
    exposed_high_s: float  # not overlapped at all

    @property
    def seconds(self) -> tuple[float, float, float]:
        """(fastest, point, slowest) step time."""
        return (self.compute_s + self.exposed_low_s, self.compute_s + self.exposed_point_s,
                self.compute_s + self.exposed_high_s)


def step(compute_s: float, comm_s: float, overlaps: bool,
         backward_share: float = BACKWARD_SHARE) -> Step:
    """``overlaps``: the allreduce runs during backward (Horovod's hooks: none, fp16); False for
    what starts after it (PowerSGD's rounds)."""
    if not overlaps:
        return Step(compute_s, comm_s, comm_s, comm_s, comm_s)
    hidden = min(comm_s, backward_share * compute_s)
    return Step(compute_s, comm_s, comm_s - hidden, comm_s - POINT_OVERLAP * hidden, comm_s)


def images_per_s(batch: int, p: int, s: Step) -> tuple[float, float, float]:
    """(slowest, point, fastest) images/s of ``p`` ranks of ``batch`` images each."""
    fast, point, slow = s.seconds
    return batch * p / slow, batch * p / point, batch * p / fast
