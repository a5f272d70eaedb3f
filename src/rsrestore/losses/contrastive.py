"""Contrastive regularisation (CR) of AECR-Net.

Wu et al., "Contrastive Learning for Compact Single Image Dehazing", CVPR 2021, Eq. (3):

    L_c = sum_i w_i * D(G_i(J), G_i(phi(I))) / D(G_i(I), G_i(phi(I)))

with G_i the VGG19 activations relu1_1, relu2_1, relu3_1, relu4_1, relu5_1, weights w = 1/32, 1/16, 1/8, 1/4, 1,
D the L1 distance (mean absolute difference), J the clear image (positive), I the degraded input (negative) and
phi(I) the restored output (anchor). Both distances are measured from the output: the loss pulls the output towards
the clear image in feature space and pushes it away from the degraded one. AOSR-Net (Si et al., ICTAI 2023) uses it
with weight lambda2 = 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rsrestore.vgg import VGG19Features

DEFAULT_WEIGHTS: tuple[float, ...] = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


class ContrastiveLoss(nn.Module):
    """AECR-Net contrastive regularisation over frozen VGG19 features.

    Args:
        vgg: a :class:`~rsrestore.vgg.VGG19Features` with pretrained weights (see :func:`~rsrestore.vgg.load_vgg19`);
            one weight per tap it returns. It is frozen here.
        weights: the per-layer weights w_i, shallow to deep.
        bands: for images with more than three bands, the three channel indices fed to VGG as R, G, B.
            Three-band and single-band images need none.
        eps: added to the negative distance, as in the reference implementation, so output == negative stays finite.
    """

    def __init__(
        self,
        vgg: VGG19Features,
        weights: Sequence[float] = DEFAULT_WEIGHTS,
        bands: Sequence[int] | None = None,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        if not isinstance(vgg, VGG19Features):
            raise ValueError(f"vgg must be a VGG19Features (see rsrestore.vgg.load_vgg19), got {type(vgg).__name__}")
        if len(weights) != len(vgg.taps):
            raise ValueError(f"{len(weights)} weights given for {len(vgg.taps)} VGG taps {vgg.taps}")
        if bands is not None and len(bands) != 3:
            raise ValueError(f"bands must name three channels (R, G, B), got {list(bands)}")
        self.vgg = vgg.freeze()
        self.weights = tuple(float(w) for w in weights)
        self.bands = None if bands is None else tuple(int(b) for b in bands)
        self.eps = eps

    def train(self, mode: bool = True) -> "ContrastiveLoss":
        # The loss network stays in eval mode whatever the surrounding module does.
        super().train(mode)
        self.vgg.eval()
        return self

    def _select(self, x: Tensor) -> Tensor:
        if self.bands is None:
            return x
        if max(self.bands) >= x.shape[1] or min(self.bands) < -x.shape[1]:
            raise ValueError(f"bands {self.bands} out of range for an image with {x.shape[1]} channels")
        return x[:, list(self.bands)]

    def forward(self, output: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        """Scalar loss for a batch: ``output`` is the restored image, ``positive`` the clear target,
        ``negative`` the degraded input; all (B, C, H, W) in [0, 1] with the same shape."""
        if output.shape != positive.shape or output.shape != negative.shape:
            raise ValueError(
                "output, positive and negative must have the same shape, got "
                f"{tuple(output.shape)}, {tuple(positive.shape)}, {tuple(negative.shape)}"
            )
        out_feats = self.vgg(self._select(output))
        # Positive and negative only serve as fixed references (detached in AECR-Net): no graph needed.
        with torch.no_grad():
            pos_feats = self.vgg(self._select(positive))
            neg_feats = self.vgg(self._select(negative))
        loss = output.new_zeros(())
        for w, fa, fp, fn in zip(self.weights, out_feats, pos_feats, neg_feats):
            d_ap = (fa - fp).abs().mean()
            d_an = (fa - fn).abs().mean()
            loss = loss + w * d_ap / (d_an + self.eps)
        return loss
