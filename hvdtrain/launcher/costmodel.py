"""The cost model of `hvdtrain forecast` (issue 30): pure arithmetic on a measured profile of the
model (hvdtrain/worker/profile.py) and the gradient's bytes on the wire, so a reader can check
every number (``forecast --explain`` prints them).

Ring allreduce (Thakur, Rabenseifner & Gropp, "Optimization of Collective Communication
Operations in MPICH", IJHPCA 2005; Patarasuk & Yuan 2009): p ranks reduce n bytes in 2(p - 1)
steps, each rank sending n / p bytes per step, so

    T_allreduce(p, n) = 2 (p - 1) alpha  +  2 (p - 1) / p * n * beta  +  (p - 1) / p * n * gamma

with alpha the latency of one message, beta the seconds per byte on the link (8 / bit rate) and
gamma the CPU's seconds per byte to add two buffers (measured here). Horovod fuses the gradients
ready in each cycle of its background loop into one allreduce, so a step pays alpha once per
such round.

A training step is the measured compute step plus the part of the communication the backward
pass cannot hide. Horovod starts each fused allreduce from a hook while backward still runs, so
the exposed part lies between max(0, T - T_backward) (fully overlapped) and T (not at all): the
band; the point hides a quarter of what could be hidden (``POINT_OVERLAP``). PowerSGD's rounds
(the rest, P, then Q from the averaged P) start after backward: nothing of them is hidden.
The band's ends also take the compute step's 10th and 90th percentiles.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# Named links: Gbit/s, and the one-message latency assumed for them (TCP over Ethernet: tens of
# microseconds within a rack; printed with every forecast).
LINKS = {"100mbit": 0.1, "1gbit": 1.0, "10gbit": 10.0, "25gbit": 25.0, "100gbit": 100.0}
LATENCY_S = {"100mbit": 100e-6, "1gbit": 50e-6}
FAST_LATENCY_S = 20e-6  # 10 Gbit/s and up
# Of the possible overlap, the point estimate counts a quarter: on CPU ranks that use every core
# for compute the transport's CPU work competes with backward (make bench's validation, issue
# 30); hosts with spare cores or GPUs overlap more, toward the band's fast end.
POINT_OVERLAP = 0.25
MAX_GBIT = 10_000.0


@dataclass(frozen=True)
class Link:
    name: str
    gbit: float  # Gbit/s
    latency_s: float  # alpha
    # A token-bucket shaper's burst (tc tbf, as make bench's test network has): up to this many
    # bytes pass at once when the link idled long enough to refill it. 0 for a real wire.
    burst_bytes: int = 0

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


def fit_link(sizes: list[int], seconds: list[float], name: str = "measured") -> Link:
    """alpha and beta from two-rank allreduce times (T = 2 alpha + n beta at p = 2): a least-squares
    line through (bytes, seconds). Its beta holds the whole per-byte cost on that path (the wire,
    the copies and the reduction), so a measured link needs no separate reduction term."""
    n = len(sizes)
    mx, my = sum(sizes) / n, sum(seconds) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(sizes, seconds)) / max(
        sum((x - mx) ** 2 for x in sizes), 1e-30)
    slope = max(slope, 1e-13)  # (a faster-than-100-Tbit/s fit is noise)
    alpha = max((my - slope * mx) / 2, 1e-6)
    return Link(name, 8 / slope / 1e9, alpha)


def allreduce_seconds(p: int, nbytes: float, link: Link, rounds: int = 1) -> float:
    """Ring allreduce of ``nbytes`` over ``p`` ranks, ``rounds`` times (latency each time)."""
    if p <= 1:
        return 0.0
    return rounds * 2 * (p - 1) * link.latency_s + 2 * (p - 1) / p * nbytes * \
        link.seconds_per_byte


# --- the forecast: a measured profile of the model + a link -> a band per world size ------------

COMPRESSIONS = ("none", "fp16", "powersgd")
WIRE_BYTES = {"none": 4, "fp16": 2}  # bytes per gradient element on the wire
CYCLE_S = 1e-3  # Horovod's background loop (HOROVOD_CYCLE_TIME, 1 ms): a request waits 0..1 cycle
POWERSGD_ROUNDS = 3  # the rest, P, then Q


@dataclass(frozen=True)
class Profile:
    """What `hvdtrain forecast` measured of the recipe's model (hvdtrain/worker/profile.py), per
    rank, with ``ranks`` ranks sharing a host of ``threads`` torch threads each."""

    forward_s: float
    backward_s: float
    update_s: float
    step_s: tuple[float, float, float]  # p10, median, p90 of a whole step (no gradient traffic)
    powersgd_step_s: tuple[float, float, float] | None  # the same with PowerSGD's reduce
    sum_s_per_byte: dict[str, float]  # the CPU's reduction cost: float32, float16
    params: int  # trainable gradient elements
    tensors: int  # gradient tensors
    powersgd_bytes: int | None  # PowerSGD's bytes a step (factors + the rest), from its layout
    batch_size: int
    threads: int
    ranks: int = 1
    groups: int | None = None  # allreduce groups a step (horovod.group_mb); None: one a tensor


@dataclass(frozen=True)
class Forecast:
    """One world size and compression: images/s as (slowest, point, fastest), the point's
    scaling efficiency and its step split into compute and exposed communication."""

    np: int
    compression: str
    images_per_s: tuple[float, float, float]
    efficiency: float
    compute_s: float
    exposed_s: float
    wire_bytes: int


def fusion_rounds(prof: Profile) -> int:
    """Allreduces a step under Horovod's tensor fusion: what became ready in each cycle of the
    backward pass goes as one; at most one per group (hvdtrain's ``horovod.group_mb`` groups,
    hvdtrain/gradient_groups.py), or per gradient tensor where it groups none."""
    return max(1, min(prof.groups or prof.tensors, math.ceil(prof.backward_s / CYCLE_S)))


def wire_seconds(p: int, nbytes: float, link: Link, rounds: int, idle_s: float) -> tuple[
        float, float]:
    """(fastest, slowest) seconds of a step's allreduces on the link: the ring's time, less what a
    shaper's burst lets through at once (fastest, only when the link idles long enough to refill
    it: ``idle_s``)."""
    if p <= 1:
        return 0.0, 0.0
    slow = allreduce_seconds(p, nbytes, link, rounds)
    per_link = 2 * (p - 1) / p * nbytes
    burst = min(link.burst_bytes, idle_s / link.seconds_per_byte)
    return slow - min(burst, per_link) * link.seconds_per_byte, slow


def traffic(prof: Profile, compression: str) -> tuple[int, int, str]:
    """A step's allreduce traffic: (bytes, rounds, the dtype the CPU sums)."""
    if compression == "powersgd":
        return prof.powersgd_bytes or 0, POWERSGD_ROUNDS, "float32"
    return (prof.params * WIRE_BYTES[compression], fusion_rounds(prof),
            "float16" if compression == "fp16" else "float32")


