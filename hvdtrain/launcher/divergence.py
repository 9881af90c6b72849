"""Divergence, judged from rank 0's epoch events in the launcher: an eval loss that rose by an
order of magnitude, or sits far above a uniform guess's, with accuracy near chance. Said once,
with the likely fix (a from-scratch ResNet at the linear-scaling peak LR on a few hundred images:
eval loss 19 -> 5,854 -> 36,567 and chance accuracy after 30 epochs, issue 26)."""

from __future__ import annotations

import math

RISE = 10.0  # "by an order of magnitude": the latest eval loss over the lowest one so far
ABOVE_UNIFORM = 10.0  # a loss this many times ln(C) is far worse than guessing uniformly
NEAR_CHANCE = 1.5  # accuracy at most this many times 1/C


def _number(x: object) -> float:
    """An event's loss: a float, or the string "nan"/"inf" a non-finite value travels as."""
    try:
        return float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def judge(history: list[tuple[int, float, float]], num_classes: int) -> str | None:
    """What shows divergence in ``history`` ((epoch, eval loss, eval accuracy) of each evaluated
    epoch, oldest first), or None. Needs two evaluations, so one noisy epoch never warns."""
    if len(history) < 2 or num_classes < 2:
        return None
    epoch, loss, acc = history[-1]
    chance, uniform = 1 / num_classes, math.log(num_classes)
    at_chance = not acc > NEAR_CHANCE * chance  # (NaN accuracy counts as at chance)
    state = f"accuracy {acc:.1%} (chance for {num_classes} classes: {chance:.1%})"
    if not math.isfinite(loss):
        return f"the eval loss is {loss} at epoch {epoch}; {state}"
    if not at_chance:
        return None
    best_epoch, best, _ = min(history[:-1], key=lambda h: h[1] if math.isfinite(h[1]) else math.inf)
    if math.isfinite(best) and loss >= RISE * best and loss >= 2 * uniform:
        return (f"the eval loss rose from {best:,.4g} (epoch {best_epoch}) to {loss:,.4g} (epoch "
                f"{epoch}); {state}")
    previous = history[-2][1]
    if min(loss, previous) >= ABOVE_UNIFORM * uniform:
        return (f"the eval loss is {loss:,.4g} at epoch {epoch} (a uniform guess scores "
                f"{uniform:.3g}); {state}")
    return None


def advice(base_lr: float, peak_lr: float, np: int, warmup_epochs: float) -> str:
    """The likely fix, with the run's own numbers."""
    return (f"the learning rate is likely too high for this model and data: lower "
            f"optimizer.base_lr (now {base_lr:g} per worker, peak {peak_lr:g} at np {np}), e.g. "
            f"optimizer.base_lr={base_lr / 5:g}, or raise optimizer.warmup_epochs (now "
            f"{warmup_epochs:g})")


class Watch:
    """Feeds ``judge`` the run's epoch events; returns the warning once."""

    def __init__(self, base_lr: float, peak_lr: float, np: int, warmup_epochs: float) -> None:
        self.fix = advice(base_lr, peak_lr, np, warmup_epochs)
        self.num_classes = 0
        self.history: list[tuple[int, float, float]] = []
        self.said: str | None = None

    def start(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def epoch(self, epoch: int, eval_loss: object, eval_acc: object) -> str | None:
        """The warning, the first time the history shows divergence."""
        if eval_loss is None or self.said is not None:
            return None
        self.history.append((epoch, _number(eval_loss), _number(eval_acc)))
        found = judge(self.history, self.num_classes)
        if found is None:
            return None
        self.said = f"training is diverging: {found}. Likely fix: {self.fix}"
        return self.said
