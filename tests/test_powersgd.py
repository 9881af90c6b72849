"""PowerSGD without a launch: the factorisation (``low_rank``) against numbers worked out here,
two ranks simulated by two threads averaging through a barrier; which layers are factored and the
bytes a step (hvdtrain/powersgd_layout.py, shared by the plan and the worker); bad settings. The
same code on real Horovod allreduces: test_horovodrun.py; in training: test_powersgd_run.py."""

from __future__ import annotations

import threading

import pytest
import torch

from hvdtrain.launcher.plan import Plan
from hvdtrain.powersgd_layout import describe, fallbacks, layout, wire
from hvdtrain.recipe_files import load_recipe
from hvdtrain.worker.powersgd import low_rank, orthonormal


def two_ranks(ms: list[list[torch.Tensor]], qs: list[torch.Tensor]):
    """``low_rank`` on two threads, each a rank, averaging through a barrier."""
    barrier, box, out = threading.Barrier(2), {}, [None, None]

    def average(rank: int):
        def avg(t: torch.Tensor, name: str) -> None:
            box[(name, rank)] = t.clone()
            barrier.wait()
            t.copy_((box[(name, 0)] + box[(name, 1)]) / 2)
            barrier.wait()
        return avg

    def run(rank: int) -> None:
        out[rank] = low_rank(ms[rank], [q.clone() for q in qs], average(rank))

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return out


def test_full_rank_is_exact_and_low_rank_is_the_power_iteration() -> None:
    gen = torch.Generator().manual_seed(0)
    a = [torch.randn(6, 4, generator=gen) for _ in range(2)]  # rank 0's and rank 1's gradients
    b = [torch.randn(5, 9, generator=gen) for _ in range(2)]
    mean_a, mean_b = (a[0] + a[1]) / 2, (b[0] + b[1]) / 2
    full = [orthonormal(torch.randn(4, 4, generator=gen)), orthonormal(torch.randn(9, 5,
                                                                               generator=gen))]
    outs = two_ranks([[a[0], b[0]], [a[1], b[1]]], full)
    for ps, qs in outs:  # rank = the smaller side: P Q^T is the exact average
        assert torch.allclose(ps[0] @ qs[0].t(), mean_a, atol=1e-5)
        assert torch.allclose(ps[1] @ qs[1].t(), mean_b, atol=1e-5)
    q = orthonormal(torch.randn(9, 2, generator=gen))
    (ps, qs), (ps1, qs1) = two_ranks([[b[0]], [b[1]]], [q])
    p_ref = orthonormal(mean_b @ q)  # written out: P = mean(M) Q, orthonormal; Q = mean(M)^T P
    assert torch.allclose(ps[0], p_ref, atol=1e-6)
    assert torch.allclose(qs[0], mean_b.t() @ p_ref, atol=1e-6)
    assert torch.equal(ps[0] @ qs[0].t(), ps1[0] @ qs1[0].t())  # the ranks agree bit for bit
    residual = mean_b - ps[0] @ qs[0].t()
    assert residual.abs().max() > 0.1  # rank 2 of 5: the error feedback has work to carry


def test_which_layers_are_factored_and_the_bytes_a_step() -> None:
    shapes = [("conv.weight", (64, 64, 3, 3)), ("conv.bias", (64,)), ("bn.weight", (64,)),
              ("head.weight", (10, 64)), ("tiny.weight", (3, 4))]
    layers = layout(shapes, rank=4, min_rate=2)
    assert [(l.rows, l.cols, l.compressed, l.rank_too_large) for l in layers] == [
        (64, 576, True, False), (64, 1, False, False), (64, 1, False, False),
        (10, 64, True, False), (3, 4, False, True)]
    w = wire(layers, rank=4, rest_bytes=2)
    assert w.grad_bytes == 4 * (64 * 576 + 64 + 64 + 640 + 12)
    assert w.wire_bytes == 4 * 4 * (64 + 576) + 4 * 4 * (10 + 64) + 2 * (64 + 64 + 12)
    assert describe(w, 4) == "rank 4: 11.7 kB of 150.6 kB a step (13x), 2/5 tensors factored"
    assert fallbacks(layers, 4) == ["tiny.weight (3 x 4): horovod.powersgd.rank 4 is larger "
                                    "than its smaller side, so it is sent uncompressed"]
    assert [l.compressed for l in layout(shapes, rank=4, min_rate=10)][:4] == [True, False,
                                                                                False, False]


def test_the_plan_shows_the_wire_and_each_fallback() -> None:
    from hvdtrain.launcher.prelaunch import powersgd_wire

    plan = Plan.__new__(Plan)
    plan.recipe = load_recipe("digits-cnn", ["horovod.compression=powersgd",
                                             "horovod.powersgd.rank=64"]).recipe
    plan.warnings = []
    powersgd_wire(plan, [["features.0.weight", [32, 1, 3, 3]], ["classifier.4.weight",
                                                                  [10, 128]]])
    assert plan.wire == "rank 64: 3.1 kB of 6.3 kB a step (2x), 0/2 tensors factored"
    assert plan.warnings == [
        "features.0.weight (32 x 9): horovod.powersgd.rank 64 is larger than its smaller side, "
        "so it is sent uncompressed",
        "classifier.4.weight (10 x 128): horovod.powersgd.rank 64 is larger than its smaller "
        "side, so it is sent uncompressed"]


@pytest.mark.parametrize(("override", "message"), [
    ("horovod.powersgd.rank=0", "horovod.powersgd.rank: Input should be greater than or equal "
                                "to 1"),
    ("horovod.op=adasum", "compression: powersgd works with op: average only"),
    ("horovod.gradient_predivide_factor=2", "gradient_predivide_factor applies to compression "
                                            "fp16 and none"),
])
def test_bad_powersgd_settings_are_refused_with_the_key(in_cli, override: str,
                                                        message: str) -> None:
    proc = in_cli("plan", "digits-cnn", "horovod.compression=powersgd", "launch.controller=mpi",
                  override)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_powersgd_settings_without_powersgd_warn(in_cli) -> None:
    proc = in_cli("plan", "digits-cnn", "horovod.powersgd.rank=8")
    assert "horovod.powersgd.rank applies to compression: powersgd only (compression is fp16)" \
        in proc.stdout