def held_in_step(prof: Profile, p: int) -> bool:
    """PowerSGD's allreduces are in its measured step already: ``p`` ranks on one host, as
    many as the profile measured in lockstep (through Horovod, on its loopback)."""
    return p <= prof.ranks


def forecast(prof: Profile, p: int, compression: str, link: Link, measured: bool) -> Forecast:
    """The band for ``p`` ranks. none/fp16: Horovod's allreduces run during backward, so the
    exposed part lies between comm - backward (all hidden) and comm (none hidden); the point
    hides ``POINT_OVERLAP`` of what could be. powersgd: its rounds follow backward (nothing
    hidden); its measured step holds its own arithmetic. ``measured``: the link's beta already
    holds the reduction and the copies (fit_link), else the CPU's sum cost is added."""
    nbytes, rounds, dtype = traffic(prof, compression)
    reduce_s = _reduce_seconds(prof, p, nbytes, dtype, measured)
    if compression == "powersgd":
        if prof.powersgd_step_s is None or prof.powersgd_bytes is None:
            raise ValueError("powersgd factors no layer of this model")
        # (its step does all the plain step does and more: a faster measurement is noise)
        low_c, mid_c, high_c = map(max, prof.powersgd_step_s, prof.step_s)
        fits = 2 * (p - 1) / p * nbytes <= link.burst_bytes
        fast, slow = wire_seconds(p, nbytes, link, rounds, idle_s=mid_c)
        cycles = rounds * CYCLE_S if p > 1 and prof.ranks == 1 else 0.0  # (measured in lockstep)
        lo, pt, hi = (fast + reduce_s, (fast if fits else slow) + reduce_s + cycles / 2,
                      slow + reduce_s + cycles)
        if held_in_step(prof, p):
            lo = pt = hi = 0.0
    else:
        low_c, mid_c, high_c = prof.step_s
        fast, slow = wire_seconds(p, nbytes, link, rounds, idle_s=prof.forward_s)
        cycles = CYCLE_S if p > 1 else 0.0
        comm_fast, comm = fast + reduce_s, slow + reduce_s
        lo = max(0.0, comm_fast - prof.backward_s)
        pt = comm - POINT_OVERLAP * min(comm, prof.backward_s) + cycles / 2
        hi = comm + cycles
    if p <= 1:
        lo = pt = hi = 0.0
    images = (prof.batch_size * p / (high_c + hi), prof.batch_size * p / (mid_c + pt),
              prof.batch_size * p / (low_c + lo))
    alone = prof.batch_size / prof.step_s[1]
    return Forecast(p, compression, images, images[1] / (p * alone), mid_c, pt, int(nbytes))


def _reduce_seconds(prof: Profile, p: int, nbytes: float, dtype: str, measured: bool) -> float:
    """The reduction's CPU time in a ring allreduce, (p - 1) / p n gamma (Thakur et al.)."""
    if measured or p <= 1:
        return 0.0
    return (p - 1) / p * nbytes * prof.sum_s_per_byte.get(dtype, 0.0)


def recommend(rows: list[Forecast]) -> str:
    """The compression with the most images/s at the point (of one world size's rows); a
    simpler one (none, then fp16) when it is within 3 %: not worth the accuracy risk."""
    best = max(rows, key=lambda r: r.images_per_s[1])
    for r in sorted(rows, key=lambda r: COMPRESSIONS.index(r.compression)):
        if r.images_per_s[1] >= 0.97 * best.images_per_s[1]:
            return r.compression
    return best.compression


# --- `forecast --explain`: the numbers behind each row ------------------------------------------

def explain_inputs(prof: Profile, link: Link, loopback: Link | None) -> list[str]:
    """The measured and assumed inputs, one per line (at most 80 columns)."""
    ms = (lambda s: f"{1e3 * s:.2f} ms")
    lines = [f"  compute: step {ms(prof.step_s[1])} (p10 {ms(prof.step_s[0])}, p90 "
             f"{ms(prof.step_s[2])}), backward {ms(prof.backward_s)}",
             f"  gradient: {prof.params:,} elements, {prof.tensors} tensors"
             + (f", {prof.groups} group(s)" if prof.groups else "")
             + f": {fusion_rounds(prof)} round(s) a step"]
    if prof.powersgd_step_s:
        lines.append(f"  powersgd: step {ms(prof.powersgd_step_s[1])} with its reduce, "
                     f"{prof.powersgd_bytes:,} bytes in {POWERSGD_ROUNDS} rounds")
    gamma = prof.sum_s_per_byte
    lines.append(f"  gamma (the sum): {1e9 * gamma.get('float32', 0):.3f} ns/B float32, "
                 f"{1e9 * gamma.get('float16', 0):.3f} ns/B float16")
    for what in (link, *([loopback] if loopback else [])):
        lines.append(f"  {what.name}: alpha {1e6 * what.latency_s:.0f} us, beta "
                     f"{1e9 * what.seconds_per_byte:.3f} ns/B ({what.gbit:.3g} Gbit/s)")
    lines.append(f"  point: {POINT_OVERLAP:.0%} of the possible overlap with backward")
    return lines


def explain(prof: Profile, p: int, compression: str, link: Link, measured: bool) -> list[str]:
    """One row's arithmetic, as ``forecast`` computes it."""
    f = forecast(prof, p, compression, link, measured)
    head = f"np {p} {compression}:"
    if p <= 1:
        return [f"{head} no allreduce; {prof.batch_size} / {1e3 * f.compute_s:.2f} ms = "
                f"{f.images_per_s[1]:,.0f} images/s"]
    psgd = compression == "powersgd"
    _, rounds, dtype = traffic(prof, compression)
    ring = allreduce_seconds(p, f.wire_bytes, link, rounds)
    red = _reduce_seconds(prof, p, f.wire_bytes, dtype, measured)
    hide = ("held in the step measured with them" if psgd and held_in_step(prof, p) else
            "all of T, after bwd, + cycles" if psgd else
            f"T - {POINT_OVERLAP:g} min(T, bwd) + cycle")
    return [f"{head} T = 2x{p - 1}x{rounds}x{1e6 * link.latency_s:.0f} us + 2x{p - 1}/{p}x"
            f"{f.wire_bytes / 1e6:.3f} MB x {1e9 * link.seconds_per_byte:.3f} ns/B",
            "  " + (f"+ {1e3 * red:.2f} ms sum " if red else "") + f"= {1e3 * (ring + red):.2f} "
            f"ms; exposed {1e3 * f.exposed_s:.2f} ms ({hide})",
            f"  step {1e3 * f.compute_s:.2f} + {1e3 * f.exposed_s:.2f} ms;"
            f" {prof.batch_size} x {p} / step = {f.images_per_s[1]:,.0f} images/s (band "
            f"{f.images_per_s[0]:,.0f}-{f.images_per_s[2]:,.0f})"]
