"""The worker's per-step gradient check and the gradient groups it allreduces (no horovodrun: these
are pure functions of the model; tests/test_horovodrun.py runs the grouped allreduce itself)."""

from __future__ import annotations

import math
import os

import pytest
import torch

from hvdtrain.recipe_files import load_recipe
from hvdtrain.worker.models import build_model
from hvdtrain.worker.optim import FiniteCheck, can_fuse, gradient_groups, is_fused, make_optimizer


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


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_fused_optimizer_makes_the_same_updates_as_the_per_parameter_loop(name):
    recipe = load_recipe("digits-cnn", [f"optimizer.name={name}"]).recipe
    torch.manual_seed(0)
    models = [build_model(recipe.model, (1, 8, 8), 10) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    start = [p.detach().clone() for p in models[0].parameters()]
    for model in models:
        model.eval()  # no dropout: both see the same function
    loop = load_recipe("digits-cnn", [f"optimizer.name={name}", "optimizer.fused=false"]).recipe
    optimizers = [make_optimizer(models[0], recipe.optimizer),
                  make_optimizer(models[1], loop.optimizer)]
    assert [is_fused(o) for o in optimizers] == [True, False]
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    for _ in range(3):
        for model, opt in zip(models, optimizers, strict=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for a, b, before in zip(models[0].parameters(), models[1].parameters(), start, strict=True):
        assert not torch.equal(a, before)  # trained
        # rounding apart (Adam divides by sqrt(v) + eps: an element whose gradient is ~0 may move
        # by up to ~1e-3 of the LR differently)
        atol = 1e-6 if name == "sgd" else 1e-3 * recipe.optimizer.base_lr
        torch.testing.assert_close(a, b, rtol=1e-5, atol=atol)


def test_models_the_fused_kernel_cannot_take_get_the_per_parameter_loop():
    recipe = load_recipe("digits-cnn").recipe
    assert can_fuse(build_model(recipe.model, (1, 8, 8), 10))
    sparse = torch.nn.Sequential(torch.nn.Embedding(10, 4, sparse=True), torch.nn.Linear(4, 2))
    assert not can_fuse(sparse) and not is_fused(make_optimizer(sparse, recipe.optimizer))
    integer = torch.nn.Linear(2, 2)
    integer.register_parameter("count", torch.nn.Parameter(torch.zeros(1, dtype=torch.int64),
                                                           requires_grad=False))
    assert can_fuse(integer)  # parameters that are not trained do not count
    assert not can_fuse(torch.nn.ReLU())  # nothing to train


def test_finite_check_after_a_non_finite_step_sees_finite_gradients_again():
    model = model_with_grads(math.inf, 0.0)
    check = FiniteCheck(list(model.parameters()))
    assert check() is False
    for p in model.parameters():
        p.grad.zero_()
    assert check() is True  # the flag the kernel set was cleared after the hit


def test_the_loop_skips_synchronize_only_where_horovod_hooked_no_gradient():
    """np=1 (fixed mode): Horovod hooks no gradient, so there is nothing to wait for; elastic
    mode hooks them at any size (np=2 runs, where they are hooked too, are tests/test_parity.py)."""
    import subprocess
    import sys

    script = ("import os, torch, horovod.torch as hvd\n"
              "from hvdtrain.worker.optim import reduces_gradients\n"
              "hvd.init()\n"
              "def wrapped():\n"
              "    m = torch.nn.Linear(2, 2)\n"
              "    return hvd.DistributedOptimizer(torch.optim.SGD(m.parameters(), lr=0.1),\n"
              "                                    named_parameters=m.named_parameters())\n"
              "plain = reduces_gradients(wrapped())\n"
              "os.environ['HOROVOD_ELASTIC'] = '1'\n"
              "print(hvd.size(), plain, reduces_gradients(wrapped()))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env={k: v for k, v in os.environ.items()
                                           if not k.startswith("HOROVOD_")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "False", "True"]
