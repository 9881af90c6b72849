"""The LR schedule against Horovod's ImageNet example formula and hand-computed values."""

from __future__ import annotations

import math

import pytest

from hvdtrain.schedule import LRConfig, lr_at, peak_lr, warmup_steps


def horovod_example_lr(base_lr: float, size: int, batches_per_allreduce: int, warmup_epochs: float,
                       epoch: int, batch_idx: int, steps_per_epoch: int) -> float:
    """Verbatim logic of adjust_learning_rate() in examples/pytorch/pytorch_imagenet_resnet50.py."""
    if epoch < warmup_epochs:
        epoch += float(batch_idx + 1) / steps_per_epoch
        lr_adj = 1. / size * (epoch * (size - 1) / warmup_epochs + 1)
    elif epoch < 30:
        lr_adj = 1.
    elif epoch < 60:
        lr_adj = 1e-1
    elif epoch < 80:
        lr_adj = 1e-2
    else:
        lr_adj = 1e-3
    return base_lr * size * batches_per_allreduce * lr_adj


@pytest.mark.parametrize("size", [1, 2, 4, 8])
@pytest.mark.parametrize("bpa", [1, 2])
def test_matches_horovods_imagenet_example_step_by_step(size: int, bpa: int) -> None:
    cfg = LRConfig(base_lr=0.0125, warmup_epochs=5, decay="step", decay_epochs=(30, 60, 80),
                   decay_factor=0.1, epochs=90, backward_passes_per_step=bpa)
    spe = 7
    for epoch in range(90):
        for b in range(spe):
            ours = lr_at(epoch * spe + b, spe, size, cfg)
            theirs = horovod_example_lr(0.0125, size, bpa, 5, epoch, b, spe)
            assert ours == pytest.approx(theirs, rel=1e-12), (epoch, b)


def test_hand_computed_warmup_values() -> None:
    # base 0.1 per worker, 4 workers, 2 warmup epochs of 10 steps: peak 0.4, +0.015 per step.
    cfg = LRConfig(base_lr=0.1, warmup_epochs=2, epochs=10)
    assert peak_lr(cfg, 4) == pytest.approx(0.4)
    assert lr_at(0, 10, 4, cfg) == pytest.approx(0.1 + 0.3 * 1 / 20)  # 0.115
    assert lr_at(9, 10, 4, cfg) == pytest.approx(0.25)  # half way
    assert lr_at(18, 10, 4, cfg) == pytest.approx(0.385)
    assert lr_at(19, 10, 4, cfg) == pytest.approx(0.4)  # warmup done, no decay
    assert lr_at(99, 10, 4, cfg) == pytest.approx(0.4)
    assert warmup_steps(cfg, 10) == 20


def test_cosine_decay_after_warmup() -> None:
    cfg = LRConfig(base_lr=0.1, warmup_epochs=1, decay="cosine", epochs=5)
    spe, size = 4, 2
    assert lr_at(3, spe, size, cfg) == pytest.approx(0.2)  # end of warmup = peak
    # epoch_f = 3.0 is half way through the 4 decay epochs: 0.5 * (1 + cos(pi/2)) * peak
    assert lr_at(11, spe, size, cfg) == pytest.approx(0.1)
    assert lr_at(19, spe, size, cfg) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(7, spe, size, cfg) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_no_scaling_and_no_warmup() -> None:
    cfg = LRConfig(base_lr=0.05, scaling="none", warmup_epochs=0)
    assert [lr_at(s, 5, 8, cfg) for s in (0, 4, 40)] == [0.05, 0.05, 0.05]
    assert warmup_steps(cfg, 5) == 0
    with pytest.raises(ValueError):
        lr_at(0, 0, 2, cfg)
