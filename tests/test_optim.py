"""The worker's per-step gradient check and the gradient groups it allreduces (no horovodrun: these
are pure functions of the model; tests/test_horovodrun.py runs the grouped allreduce itself)."""

from __future__ import annotations

import math

import pytest
import torch

from hvdtrain.recipe import load_recipe
from hvdtrain.worker.models import build_model
from hvdtrain.worker.optim import FiniteCheck, gradient_groups


def model_with_grads(*values: float) -> torch.nn.Module:
    model = torch.nn.Linear(3, 2)
    model.weight.grad = torch.full((2, 3), 0.5)
    model.bias.grad = torch.tensor(values, dtype=torch.float32)
    return model


@pytest.mark.parametrize(("values", "finite"), [((1.0, -2.0), True), ((math.inf, 0.0), False),
                                                ((0.0, -math.inf), False), ((math.nan, 1.0), False)])
def test_finite_check_finds_inf_and_nan_and_leaves_the_gradients_as_they_were(values, finite):
    model = model_with_grads(*values)
    before = [p.grad.clone() for p in model.parameters()]
    check = FiniteCheck(list(model.parameters()))
    assert check.fused
    assert check() is finite
    assert check() is finite  # the flag is reset between steps
    for b, p in zip(before, model.parameters(), strict=True):
        assert torch.equal(b.nan_to_num(), p.grad.nan_to_num())


def test_finite_check_of_mixed_dtypes_uses_the_norm_and_of_no_gradients_is_true():
    model = model_with_grads(1.0, math.nan)
    model.weight.data = model.weight.data.double()
    model.weight.grad = torch.zeros(2, 3, dtype=torch.float64)
    check = FiniteCheck(list(model.parameters()))
    assert not check.fused and check() is False
    assert FiniteCheck(list(torch.nn.Linear(2, 2).parameters()))() is True  # before any backward


def test_gradient_groups_fill_about_group_mb_last_layer_first_and_cover_every_parameter():
    recipe = load_recipe("synthetic-bench", ["model.width=64"]).recipe
    model = build_model(recipe.model, (3, 32, 32), 10)
    params = list(model.parameters())
    groups = gradient_groups(model, 1.0)
    flat = [p for g in groups for p in g]
    assert [id(p) for p in flat] == [id(p) for p in reversed(params)]  # each once, backward order
    sizes = [sum(p.numel() * 4 for p in g) for g in groups]
    assert all(s >= 2**20 for s in sizes[:-1])  # every group but the last holds >= 1 MB ...
    for g, s in zip(groups, sizes, strict=True):  # ... and closes as soon as it does
        assert s - g[-1].numel() * 4 < 2**20
    assert len(groups) == 4  # 2.4, 1.2, 1.1 and 0.15 MB
    assert gradient_groups(model, 0) is None  # 0: Horovod's one allreduce per tensor
    assert len(gradient_groups(model, 1000)) == 1
