"""Training loss of AOSR-Net.

Si et al., "AOSR-Net: All-in-One Sandstorm Removal Network", ICTAI 2023:

    L = lambda1 * (L1(Phi, Phi_gt) + L1(J, J_gt)) + lambda2 * L_c,   lambda1 = 0.25, lambda2 = 0.5,

where L_c is the contrastive regularisation of AECR-Net (:class:`~rsrestore.losses.contrastive.ContrastiveLoss`)
with the output as anchor, the clear target as positive and the sand-dust input as negative.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from rsrestore.losses.contrastive import DEFAULT_WEIGHTS, ContrastiveLoss
from rsrestore.models.aosrnet import phi_from_clean
from rsrestore.vgg import load_vgg19


class AOSRLoss(nn.Module):
    """lambda1 (L1(Phi) + L1(J)) + lambda2 L_c.

    Args:
        lambda1, lambda2: the paper's weights.
        vgg_weights: path to torchvision VGG19 weights (safetensors or .pth), required when ``lambda2 > 0``.
        rgb_bands: for more than three bands, the channels fed to VGG as R, G, B.
        alpha, beta: Eq. 5 constants, used only to derive the Phi target when a batch has no "phi".

    The trainer calls the model with ``model_kwargs`` so that it returns ``(J, Phi)``.
    """

    model_kwargs = {"return_phi": True}
    #: Its Phi target is Eq. 5's; AOSR-Net's affine head returns a gain map instead (train it with the ``l1`` loss).
    model_config_requirements = {"head": "phi"}

    def __init__(
        self,
        lambda1: float = 0.25,
        lambda2: float = 0.5,
        vgg_weights: str | os.PathLike[str] | None = None,
        rgb_bands: Sequence[int] | None = None,
        alpha: float = 1.6,
        beta: float = 1.0,
    ) -> None:
        super().__init__()
        if lambda1 < 0 or lambda2 < 0:
            raise ValueError(f"loss weights must be >= 0, got lambda1={lambda1}, lambda2={lambda2}")
        if lambda2 > 0 and vgg_weights is None:
            raise ValueError(
                "AOSRLoss needs VGG19 weights for its contrastive term (random VGG features are not a perceptual "
                "loss): pass `vgg_weights` (a torchvision vgg19 state dict as .safetensors or .pth) or set "
                "`lambda2: 0`"
            )
        self.lambda1 = float(lambda1)
        self.lambda2 = float(lambda2)
        self.alpha = alpha
        self.beta = beta
        self.contrastive = (
            ContrastiveLoss(load_vgg19(vgg_weights), DEFAULT_WEIGHTS, bands=rgb_bands)
            if self.lambda2 > 0 and vgg_weights is not None
            else None
        )

    def forward(self, output: tuple[Tensor, Tensor], batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Total loss and its parts (as floats, for logging).

        Args:
            output: the model's ``(J, Phi)``, from ``model(x, return_phi=True)``.
            batch: a dict with "input" (degraded I), "target" (clear J_gt) and, normally, "phi" (Phi_gt); without
                "phi" the target is derived from the pair by :func:`~rsrestore.models.aosrnet.phi_from_clean`.
        """
        if not (isinstance(output, (tuple, list)) and len(output) == 2):
            raise ValueError(
                "AOSRLoss needs the model output (J, Phi); call the model with return_phi=True (see model_kwargs)"
            )
        j, phi = output
        for key in ("input", "target"):
            if key not in batch:
                raise ValueError(f"batch has no {key!r} entry (keys: {sorted(batch)})")
        hazy, target = batch["input"], batch["target"]
        phi_gt = batch.get("phi")
        if phi_gt is None:
            phi_gt = phi_from_clean(target, hazy, self.alpha, self.beta)
        if j.shape != target.shape or phi.shape != phi_gt.shape:
            raise ValueError(
                f"shape mismatch: J {tuple(j.shape)} vs target {tuple(target.shape)}, "
                f"Phi {tuple(phi.shape)} vs phi target {tuple(phi_gt.shape)}"
            )
        # In float32 even under autocast: bf16 means lose the small differences late in training.
        l1_phi = F.l1_loss(phi.float(), phi_gt.float())
        l1_j = F.l1_loss(j.float(), target.float())
        total = self.lambda1 * (l1_phi + l1_j)
        parts = {"l1_phi": float(l1_phi.detach()), "l1_j": float(l1_j.detach())}
        if self.contrastive is not None:
            lc = self.contrastive(j, target, hazy)
            total = total + self.lambda2 * lc
            parts["contrastive"] = float(lc.detach())
        parts["total"] = float(total.detach())
        return total, parts
