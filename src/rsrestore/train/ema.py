"""Exponential moving average of a model's weights."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Exponential moving average of a model's parameters: ``shadow <- decay * shadow + (1 - decay) * param``
    after every step (Polyak & Juditsky 1992); buffers (e.g. normalisation statistics) are copied as they are.

    ``module`` is a frozen copy of the model in eval mode holding the averaged weights.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = _clone_module(model)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for shadow, p in zip(self.module.parameters(), model.parameters()):
            shadow.lerp_(p.detach(), 1.0 - self.decay)
        for shadow, b in zip(self.module.buffers(), model.buffers()):
            shadow.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)


def _clone_module(model: nn.Module) -> nn.Module:
    clone = copy.deepcopy(model).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone

