"""Training losses, by name, behind one interface.

Every loss is an ``nn.Module`` (so that what it holds, e.g. a VGG, follows the model to its device) with

- ``forward(output, batch) -> (total, parts)``: ``output`` is whatever the model returned, ``batch`` the collated
  dict of the dataset (``"input"``, ``"target"`` and optionally ``"sar"``, ``"mask"``, ``"phi"``); ``total`` is the
  scalar to minimise and ``parts`` a dict of floats for logging;
- ``model_kwargs``: keyword arguments the trainer passes to the model's forward (AOSR-Net must return Phi as well).

``LOSSES`` maps a name to a function returning the class, so that a loss's dependencies (the VGG of the
contrastive term, the model module that defines Phi) are imported only when that loss is used:

- ``l1``: mean absolute error to the target (RSDehamba, SAR-CR).
- ``aosr``: :class:`~rsrestore.losses.aosr.AOSRLoss`, Si et al. (ICTAI 2023),
  lambda1 (L1(Phi) + L1(J)) + lambda2 L_contrastive.
- ``carl``: cloud-adaptive regularised loss of Meraner et al. (ISPRS J. 2020), Eq. (3), with the batch's cloud mask
  when the dataset ships one and otherwise DSen2-CR's rule-based cloud/shadow mask computed from the cloudy input.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..metrics.full_reference import ssim_differentiable

__all__ = ["LOSSES", "CARLLoss", "L1Loss", "build_loss", "loss_params", "prediction_of"]


def prediction_of(output: Any) -> Tensor:
    """The restored image in a model's output: the output itself, or the first item of a tuple (AOSR-Net's (J, Phi))."""
    if isinstance(output, (tuple, list)):
        if not output:
            raise ValueError("the model returned an empty tuple")
        output = output[0]
    if not isinstance(output, Tensor):
        raise ValueError(
            f"the model's output must be a tensor or a tuple starting with one, got {type(output).__name__}"
        )
    return output


def _batch_tensor(batch: Mapping[str, Any], key: str, like: Tensor) -> Tensor:
    if key not in batch:
        raise ValueError(f"batch has no {key!r} entry (keys: {sorted(batch)})")
    value = batch[key]
    if value.shape != like.shape:
        raise ValueError(f"prediction {tuple(like.shape)} and batch[{key!r}] {tuple(value.shape)} differ in shape")
    return value


class L1Loss(nn.Module):
    """Mean absolute error between the prediction and ``batch["target"]`` over all pixels and bands, plus

    - with ``spectral_weight``, that weight times the mean spectral-angle term ``1 - cos`` between each pixel's
      predicted and target spectra (the smooth form of SAM: arccos has an infinite slope where the angle is 0). For
      multispectral outputs, where L1 alone can leave a spectrum's shape wrong at a small mean error;
    - with ``gradient_weight``, that weight times the mean absolute error of the horizontal and vertical differences
      of neighbouring pixels (an edge loss). A haze veil over fine detail leaves most of the L1 error in the level,
      so L1 alone lets a model lift the veil and leave the detail as faint as the hazy input had it; this term
      charges faint detail directly;
    - with ``ssim_weight``, that weight times ``1 - SSIM`` (the metric's own convention,
      :func:`rsrestore.metrics.full_reference.ssim_differentiable`). L1 charges a residual veil little where the
      local contrast is small, SSIM charges the lost contrast itself;
    - with ``texture_weight``, that weight times the mean absolute difference of the *local* gradient magnitude
      (per band, averaged over ``texture_window`` x ``texture_window`` blocks) of prediction and target. Where the
      guidance cannot tell where each edge lies (ground under thick cloud, seen only through SAR), L1 and the edge
      loss are both least when the texture is smoothed away; this term asks for the target's amount of texture in
      each block and not its exact positions, so a blurred guess pays and a texture a pixel or two off does not.
    """

    model_kwargs: dict[str, Any] = {}

    def __init__(self, spectral_weight: float = 0.0, gradient_weight: float = 0.0, ssim_weight: float = 0.0,
                 texture_weight: float = 0.0, texture_window: int = 8) -> None:
        super().__init__()
        weights = (("spectral", spectral_weight), ("gradient", gradient_weight), ("ssim", ssim_weight),
                   ("texture", texture_weight))
        for name, weight in weights:
            if weight < 0:
                raise ValueError(f"{name}_weight must be >= 0, got {weight}")
        if texture_window < 2:
            raise ValueError(f"texture_window must be >= 2 pixels, got {texture_window}")
        self.spectral_weight = spectral_weight
        self.gradient_weight = gradient_weight
        self.ssim_weight = ssim_weight
        self.texture_weight = texture_weight
        self.texture_window = texture_window

    def forward(self, output: Any, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        pred = prediction_of(output)
        target = _batch_tensor(batch, "target", pred)
        # In float32 even under autocast: a bf16 mean over a large batch loses the small differences late in training.
        pred, target = pred.float(), target.float()
        l1 = F.l1_loss(pred, target)
        loss, parts = l1, {"l1": float(l1.detach())}
        if self.spectral_weight:
            angle = (1.0 - F.cosine_similarity(pred, target, dim=1, eps=1e-6)).mean()
            loss = loss + self.spectral_weight * angle
            parts["spectral"] = float(angle.detach())
        if self.gradient_weight:
            edges = sum(F.l1_loss(pred.diff(dim=d), target.diff(dim=d)) for d in (-1, -2)) / 2
            loss = loss + self.gradient_weight * edges
            parts["gradient"] = float(edges.detach())
        if self.ssim_weight:
            dissimilarity = 1.0 - ssim_differentiable(pred, target).mean()
            loss = loss + self.ssim_weight * dissimilarity
            parts["ssim"] = float(dissimilarity.detach())
        if self.texture_weight:
            texture = F.l1_loss(self._local_texture(pred), self._local_texture(target))
            loss = loss + self.texture_weight * texture
            parts["texture"] = float(texture.detach())
        return loss, parts

    def _local_texture(self, x: Tensor) -> Tensor:
        """Mean gradient magnitude per band over ``texture_window``-pixel blocks (half-overlapping, so an edge on a
        block boundary counts in a block that holds it whole); ``(B, C, h, w)``."""
        magnitude = x.diff(dim=-1).abs()[..., :-1, :] + x.diff(dim=-2).abs()[..., :, :-1]
        window = min(self.texture_window, *magnitude.shape[-2:])
        return F.avg_pool2d(magnitude, window, stride=max(1, window // 2))


class CARLLoss(nn.Module):
    """Cloud-adaptive regularised loss, Meraner et al. (2020) Eq. (3), see :func:`rsrestore.losses.carl.carl_loss`.

    Args:
        lam: weight of the global target term (1 in the paper).
        threshold: cloud-score binarisation threshold of the fallback mask (0.2 in DSen2-CR's code).

    The cloud/shadow mask is ``batch["mask"]`` when present (1 = cloud or shadow), else
    :func:`~rsrestore.losses.carl.cloud_shadow_mask` of the cloudy input, which needs 13 Sentinel-2 bands.
    """

    model_kwargs: dict[str, Any] = {}

    def __init__(self, lam: float = 1.0, threshold: float = 0.2) -> None:
        super().__init__()
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.lam = float(lam)
        self.threshold = float(threshold)

    def forward(self, output: Any, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        from .carl import carl_loss, cloud_shadow_mask

        pred = prediction_of(output).float()
        cloudy = _batch_tensor(batch, "input", pred).float()
        target = _batch_tensor(batch, "target", pred).float()
        mask = batch.get("mask")
        if mask is None:
            if cloudy.shape[1] != 13:
                raise ValueError(
                    f"the CARL loss needs a cloud mask: the batch has no 'mask' and the input has {cloudy.shape[1]} "
                    "bands, while the built-in cloud/shadow detector needs the 13 Sentinel-2 bands"
                )
            with torch.no_grad():
                mask = cloud_shadow_mask(cloudy, self.threshold)
        loss = carl_loss(pred, cloudy, target, mask.to(pred.dtype), lam=self.lam)
        return loss, {"carl": float(loss.detach())}


def _aosr() -> type[nn.Module]:
    from .aosr import AOSRLoss

    return AOSRLoss


LOSSES: dict[str, Callable[[], type[nn.Module]]] = {
    "l1": lambda: L1Loss,
    "aosr": _aosr,
    "carl": lambda: CARLLoss,
}


def _loss_class(name: str) -> type[nn.Module]:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]()


def loss_params(name: str) -> list[str]:
    """The keyword parameters that ``build_loss(name, ...)`` accepts."""
    params = list(inspect.signature(_loss_class(name).__init__).parameters.values())[1:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def build_loss(name: str, **params: Any) -> nn.Module:
    """The loss ``name`` (a key of :data:`LOSSES`) built with ``params``; unknown parameters are a ValueError."""
    cls = _loss_class(name)
    accepted = loss_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for loss {name!r}; accepted: {accepted}")
    loss = cls(**params)
    if not isinstance(getattr(loss, "model_kwargs", {}), dict):
        raise TypeError(f"loss {name!r} has a model_kwargs that is not a dict")
    return loss
