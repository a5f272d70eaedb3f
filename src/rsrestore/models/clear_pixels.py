"""Cloud removers keep clear pixels: the output is the network's only where there is cloud or cloud shadow.

    output = x + w (network(x) - x),    w in [0, 1], w = 0 on clear pixels

so a pixel the cloud left clear comes out exactly as it went in. ``w`` is the cloud/shadow mask when one is known (in
training on synthetic clouds it is: the synthesis draws it) and otherwise DSen2-CR's rule-based cloud/shadow mask of
the cloudy input (:func:`rsrestore.losses.carl.cloud_shadow_mask`, the mask the CARL loss uses, at a lower cloud-score
threshold), joined with the pixels whose own cloud tests pass before that mask's smoothing (DSen2-CR's 7 x 7 mean of
unclipped scores loses thin cloud edges beside dark vegetation), widened by ``SOFTEN_PX`` and feathered over as many
pixels so that the network's pixels fade into the input's at a cloud's edge instead of meeting them along a seam. The
detector errs toward "cloud": a pixel it is unsure of goes to the network.

The shadow test compares each pixel with thresholds taken from the whole image; a restorer computes them once per
scene (``scene_statistics``) so that every tile of a tiled restore applies the same test. The rest of the detector is
local (radius 7 px, 11 px with the feathering), inside the 16-pixel halo tiles are read with.

Threshold. The cloud score is thresholded at 0.1 rather than DSen2-CR's 0.2: on synthetic thin and thick clouds with
shadows over the real SEN12MS-CR patch 139_p839 (three draws each) 0.2 left up to 12 % of the cloud and shadow pixels
(cloud opacity up to 0.09) to the input, 0.1 at most 0.7 %, all of them shadow; the price is fewer clear pixels kept
(0-7 % of them instead of 0-59 % on those partly cloudy 256 x 256 patches, most of the rest flagged by the shadow
test, whose thresholds the bright clouds raise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SOFTEN_PX = 2
"""Widening, then feathering, of the detected mask (pixels each)."""


def clear_statistics(x: Tensor) -> dict[str, Tensor]:
    """Scene-wide thresholds of the shadow test, ``{"shadow_levels": (B, 2)}``; empty unless ``x`` has the 13
    Sentinel-2 bands the detector reads."""
    if x.ndim != 4 or x.shape[1] != 13:
        return {}
    from ..losses.carl import shadow_thresholds

    return {"shadow_levels": shadow_thresholds(x.float())}


def cloud_weight(x: Tensor, threshold: float = 0.1, stats: dict[str, Tensor] | None = None) -> Tensor:
    """Soft cloud/shadow weight (B, 1, H, W) in [0, 1] of a 13-band Sentinel-2 image in [0, 1]: 1 on the detected
    cloud or shadow and ``SOFTEN_PX`` pixels around it, falling to exactly 0 over the next ``SOFTEN_PX`` pixels."""
    from ..losses.carl import cloud_shadow_mask, pixel_cloud_score

    levels = (stats or {}).get("shadow_levels")
    with torch.no_grad():
        x32 = x.float()
        m = torch.maximum(cloud_shadow_mask(x32, threshold, levels), (pixel_cloud_score(x32) >= threshold).float())
        k = 2 * SOFTEN_PX + 1
        m = F.max_pool2d(m, k, stride=1, padding=SOFTEN_PX)
        # A box mean of the widened mask: 1 inside, a linear ramp outside, 0 beyond (replicate-padded at the border).
        m = F.avg_pool2d(F.pad(m, (SOFTEN_PX,) * 4, mode="replicate"), k, stride=1)
    return m.clamp(0.0, 1.0).to(x.dtype)


def as_weight(mask: Tensor, like: Tensor) -> Tensor:
    """A known cloud/shadow mask ((B, 1, H, W), (B, H, W) or (B, C, H, W); 1 = cloud or shadow) as a weight."""
    if mask.ndim == 3:
        mask = mask[:, None]
    b, c, h, w = like.shape
    if mask.ndim != 4 or mask.shape[0] not in (1, b) or mask.shape[1] not in (1, c) or mask.shape[2:] != (h, w):
        raise ValueError(f"mask must be (B, 1, H, W) matching {tuple(like.shape)}, got {tuple(mask.shape)}")
    return mask.to(like.dtype).clamp(0.0, 1.0)


def keep_clear(pred: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """``x + weight (pred - x)``: ``x`` itself (bit for bit) where ``weight`` is 0, ``pred`` itself where it is 1."""
    blend = torch.where(weight >= 1, pred, x + weight * (pred - x))
    return torch.where(weight > 0, blend, x)


class KeepsClearPixels:
    """Mixin of the cloud removers (their config has ``keep_clear``): the scene-wide statistics the detector needs,
    computed once per scene by the tiling engine and passed to ``forward`` as ``stats``."""

    def scene_statistics(self, x: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """The clear-pixel detector's thresholds (``mask`` here is the tiling engine's valid-pixel mask, whose
        invalid pixels already hold the scene's mean colour)."""
        return clear_statistics(x) if self.cfg.keep_clear else {}


def compose(pred: Tensor, x: Tensor, *, enabled: bool, mask: Tensor | None, stats: dict | None,
            threshold: float = 0.1) -> Tensor:
    """The cloud remover's output: ``pred`` on cloud, ``x`` on clear pixels (see the module docstring).

    ``mask`` (known, 1 = cloud or shadow) is used whenever given; otherwise, when ``enabled`` and ``x`` has the 13
    Sentinel-2 bands, the mask is detected; otherwise ``pred`` is returned as it is."""
    if mask is not None:
        return keep_clear(pred, x, as_weight(mask, x))
    if not enabled or x.shape[1] != 13:
        return pred
    return keep_clear(pred, x, cloud_weight(x, threshold, stats))
