"""The forecast's cost model (hvdtrain/launcher/costmodel.py) against cases worked out by hand."""

from __future__ import annotations

import pytest

from hvdtrain.launcher.costmodel import (
    Forecast,
    Link,
    Profile,
    allreduce_seconds,
    explain,
    fit_link,
    forecast,
    fusion_rounds,
    parse_link,
    recommend,
    wire_seconds,
)

GBIT = Link("1gbit", 1.0, 50e-6)


def test_ring_allreduce_by_hand() -> None:
    n = 4.9e6  # bytes: the width-64 model's fp32 gradient
    assert allreduce_seconds(1, n, GBIT) == 0.0  # one rank sends nothing
    # p = 2: 2 (p - 1) = 2 latencies, and 2 (p - 1) / p = 1 gradient's bytes at 8 ns a byte
    assert allreduce_seconds(2, n, GBIT) == pytest.approx(2 * 50e-6 + 4.9e6 * 8e-9)
    # p = 8: 14 latencies and 1.75 gradients
    assert allreduce_seconds(8, n, GBIT) == pytest.approx(14 * 50e-6 + 1.75 * 4.9e6 * 8e-9)
    # fp16 halves the bytes, not the latency; PowerSGD's two rounds pay it twice
    assert allreduce_seconds(2, n / 2, GBIT) == pytest.approx(2 * 50e-6 + 2.45e6 * 8e-9)
    assert allreduce_seconds(2, 1.4e5, GBIT, rounds=2) == pytest.approx(4 * 50e-6 + 1.4e5 * 8e-9)


def test_links_named_and_numeric() -> None:
    assert parse_link("1gbit") == GBIT
    assert parse_link("100MBIT").seconds_per_byte == pytest.approx(80e-9)
    assert parse_link("25gbit") == Link("25gbit", 25.0, 20e-6)
    assert parse_link("2.5") == Link("2.5 Gbit/s", 2.5, 20e-6)
    for bad in ("fast", "0", "-1", "1e99", "", "gbit"):
        with pytest.raises(ValueError, match="give 100mbit, 1gbit, 10gbit, 25gbit, 100gbit, or "
                                             "Gbit/s as a number"):
            parse_link(bad)


# backward 20 ms of a 32 ms step; 1M gradient elements in 10 tensors; PowerSGD's 100 kB
PROF = Profile(forward_s=0.010, backward_s=0.020, update_s=0.002, step_s=(0.030, 0.032, 0.036),
               powersgd_step_s=(0.033, 0.035, 0.040),
               sum_s_per_byte={"float32": 1e-10, "float16": 2e-10}, params=1_000_000,
               tensors=10, powersgd_bytes=100_000, batch_size=32, threads=2)


def test_one_rank_is_the_compute_alone() -> None:
    f = forecast(PROF, 1, "none", GBIT, measured=False)
    assert f.images_per_s == pytest.approx((32 / 0.036, 32 / 0.032, 32 / 0.030))
    assert (f.efficiency, f.exposed_s, f.wire_bytes) == (pytest.approx(1.0), 0.0, 4_000_000)


def test_fusion_rounds_one_per_cycle_of_backward_at_most_one_per_tensor() -> None:
    assert fusion_rounds(PROF) == 10  # 20 cycles of 1 ms, but only 10 tensors
    assert fusion_rounds(Profile(**{**PROF.__dict__, "backward_s": 0.0025})) == 3
    assert fusion_rounds(Profile(**{**PROF.__dict__, "backward_s": 0.0})) == 1


def test_grouped_gradients_are_one_allreduce_a_group() -> None:
    """hvdtrain groups gradients (horovod.group_mb): 3 groups are 3 rounds, not 10 tensors'."""
    grouped = Profile(**{**PROF.__dict__, "groups": 3})
    assert fusion_rounds(grouped) == 3
    f = forecast(grouped, 2, "none", GBIT, measured=False)
    comm = 3 * 2 * 50e-6 + 4e6 * 8e-9 + 0.5 * 4e6 * 1e-10
    assert f.exposed_s == pytest.approx(comm - 0.25 * 0.020 + 0.0005)
    # more groups than cycles backward lasts: the cycles bound it
    assert fusion_rounds(Profile(**{**PROF.__dict__, "groups": 50})) == 20


def test_group_lengths_match_the_optimizers_rule() -> None:
    """hvdtrain/gradient_groups.py: >= mb MB of float32 a group, last parameter first."""
    from hvdtrain.gradient_groups import group_lengths

    mb = 2**20 // 4  # elements in 1 MB of float32
    assert group_lengths([mb, 10, mb // 2, mb // 2, 7], 1.0) == [3, 2]
    assert group_lengths([10, 20], 1.0) == [2]
    assert group_lengths([10, 20], 0) is None and group_lengths([], 1.0) is None


def test_two_ranks_none_by_hand() -> None:
    f = forecast(PROF, 2, "none", GBIT, measured=False)
    # 4 MB of fp32; 10 rounds x 2 latencies + 1 gradient at 8 ns/B = 33 ms; sum 0.5 x 4 MB x 0.1 ns
    comm = 10 * 2 * 50e-6 + 4e6 * 8e-9 + 0.5 * 4e6 * 1e-10
    assert comm == pytest.approx(0.0332)
    low = comm - 0.020  # all of backward's 20 ms hides it
    point = comm - 0.25 * 0.020 + 0.0005  # a quarter hidden, half a cycle of waiting
    high = comm + 0.001  # nothing hidden, a whole cycle
    assert f.images_per_s == pytest.approx((64 / (0.036 + high), 64 / (0.032 + point),
                                            64 / (0.030 + low)))
    assert f.exposed_s == pytest.approx(point) and f.compute_s == 0.032
    assert f.efficiency == pytest.approx((64 / (0.032 + point)) / (2 * 32 / 0.032))


def test_eight_ranks_fp16_halves_the_bytes_not_the_latency() -> None:
    f = forecast(PROF, 8, "fp16", GBIT, measured=False)
    comm = 10 * 14 * 50e-6 + 1.75 * 2e6 * 8e-9 + 7 / 8 * 2e6 * 2e-10  # 2 bytes an element
    assert f.wire_bytes == 2_000_000
    assert f.exposed_s == pytest.approx(comm - 0.25 * 0.020 + 0.0005)
    assert f.images_per_s[1] == pytest.approx(256 / (0.032 + f.exposed_s))
    # a measured link's beta holds the sum already: no gamma term
    m = forecast(PROF, 8, "fp16", GBIT, measured=True)
    assert m.exposed_s == pytest.approx(comm - 7 / 8 * 2e6 * 2e-10 - 0.005 + 0.0005)


def test_powersgd_three_rounds_after_backward_nothing_hidden() -> None:
    f = forecast(PROF, 2, "powersgd", GBIT, measured=False)
    comm = 3 * 2 * 50e-6 + 1e5 * 8e-9 + 0.5 * 1e5 * 1e-10
    assert f.exposed_s == pytest.approx(comm + 0.0015)  # 3 cycles, half each on average
    assert f.compute_s == 0.035  # its measured step holds its own arithmetic
    assert f.images_per_s == pytest.approx((64 / (0.040 + comm + 0.003), 64 / (0.035 + comm + 0.0015),
                                            64 / (0.033 + comm)))
    # two ranks of one host: the step was measured with its allreduces between them (lockstep)
    shared = forecast(Profile(**{**PROF.__dict__, "ranks": 2}), 2, "powersgd", GBIT, False)
    assert shared.exposed_s == 0.0 and shared.images_per_s == pytest.approx(
        (64 / 0.040, 64 / 0.035, 64 / 0.033))
    with pytest.raises(ValueError, match="powersgd factors no layer"):
        forecast(Profile(**{**PROF.__dict__, "powersgd_bytes": None}), 2, "powersgd", GBIT, False)


def test_a_powersgd_step_measured_faster_than_the_plain_one_is_noise() -> None:
    """PowerSGD's step does what the plain one does and more: never less compute than it."""
    quick = Profile(**{**PROF.__dict__, "powersgd_step_s": (0.025, 0.031, 0.040)})
    f = forecast(quick, 2, "powersgd", GBIT, measured=False)
    assert f.compute_s == 0.032
    assert f.images_per_s[2] == pytest.approx(64 / (0.030 + 3 * 2 * 50e-6 + 1e5 * 8e-9
                                                    + 0.5 * 1e5 * 1e-10))


def test_a_shapers_burst_only_speeds_the_fast_end() -> None:
    shaped = Link("tbf", 1.0, 50e-6, burst_bytes=262144)
    fast, slow = wire_seconds(2, 1e6, shaped, rounds=1, idle_s=1.0)
    assert slow == pytest.approx(2 * 50e-6 + 1e6 * 8e-9)
    assert fast == pytest.approx(slow - 262144 * 8e-9)
    # an idle gap too short to refill the bucket lets through only what it refilled
    assert wire_seconds(2, 1e6, shaped, 1, idle_s=1e-3)[0] == pytest.approx(slow - 1e-3)
    assert wire_seconds(1, 1e6, shaped, 1, idle_s=1.0) == (0.0, 0.0)


def test_fit_link_recovers_alpha_and_beta() -> None:
    sizes = [65536, 262144, 1 << 20, 4 << 20]
    link = fit_link(sizes, [2 * 1e-4 + n * 8e-9 for n in sizes])
    assert (link.gbit, link.latency_s, link.name) == (pytest.approx(1.0), pytest.approx(1e-4),
                                                      "measured")
    flat = fit_link(sizes, [1e-3] * 4)  # no slope (noise): clamped, never negative or infinite
    assert flat.gbit == pytest.approx(8e4) and flat.latency_s == pytest.approx(5e-4, rel=1e-3)


def test_recommend_the_simplest_within_three_percent() -> None:
    def rows(*rates: float) -> list[Forecast]:
        return [Forecast(2, c, (r, r, r), 1.0, 0.0, 0.0, 0) for c, r in
                zip(("none", "fp16", "powersgd"), rates)]

    assert recommend(rows(100, 102, 101)) == "none"
    assert recommend(rows(100, 110, 108)) == "fp16"
    assert recommend(rows(100, 104, 120)) == "powersgd"


def test_explain_prints_the_arithmetic_it_used() -> None:
    lines = explain(PROF, 2, "none", GBIT, measured=False)
    assert lines[0] == "np 2 none: T = 2x1x10x50 us + 2x1/2x4.000 MB x 8.000 ns/B"
    assert lines[1] == ("  + 0.20 ms sum = 33.20 ms; exposed 28.70 ms (T - 0.25 min(T, bwd) "
                        "+ cycle)")
    f = forecast(PROF, 2, "none", GBIT, measured=False)
    assert lines[2].endswith(f"= {f.images_per_s[1]:,.0f} images/s (band "
                             f"{f.images_per_s[0]:,.0f}-{f.images_per_s[2]:,.0f})")
    assert all(len(line) <= 80 for p in (1, 2, 64) for c in ("none", "fp16", "powersgd")
               for line in explain(PROF, p, c, GBIT, False))
