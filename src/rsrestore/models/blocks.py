"""Small building blocks shared by the restoration networks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..physics.sensor import gaussian_blur  # the sensor chain's blur: 3 sigma, reflected edges

__all__ = ["LayerNorm2d", "pad_to_multiple", "count_parameters"]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map, at every pixel.

    The map is normalised as (B, H, W, C), which for a channels_last tensor is a free view, and the result is
    returned in channels_last memory format.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.normalized_shape[0]:
            raise ValueError(f"expected (B, {self.normalized_shape[0]}, H, W), got {tuple(x.shape)}")
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad H and W of x (B, C, H, W) at the bottom/right up to multiples of `multiple`; return it and (H, W).

    Reflect padding keeps image statistics at the border; a side too short to reflect (pad >= size) is padded by
    replication instead.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def affine_output(base: Tensor, maps: Tensor, smoothing: float, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The affine heads' output, J = (1 + g) b + o, or J = (1 + g) b + o + h x when ``x`` is given.

    ``maps`` stacks g, o (and h) along the channels, each with the channels of ``base``; all are blurred by a
    Gaussian of ``smoothing`` pixels first (0: per pixel). Returns J and the gain 1 + g.
    """
    gain, offset, *share = gaussian_blur(maps, smoothing).chunk(2 if x is None else 3, dim=1)
    phi = 1.0 + gain
    out = phi * base + offset
    return (out if x is None else out + share[0] * x), phi
