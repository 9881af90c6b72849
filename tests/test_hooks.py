"""Fault injection is a set of hooks at named points: no-ops in production, one action at one point
under HVDTRAIN_FAULT, and never a change to the recipe."""

from __future__ import annotations

import json

import pytest
import torch

from hvdtrain.recipe_files import load_recipe
from hvdtrain.worker.faults import ENV, Fault, FaultHooks, Hooks, from_env
from hvdtrain.worker.models import build_model


def small_model() -> torch.nn.Module:
    return build_model(load_recipe("digits-cnn").recipe.model, (1, 8, 8), 10)


def test_production_hooks_do_nothing(monkeypatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    hooks = from_env()
    assert type(hooks) is Hooks
    model, loss = small_model(), torch.tensor(1.5)
    assert hooks.model_built(0, model) is model
    assert hooks.loss(0, 1, 1, loss) is loss


def test_fault_from_the_environment_fires_only_at_its_point(monkeypatch) -> None:
    monkeypatch.setenv(ENV, json.dumps({"action": "raise", "rank": 1, "epoch": 2}))
    hooks = from_env()
    assert isinstance(hooks, FaultHooks) and hooks.fault == Fault("raise", 1, 2)
    hooks.epoch_start(0, 2)  # another rank
    hooks.epoch_start(1, 1)  # another epoch
    with pytest.raises(RuntimeError, match=r"^injected fault: rank 1 raised at epoch 2$"):
        hooks.epoch_start(1, 2)


def test_inf_grad_changes_the_loss_of_one_step() -> None:
    hooks = FaultHooks(Fault("inf_grad", rank=1, epoch=1, step=4))
    assert hooks.loss(1, 1, 3, torch.tensor(2.0)).item() == 2.0
    assert hooks.loss(1, 1, 4, torch.tensor(2.0)).item() == float("inf")


def test_model_shape_changes_the_built_model_not_the_recipe() -> None:
    recipe = load_recipe("digits-cnn").recipe
    before = recipe.model_dump()
    hooks = FaultHooks(Fault("model_shape", rank=1))
    same = hooks.model_built(0, small_model())
    grown = hooks.model_built(1, small_model())
    assert [p.shape for p in same.parameters()] != [p.shape for p in grown.parameters()]
    assert next(grown.parameters()).shape[0] == next(same.parameters()).shape[0] + 1
    assert recipe.model_dump() == before
