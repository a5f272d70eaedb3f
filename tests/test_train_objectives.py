"""Objectives: a second objective is a function added to OBJECTIVES and trains through the unchanged loop; the config
checks the objective's name and parameters."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from _train_data import base_config, make_pairs

from rsrestore.models import registry
from rsrestore.train import OBJECTIVES, ConfigError, ObjectiveContext, StepOutput, parse_config, train
from rsrestore.train.objectives import call_model, objective_params


@dataclass
class RefinerConfig:
    width: int = 8


class Refiner(nn.Module):
    """Stage 2 of a two-stage restorer: refines a first estimate, seeing it next to the degraded input (6 bands)."""

    def __init__(self, cfg: RefinerConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or RefinerConfig()
        self.body = nn.Sequential(nn.Conv2d(6, cfg.width, 3, padding=1), nn.ReLU(), nn.Conv2d(cfg.width, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :3] + self.body(x)


def frozen_stage1(gain: float) -> nn.Module:
    """A fixed first stage standing in for trained stage-1 weights: a per-band gain and offset, no gradients."""
    conv = nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1) * gain)
        conv.bias.fill_(-0.3)
    return conv.requires_grad_(False).eval()


CALLS: list[tuple[bool, bool]] = []


def refine_on_stage1(model: nn.Module, batch, ctx: ObjectiveContext, *, gain: float = 1.0) -> StepOutput:
    """Train the model on top of a frozen stage 1 built once per run (kept in ctx.cache)."""
    CALLS.append((ctx.training, ctx.generator is not None))
    stage1 = ctx.cache.get("stage1")
    if stage1 is None:
        stage1 = ctx.cache["stage1"] = frozen_stage1(gain).to(batch["input"].device)
    with torch.no_grad():
        first = stage1(batch["input"])
    output = call_model(model, torch.cat([first, batch["input"]], 1), batch, ctx)
    total, parts = ctx.loss(output, batch)
    return StepOutput(total, {"loss_stage2_l1": parts["l1"]}, output)


@pytest.fixture
def refiner(monkeypatch):
    spec = registry.ModelSpec(name="refiner", task="haze", summary="test", classes=lambda: (Refiner, RefinerConfig))
    monkeypatch.setitem(registry.MODELS, "refiner", spec)
    monkeypatch.setitem(OBJECTIVES, "refine_on_stage1", refine_on_stage1)
    CALLS.clear()


def test_second_objective_trains_through_the_loop(tmp_path, refiner):
    pairs = make_pairs(tmp_path / "pairs")
    data = base_config(pairs, tmp_path / "run", steps=40, val_every=20, ema=0.5)
    data["model"] = {"name": "refiner", "config": {"width": 8}}
    data["data"]["val"] = {"kind": "paired", "root": str(pairs)}
    data["objective"] = {"name": "refine_on_stage1", "params": {"gain": 1.5}}
    result = train(parse_config(data))
    assert result.finished and result.step == 40

    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    losses = [float(r["loss"]) for r in rows]
    # The objective's own log column is written, and the loss falls.
    assert [float(r["loss_stage2_l1"]) for r in rows] == pytest.approx(losses, rel=1e-6)
    assert np.mean(losses[-8:]) < 0.3 * losses[0], losses[::5]
    # Training steps drew from the global RNG; validations got a generator (2 validations of 8 images, batch 1).
    assert CALLS.count((True, False)) == 40 and CALLS.count((False, True)) == 16
    assert result.val_scores["val_psnr"] > 20.0
    assert json.loads((tmp_path / "run" / "final.json").read_text())["train_config"]["objective"] == {
        "name": "refine_on_stage1", "params": {"gain": 1.5}}


def test_objective_name_and_params_are_checked(tmp_path, refiner):
    data = base_config(tmp_path / "pairs", tmp_path / "run")
    assert parse_config(data).objective.name == "supervised"
    assert objective_params("refine_on_stage1") == ["gain"] and objective_params("supervised") == []
    data["objective"] = {"name": "diffusion"}
    with pytest.raises(ConfigError, match="objective.name.*'refine_on_stage1', 'supervised'"):
        parse_config(data)
    data["objective"] = {"name": "refine_on_stage1", "params": {"gian": 2}}
    with pytest.raises(ConfigError, match="objective.params.gian.*accepts: gain"):
        parse_config(data)
    data["objective"] = {"name": "supervised", "params": {"gain": 2}}
    with pytest.raises(ConfigError, match="objective 'supervised' accepts: no parameters"):
        parse_config(data)
