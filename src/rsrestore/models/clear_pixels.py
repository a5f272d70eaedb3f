"""Cloud removers keep clear pixels: the output is the network's only where there is cloud or cloud shadow.

    output = x + w (network(x) - x),    w in [0, 1], w = 0 on clear pixels

so a pixel the cloud left clear comes out exactly as it went in. ``w`` is the cloud/shadow mask when one is known (in
training on synthetic clouds it is: the synthesis draws it) and otherwise one detected from the cloudy input with
DSen2-CR's rule-based cloud score and shadow test (those of :func:`rsrestore.losses.carl.cloud_shadow_mask`, the mask
the CARL loss uses), widened by ``SOFTEN_PX`` and feathered over as many pixels so that the network's pixels fade into
the input's at a cloud's edge instead of meeting them along a seam.

Which pixels are cloud. A pixel is cloud when its smoothed cloud score reaches ``CONFIDENT`` (DSen2-CR's 0.2) or its
own tests reach ``PIXEL_CONFIDENT``, or when either reaches ``threshold`` (0.1) within ``NEAR_PX`` pixels of such a
confident pixel: a hysteresis that follows a cloud's faint edges without taking in bright ground on its own. At 0.1
alone, the score took bright land for cloud: 85 % of the cloud-free SEN12MS-CR patch 139_p839 (TOA blue near 0.14 is
enough), so a cloud remover changed a clean scene (33.5 dB from itself for ``sarcr``).

Shadows. The shadow test compares each pixel with thresholds taken from the whole image (Zhai et al. 2018), so it
flags the darkest ground of any scene, cloudy or not. A shadow needs a cloud, so the test applies only to scenes where
at least ``MIN_CLOUD_SHARE`` of the pixels are confident cloud. Its levels (a fraction of the way from the darkest
pixel to the mean) are measured on the pixels below the faint-cloud score (``FAINT``): with the clouds in the mean, a
cloudy scene's levels rose until most of its clear ground read as shadow, and a cloud remover rewrote it. Both the
levels and the share are scene-wide; a restorer computes them once per scene (``scene_statistics``) so that every
tile of a tiled restore applies the same tests. The rest of the detector is local (radius 7 px for the score, 4 more
for the hysteresis, 4 more with the feathering), inside the 16-pixel halo tiles are read with.

Measured (``benchmarks/bench_cloud_clean_scenes.py``, ``results/cloud_clean_scenes.json``): the whole cloud-free
SEN12MS-CR patch stays clear (with the score at 0.1 alone and the shadow test everywhere, 85 % of it went to the
network), and so do 3 of 8 held-out crops of the two Sentinel-2 scenes; bright bare fields and a salt lake's white
flats still read as cloud (7-88 % of the other five). On synthetic thin and thick clouds with shadows over those nine
scenes (which lie apart band by band and are blurred in the 20 m and 60 m bands, as real ones are, and are held in
the scene's blocks in those bands, as SEN12MS-CR holds them), the detector flags 27 % of the pixels the clouds left
untouched (82 % with the levels from the whole image) and misses 3.0 % of the visibly changed pixels (1.0 %; at most
32 %, mostly shadows) and 12.5 % of all the pixels the clouds changed (the faint fringes of the coarse bands' blocks
among them; handing the blocks around a detected cloud to the network in those bands was measured worse, since the
networks' coarse bands there are further from the ground than the input's). The price shows in scenes that
are mostly cloud and shadow, where the clear ground left to measure is itself shadowed: of the real cloudy
SEN12MS-CR patch 139_p839, 87 % goes to the network (99.5 % before) and the shadowed fields between its clouds are kept as they
are. On the real-Sentinel-1 held-out set of ``configs/sarcr_synthetic_clouds_cpu.yaml`` the share of untouched pixels
flagged fell from 85 % to 20 %, and the bundled sarcr's spectral angle from 10.2 to 8.0 degrees (the input's 8.1).

A floor from the clear ground. In the visible bands B1-B4 and the cirrus band B10 the atmosphere's path reflectance,
not the ground, sets how dark a top-of-atmosphere pixel can be: the darkest clear ground of a scene (water, forest,
shade) reads a little above it, and a cloud-free pixel under a cloud is no darker. The networks learned their ground
from a few scenes and B10 from a stand-in (a fixed share of B9), and under real clouds they went below that level:
on the real SEN12MS-CR patch 139_p839 the bundled sarcr put B1 at 0.117-0.16 where the clear pixels and the
reference read 0.15-0.20, and B10 at 0 where they read 7-12 DN. So the restored pixels of those bands are held at or
above the 1st percentile of the scene's clear pixels (``FLOOR_BANDS``, ``FLOOR_PERCENTILE``; a scene-wide statistic,
the same for every tile). Not in the near and short-wave infrared, where water is near 0 and the clear pixels of
one part of a scene say nothing of the ground under its clouds.

Shadows no brighter than the scene lifts them. Under a cloud's shadow the ground is still in the input, only dimmed:
the direct sunlight is gone, the skylight and the path light are not, so a shadow dims each band by its own factor
(over the real SEN12MS-CR patches, in shadow cores 6 pixels or more from any cloud, B2 keeps 0.95 of the ground
around, B4 0.85-0.89, NIR 0.65-0.70, SWIR 0.58-0.64). The networks learned shadows from a synthesis that dims every
band alike, and lifted real shadows into a pale grey-green veil (B2-B4 at 1.16-1.54 times the clear ground's mean);
trained on shadows that keep the path light, they made it pale blue and lost on the cross-source set. So when the
mask is detected, the network's output on the shadows away from the clouds is held at or below the input times a
per-band gain measured on the scene itself (``shadow_gain``: the clear ground within ``SHADOW_RING_PX`` of the
shadows over the shadows' cores, a scene-wide statistic). Restoring the shadows as the input times that gain kept
their texture too, but it also lifted the dark ground the shadow test takes for shadow (72 % of the detected shadow
pixels away from clouds in the held-out synthetic windows), which the networks learned to leave as it is: 3.1 dB
lost there. As an upper bound, the gain leaves those pixels to the network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SOFTEN_PX = 2
"""Widening, then feathering, of the detected mask (pixels each)."""

CONFIDENT = 0.2
"""Cloud score above which a pixel is cloud wherever it is (DSen2-CR's threshold)."""

PIXEL_CONFIDENT = 0.35
"""The same for a pixel's own tests, before the score's smoothing (which erases a wisp a few pixels wide); the
cloud-free SEN12MS-CR patch reaches 0.30 at most."""

NEAR_PX = 4
"""A pixel at the lower threshold is cloud when a confident cloud pixel lies within this many pixels."""

FAINT = 0.1
"""Cloud score from which a pixel is left out of the shadow test's levels (the detector's default lower threshold)."""

MIN_CLOUD_SHARE = 0.002
"""Share of confident cloud pixels in a scene from which its shadow test applies."""

FLOOR_BANDS = (0, 1, 2, 3, 10)
"""Bands (B1-B4 and the cirrus band B10) in which no restored pixel is darker than the scene's clear ground: see
"A floor from the clear ground" in the module docstring."""

FLOOR_PERCENTILE = 1.0
"""Percentile of the clear pixels' values that sets the floor of each of ``FLOOR_BANDS``."""

MIN_FLOOR_PIXELS = 256
"""Clear pixels a scene needs for a floor; with fewer there is none."""

SHADOW_CORE_PX = 2
"""A shadow pixel measures the shadow's depth when this many pixels inside the shadow..."""

SHADOW_CLOUD_GAP_PX = 6
"""...and this many from any faint cloud (whose light and thin edges would lift it)."""

SHADOW_RING_PX = 8
"""The clear ground within this many pixels of a shadow (and not touching it) is the shadowed ground, lit."""

MIN_SHADOW_PIXELS = 64
"""Shadow-core and ring pixels a scene needs for its shadow gain; with fewer the network's shadows are not bounded."""

SHADOW_GAIN_RANGE = (1.0, 4.0)
"""The per-band shadow gain is held in this range (a shadow only darkens; one deeper than 1/4 is not measured)."""


def clear_statistics(x: Tensor) -> dict[str, Tensor]:
    """Scene-wide inputs of the detector: ``{"shadow_levels": (B, 2), "cloud_share": (B,)}`` (the shadow test's
    thresholds, the share of confident cloud pixels); empty unless ``x`` has the 13 Sentinel-2 bands it reads."""
    if x.ndim != 4 or x.shape[1] != 13:
        return {}
    from ..losses.carl import cloud_score, pixel_cloud_score

    x32 = x.float()
    return _statistics(x32, cloud_score(x32), pixel_cloud_score(x32))


def _statistics(x32: Tensor, score: Tensor, own: Tensor) -> dict[str, Tensor]:
    """:func:`clear_statistics` of a float32 image whose cloud scores (smoothed and the pixel's own) are known: the
    detector's levels (:func:`_detector_levels`), the floor and the shadow gain."""
    stats = _detector_levels(x32, score, own)
    cloud, shadow = cloud_and_shadow(x32, stats=stats, scores=(score, own))
    clear = (cloud == 0) & (shadow == 0)
    cloudy = (score >= FAINT) | (own >= FAINT)
    return {**stats, "floor": _clear_floor(x32, clear), "shadow_gain": _shadow_gain(x32, cloudy, shadow > 0)}


def _detector_levels(x32: Tensor, score: Tensor, own: Tensor) -> dict[str, Tensor]:
    """What the detector itself needs of a scene: the shadow test's levels, measured on the pixels below the
    faint-cloud level (``FAINT``; see the module docstring), and the share of confident cloud."""
    from ..losses.carl import shadow_thresholds

    share = (score >= CONFIDENT).double().mean(dim=(1, 2, 3))
    cloudy = (score >= FAINT) | (own >= FAINT)
    return {"shadow_levels": shadow_thresholds(x32, exclude=cloudy), "cloud_share": share}


def _grow(m: Tensor, px: int) -> Tensor:
    """A boolean mask (B, 1, H, W) grown by ``px`` pixels (a square neighbourhood)."""
    return F.max_pool2d(m.float(), 2 * px + 1, stride=1, padding=px) > 0


def _shadow_gain(x32: Tensor, cloudy: Tensor, shadow: Tensor) -> Tensor:
    """(B, C) per-band gain that lights the scene's cloud shadows: the mean of the clear ground around the shadows
    (``SHADOW_RING_PX``) over the mean of the shadows' cores (``SHADOW_CORE_PX`` inside, ``SHADOW_CLOUD_GAP_PX`` from
    any faint cloud), held in ``SHADOW_GAIN_RANGE``; NaN where there are too few of either (``MIN_SHADOW_PIXELS``)."""
    near_cloud = _grow(cloudy, SHADOW_CLOUD_GAP_PX)
    core = ~_grow(~shadow, SHADOW_CORE_PX) & ~near_cloud
    ring = _grow(shadow, SHADOW_RING_PX) & ~_grow(shadow, 1) & ~near_cloud
    gain = torch.full(x32.shape[:2], torch.nan, dtype=torch.float32, device=x32.device)
    for i in range(x32.shape[0]):
        c, r = core[i, 0], ring[i, 0]
        if int(c.sum()) >= MIN_SHADOW_PIXELS and int(r.sum()) >= MIN_SHADOW_PIXELS:
            lit, dark = x32[i][:, r].double().mean(1), x32[i][:, c].double().mean(1)
            gain[i] = (lit / dark.clamp_min(1e-6)).clamp(*SHADOW_GAIN_RANGE).float()
    return gain


def _clear_floor(x32: Tensor, clear: Tensor) -> Tensor:
    """(B, C) floor of each band: the ``FLOOR_PERCENTILE`` of the clear pixels in ``FLOOR_BANDS``, -inf elsewhere and
    in images with fewer than ``MIN_FLOOR_PIXELS`` clear pixels."""
    floor = torch.full(x32.shape[:2], -torch.inf, dtype=torch.float32, device=x32.device)
    bands = list(FLOOR_BANDS)
    for i in range(x32.shape[0]):
        keep = clear[i, 0]
        if int(keep.sum()) >= MIN_FLOOR_PIXELS:
            floor[i, bands] = torch.quantile(x32[i, bands][:, keep], FLOOR_PERCENTILE / 100.0, dim=1)
    return floor


def floor_prediction(pred: Tensor, stats: dict | None) -> Tensor:
    """``pred`` no darker than the scene's clear ground in ``FLOOR_BANDS`` (``stats["floor"]``; as it is without)."""
    if not stats or "floor" not in stats:
        return pred
    floor = stats["floor"].to(device=pred.device, dtype=pred.dtype)
    return torch.maximum(pred, floor.view(*floor.shape, 1, 1))


def cloud_mask(x: Tensor, threshold: float = 0.1, stats: dict[str, Tensor] | None = None,
               scores: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Binary cloud/shadow mask (B, 1, H, W) of a 13-band Sentinel-2 image in [0, 1] (see the module docstring);
    ``stats`` are the scene's (:func:`clear_statistics`), by default the image's own; ``scores`` the image's cloud
    scores (smoothed, the pixel's own) when already computed."""
    return torch.maximum(*cloud_and_shadow(x, threshold, stats, scores))


def cloud_and_shadow(x: Tensor, threshold: float = 0.1, stats: dict[str, Tensor] | None = None,
                     scores: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """The two parts of :func:`cloud_mask`, each binary (B, 1, H, W): the clouds, and the shadows (which may overlap
    them)."""
    from ..losses.carl import cloud_score, pixel_cloud_score, shadow_mask

    x32 = x.float()
    score, own = scores if scores is not None else (cloud_score(x32), pixel_cloud_score(x32))
    if not stats or "cloud_share" not in stats:
        stats = _detector_levels(x32, score, own)  # the image's own, from the scores just computed
    confident = ((score >= CONFIDENT) | (own >= PIXEL_CONFIDENT)).float()
    faint = ((score >= threshold) | (own >= threshold)).float()
    near = F.max_pool2d(confident, 2 * NEAR_PX + 1, stride=1, padding=NEAR_PX)
    cloud = torch.maximum(confident, faint * near)
    has_cloud = (stats["cloud_share"].to(x.device) >= MIN_CLOUD_SHARE).to(x32.dtype).view(-1, 1, 1, 1)
    return cloud, shadow_mask(x32, stats["shadow_levels"]) * has_cloud


def cloud_weight(x: Tensor, threshold: float = 0.1, stats: dict[str, Tensor] | None = None) -> Tensor:
    """Soft cloud/shadow weight (B, 1, H, W) in [0, 1] of a 13-band Sentinel-2 image in [0, 1]: 1 on the detected
    cloud or shadow (:func:`cloud_mask`) and ``SOFTEN_PX`` pixels around it, falling to exactly 0 over the next
    ``SOFTEN_PX`` pixels."""
    with torch.no_grad():
        return _soften(cloud_mask(x, threshold, stats)).to(x.dtype)


def _soften(m: Tensor) -> Tensor:
    """A binary mask widened by ``SOFTEN_PX`` and feathered over as many pixels more, in [0, 1]."""
    k = 2 * SOFTEN_PX + 1
    m = F.max_pool2d(m.float(), k, stride=1, padding=SOFTEN_PX)
    # A box mean of the widened mask: 1 inside, a linear ramp outside, 0 beyond (replicate-padded at the border).
    return F.avg_pool2d(F.pad(m, (SOFTEN_PX,) * 4, mode="replicate"), k, stride=1).clamp(0.0, 1.0)


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
            threshold: float = 0.1, with_detected: bool = False, bound_shadows: bool = True) -> Tensor:
    """The cloud remover's output: ``pred`` on cloud, ``x`` on clear pixels (see the module docstring).

    ``mask`` (known, 1 = cloud or shadow) is used whenever given; otherwise, when ``enabled`` and ``x`` has the 13
    Sentinel-2 bands, the mask is detected; otherwise ``pred`` is returned as it is. ``with_detected`` (with a known
    mask, ``enabled`` and 13 bands) hands the detected pixels to ``pred`` as well: trained so, a network also sees the
    clear pixels the detector will take for cloud when it restores, and learns to leave them as they are.
    ``bound_shadows`` (a detected mask) holds ``pred`` on the detected shadows away from the clouds at or below the
    input times the scene's shadow gain (``stats["shadow_gain"]``): see "Shadows no brighter than the scene lifts
    them" in the module docstring."""
    if mask is not None:
        weight = as_weight(mask, x)
        if with_detected and enabled and x.shape[1] == 13:
            weight = torch.maximum(weight, cloud_weight(x, threshold, stats))
        return keep_clear(floor_prediction(pred, stats), x, weight)
    if not enabled or x.shape[1] != 13:
        return pred
    from ..losses.carl import cloud_score, pixel_cloud_score

    with torch.no_grad():
        x32 = x.float()
        scores = (cloud_score(x32), pixel_cloud_score(x32))  # once, for the statistics and the masks alike
        if not stats or "cloud_share" not in stats:
            stats = _statistics(x32, *scores)  # the image's own
        cloud, shadow = cloud_and_shadow(x32, threshold, stats, scores)
        weight = _soften(torch.maximum(cloud, shadow)).to(x.dtype)  # cloud_weight's
    pred = floor_prediction(pred, stats)
    gain = stats.get("shadow_gain")
    if bound_shadows and gain is not None:
        pred = _bound_shadows(pred, x, cloud, shadow, gain)
    return keep_clear(pred, x, weight)


def _bound_shadows(pred: Tensor, x: Tensor, cloud: Tensor, shadow: Tensor, gain: Tensor) -> Tensor:
    """``pred`` held at or below ``x`` times the scene's shadow ``gain`` on the detected shadows away from the clouds
    (both masks feathered as the weight is); as it is in an image whose gain was not measured (NaN)."""
    with torch.no_grad():
        w_cloud, w_shadow = _soften(cloud), _soften(shadow)
        gain = gain.to(device=x.device, dtype=torch.float32)
        has_gain = torch.isfinite(gain).all(1).view(-1, 1, 1, 1)
        w_cap = torch.where(has_gain, (1.0 - w_cloud) * w_shadow, torch.zeros_like(w_shadow)).to(x.dtype)
        lit = x * torch.nan_to_num(gain, nan=1.0).to(x.dtype).view(*gain.shape, 1, 1)
    return pred - w_cap * F.relu(pred - lit)
