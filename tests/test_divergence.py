"""The launcher's divergence judge (launcher/divergence.py), on eval histories like real runs'."""

from __future__ import annotations

import math

import pytest

from hvdtrain.launcher.divergence import Watch, judge

CHANCE3 = "accuracy 33.3% (chance for 3 classes: 33.3%)"


@pytest.mark.parametrize(("history", "classes", "said"), [
    # issue 26: imagefolder-resnet's old defaults on 3 classes x 60 images
    ([(1, 19.0, 1 / 3), (2, 5854.0, 1 / 3)], 3,
     f"the eval loss rose from 19 (epoch 1) to 5,854 (epoch 2); {CHANCE3}"),
    ([(1, 30.0, 0.1), (2, 25.0, 0.11)], 10,  # never better than a uniform guess, by far
     "the eval loss is 25 at epoch 2 (a uniform guess scores 2.3); accuracy 11.0% (chance for 10 "
     "classes: 10.0%)"),
    ([(1, 1.0, 0.5), (2, math.nan, math.nan)], 3,
     "the eval loss is nan at epoch 2; accuracy nan% (chance for 3 classes: 33.3%)"),
    ([(1, 19.0, 1 / 3)], 3, None),  # one evaluation is never enough
    ([(1, 1.0, 0.5), (2, 0.6, 0.8)], 3, None),  # learning
    ([(1, 0.1, 0.95), (2, 1.5, 0.9)], 3, None),  # overfitting, but far from chance
    ([(1, 0.05, 0.30), (2, 0.6, 0.30)], 3, None),  # 12x, but below 2 ln(C): noise
    ([(1, 30.0, 0.1), (2, 2.0, 0.1)], 10, None),  # recovering
    ([(1, 19.0, 0.5), (2, 5854.0, 0.5)], 1, None),  # one class: no chance level
])
def test_divergence_is_judged_from_eval_loss_and_accuracy(history, classes, said) -> None:
    assert judge(history, classes) == said


def test_the_watch_warns_once_with_the_fix_and_reads_events_values() -> None:
    watch = Watch(base_lr=0.05, peak_lr=0.1, np=2, warmup_epochs=2)
    watch.start(3)
    assert watch.epoch(1, 19.0, 1 / 3) is None
    assert watch.epoch(2, None, None) is None  # not evaluated this epoch
    said = watch.epoch(3, "inf", 1 / 3)  # a non-finite loss arrives as a string
    assert said == (
        f"training is diverging: the eval loss is inf at epoch 3; {CHANCE3}. Likely fix: the "
        "learning rate is likely too high for this model and data: lower optimizer.base_lr (now "
        "0.05 per worker, peak 0.1 at np 2), e.g. optimizer.base_lr=0.01, or raise "
        "optimizer.warmup_epochs (now 2)")
    assert watch.epoch(4, 50000.0, 1 / 3) is None  # said once
