"""Training objectives: what one training or validation step computes from a model and a batch.

An objective is a plain function, chosen by the ``objective.name`` of a training config from :data:`OBJECTIVES`::

    def my_objective(model, batch, ctx, *, param_a=1.0) -> StepOutput: ...

- ``model``: the network being trained, to be called on the batch (in training it may be wrapped by
  DistributedDataParallel; in validation it is the plain or the EMA module in eval mode).
- ``batch``: the collated dataset items, already on the device: ``"input"``, ``"target"`` and whatever else the
  dataset yields (``"sar"``, ``"mask"``, ``"phi"``, ``"meta"``).
- ``ctx``: an :class:`ObjectiveContext` with the loss of the config's ``loss`` section, the keyword arguments the loss
  wants passed to the model, whether this is a training or a validation step, the generator for random draws, and a
  per-run ``cache``.
- keyword-only parameters: the config's ``objective.params``, checked against the signature like ``loss.params``.

It returns a :class:`StepOutput`: the scalar ``loss`` to minimise, ``logs`` (floats, the ``log.csv`` columns the step
adds; the loop adds ``loss`` itself) and ``prediction``, the restored image on the scale of ``target``, which
validation scores with PSNR/SSIM (after clamping to [0, 1]); a training step may return ``None`` there.

The loop owns everything else: autocast around the call, the finite-loss check, backward, gradient clipping, the
optimiser and EMA updates, logging, checkpoints. So an objective never steps an optimiser or touches devices.

Randomness. In training, ``ctx.generator`` is None: draw from the global torch RNG (e.g. diffusion time steps and
noise), whose state every checkpoint saves, so ``--resume`` stays exact. In validation it is a generator seeded
the same way at every validation, so scores are comparable across steps and validating never moves the training
stream. ``torch.randn(shape, generator=ctx.generator, device=...)`` works in both cases.

Adding an objective (a diffusion loss, or stage 2 of a two-stage model on top of frozen stage-1 weights) means
writing one function here and adding it to :data:`OBJECTIVES`; frozen helpers it loads once (a stage-1 network read
from the path in its parameters) go in ``ctx.cache``, which lives as long as the run.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..losses import prediction_of

__all__ = [
    "OBJECTIVES", "Objective", "ObjectiveContext", "StepOutput", "aspdiff", "call_model", "clean_gate",
    "dsrdmpd_stage1", "dsrdmpd_stage2", "objective_params", "supervised",
]


@dataclass
class StepOutput:
    """What an objective returns: the loss to minimise, log columns, and the restored image when there is one."""

    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)
    prediction: Tensor | None = None


@dataclass
class ObjectiveContext:
    """What the loop hands an objective besides the model and the batch (see the module docstring)."""

    loss: nn.Module
    model_kwargs: dict[str, Any]
    needs_sar: bool
    training: bool = True
    generator: torch.Generator | None = None
    cache: dict[str, Any] = field(default_factory=dict)


Objective = Callable[..., StepOutput]


def call_model(model: nn.Module, x: Tensor, batch: Mapping[str, Any], ctx: ObjectiveContext) -> Any:
    """``model(x)``, with the batch's SAR image for a model that takes one and the keyword arguments the loss asks
    for (AOSR-Net returns its Phi map for the ``aosr`` loss).

    The SAR-guided models are the cloud removers: when the batch carries the cloud/shadow ``mask`` (synthetic clouds
    know theirs) it goes to the model, whose output keeps the input on the clear pixels (see
    :mod:`rsrestore.models.clear_pixels`), so that training and the loss see what restoring does; without one the
    model detects the mask itself, as it does when restoring."""
    if ctx.needs_sar:
        if batch.get("mask") is not None:
            return model(x, sar=batch.get("sar"), mask=batch["mask"], **ctx.model_kwargs)
        return model(x, sar=batch.get("sar"), **ctx.model_kwargs)
    return model(x, **ctx.model_kwargs)


def supervised(model: nn.Module, batch: Mapping[str, Any], ctx: ObjectiveContext) -> StepOutput:
    """The model restores ``batch["input"]`` in one pass; the configured loss compares its output with the batch."""
    output = call_model(model, batch["input"], batch, ctx)
    total, parts = ctx.loss(output, batch)
    logs = {f"loss_{k}": float(v) for k, v in parts.items() if k != "total"}
    return StepOutput(total, logs, prediction_of(output))


def clean_gate(model: nn.Module, batch: Mapping[str, Any], ctx: ObjectiveContext, *,
               gate_weight: float = 1.0, clean_weight: float = 1.0) -> StepOutput:
    """``supervised``, plus a classifier loss on the model's clean gate (:class:`rsrestore.models.prior.CleanGate`):
    binary cross-entropy of its logits, at every pixel, against 0 on clean items (``meta`` preset ``"clean"``, from
    a synthetic set's ``clean_fraction``) and 1 on degraded ones, times ``gate_weight``. Through the output alone
    the gate saturates before it learns to tell them apart (see the class).

    ``clean_weight`` weighs the clean items' term against the degraded ones': above 1, a scene the gate cannot place
    (a faint veil looks clean) is left closer to as it is, which costs little where the degradation is faint."""
    step = supervised(model, batch, ctx)
    gate = getattr(getattr(model, "module", model), "clean_gate", None)
    if gate is None:
        raise ValueError("objective 'clean_gate' needs a model with a clean gate (model.config.clean_gate: true)")
    if gate.logits is None:  # validation: the model runs in eval mode
        return step
    meta = batch.get("meta") or []
    if len(meta) != gate.logits.shape[0] or not all(isinstance(m, Mapping) and "preset" in m for m in meta):
        raise ValueError("objective 'clean_gate' needs each item's meta preset (a synthetic training set)")
    degraded = torch.tensor([m["preset"] != "clean" for m in meta], dtype=torch.float32, device=gate.logits.device)
    target = degraded.view(-1, 1, 1, 1).expand_as(gate.logits)
    weight = (degraded + clean_weight * (1 - degraded)).view(-1, 1, 1, 1).expand_as(gate.logits)
    classify = torch.nn.functional.binary_cross_entropy_with_logits(gate.logits, target, weight=weight)
    logs = {**step.logs, "loss_gate": float(classify.detach())}
    return StepOutput(step.loss + gate_weight * classify, logs, step.prediction)


def dsrdmpd_stage1(model: nn.Module, batch: Mapping[str, Any], ctx: ObjectiveContext) -> StepOutput:
    """DS-RDMPD stage 1 alone (:class:`rsrestore.models.dsrdmpd.DSRDMPD`), with the authors' ``511 L1 + MSE`` loss;
    validation scores the stage-1 estimate. The ``loss`` section is not used."""
    if ctx.training:  # through forward, so that a DistributedDataParallel wrapper sees the call
        return StepOutput(model(batch["input"], train_stage=1, target=batch["target"]))
    prediction = model.stage1(batch["input"])
    return StepOutput(model.stage1_loss(batch["input"], batch["target"]), prediction=prediction)


def dsrdmpd_stage2(model: nn.Module, batch: Mapping[str, Any], ctx: ObjectiveContext, *,
                   val_steps: int = 5) -> StepOutput:
    """DS-RDMPD stage 2 (the residual diffusion denoiser) on top of the model's frozen stage 1: L1 on the residual at
    a random timestep. Validation runs the whole restore, stage 1 then ``val_steps`` sampling steps, with noise from
    the validation generator. Start the run from stage-1 weights (``model.init_weights``); the ``loss`` section is
    not used."""
    loss = model(batch["input"], train_stage=2, target=batch["target"], generator=ctx.generator)
    if ctx.training:
        return StepOutput(loss)
    return StepOutput(loss, prediction=model(batch["input"], steps=val_steps, generator=ctx.generator))


def aspdiff(model: nn.Module, batch: Mapping[str, Any], ctx: ObjectiveContext, *, val_steps: int = 5,
            vgg_weights: str | None = None) -> StepOutput:
    """ASPDiff (:class:`rsrestore.models.aspdiff.ASPDiff`): its weighted losses (noise, reconstruction, APEM,
    frequency, total variation, and VGG19 perceptual when ``vgg_weights`` names a torchvision VGG19 file), each
    logged. Validation runs the whole restore in ``val_steps`` DDIM steps with noise from the validation generator.
    The ``loss`` section is not used."""
    vgg = None
    if vgg_weights:
        if "vgg" not in ctx.cache:
            from ..vgg import load_vgg19

            ctx.cache["vgg"] = load_vgg19(vgg_weights).to(batch["input"].device)
        vgg = ctx.cache["vgg"]
    parts = model(batch["input"], target=batch["target"], generator=ctx.generator, vgg=vgg)
    logs = {f"loss_{k}": float(v.detach()) for k, v in parts.items() if k != "total"}
    if ctx.training:
        return StepOutput(parts["total"], logs)
    return StepOutput(parts["total"], logs, model(batch["input"], steps=val_steps, generator=ctx.generator))


def apem(model: nn.Module, batch: Mapping[str, Any], ctx: ObjectiveContext, *, output_weight: float = 1.0,
         eps: float = 0.05) -> StepOutput:
    """The ``apem`` method (:class:`rsrestore.models.aspdiff.apem_dehazer.APEMDehazer`): APEM's prior-consistency
    loss || (I - A (1 - t)) / max(t, eps) - J ||_1 plus the config's ``tv_weight`` times the total variation of t,
    plus ``output_weight`` times the L1 error of the restored (floored, clamped) image. The ``loss`` section is not
    used."""
    from ..models.aspdiff.apem import apem_loss, total_variation

    restored, priors = model(batch["input"], return_priors=True)
    target = batch["target"].float()
    tv_weight = getattr(model, "module", model).cfg.tv_weight
    prior = apem_loss(batch["input"], priors, target, eps=eps)
    tv = total_variation(priors.t.float())
    output = (restored.float() - target).abs().mean()
    loss = prior + tv_weight * tv + output_weight * output
    logs = {"loss_prior": float(prior.detach()), "loss_tv": float(tv.detach()), "loss_output": float(output.detach())}
    return StepOutput(loss, logs, restored)


OBJECTIVES: dict[str, Objective] = {
    "supervised": supervised,
    "clean_gate": clean_gate,
    "dsrdmpd_stage1": dsrdmpd_stage1,
    "dsrdmpd_stage2": dsrdmpd_stage2,
    "apem": apem,
    "aspdiff": aspdiff,
}


def objective_params(name: str) -> list[str]:
    """The keyword-only parameters of objective ``name``: what ``objective.params`` may set."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known objectives: {', '.join(sorted(OBJECTIVES))}")
    params = inspect.signature(OBJECTIVES[name]).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY]
