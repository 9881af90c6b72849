"""The forecast's cost model (hvdtrain/launcher/costmodel.py) against cases worked out by hand."""

from __future__ import annotations

import pytest

from hvdtrain.launcher.costmodel import (
    Link,
    allreduce_seconds,
    images_per_s,
    parse_link,
    step,
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


def test_the_step_band_and_the_images_per_second() -> None:
    s = step(compute_s=0.030, comm_s=0.040, overlaps=True)  # backward: 20 ms of the 30
    assert (s.exposed_low_s, s.exposed_point_s, s.exposed_high_s) == pytest.approx(
        (0.020, 0.030, 0.040))
    assert images_per_s(32, 2, s) == pytest.approx((64 / 0.070, 64 / 0.060, 64 / 0.050))
    small = step(compute_s=0.030, comm_s=0.005, overlaps=True)  # all of it hidden at best
    assert small.seconds == pytest.approx((0.030, 0.0325, 0.035))
    after = step(compute_s=0.030, comm_s=0.005, overlaps=False)  # PowerSGD: after backward
    assert after.seconds == pytest.approx((0.035, 0.035, 0.035))
    alone = step(compute_s=0.030, comm_s=0.0, overlaps=True)  # p = 1: the compute alone
    assert images_per_s(32, 1, alone) == pytest.approx((32 / 0.03,) * 3)
