"""Rank-one prior scene recovery (ROP) for sand-dust images.

J. Liu, R. W. Liu, J. Sun, T. Zeng, "Rank-One Prior: Toward Real-Time Scene Recovery", CVPR 2021, and the journal
version "Rank-One Prior: Real-Time Scene Recovery", IEEE TPAMI 2022 (equation numbers below are the TPAMI ones).

The degraded image is I = J * t + t~ * A (the scattering map t~ = 1 - t per band). The prior: the mode-3 unfolding of
t~ is a rank-one matrix, t~(x) = C(x) b (Eqs. 3-4), so the scattering light of every pixel points along one spectral
direction b, approximated by the "unified spectrum" s_nu, the L1-normalised mean colour of the scene (Eqs. 5-7;
ROP+ refines it over pixels within a small angle of it, Eqs. 12-14). The coefficient C(x) is the projection of I(x)
on that direction (Eqs. 8-9), smoothed (Eq. 10), and the scene comes back from Eq. 11:

    J(x) = (I(x) - omega t~(x) A) / max(1 - omega t~(x), xi),      omega = 0.8, xi = 0.001.

Steps that the papers leave to the authors' reference implementation and that are followed here:

* the projection coefficient is C(x) = cos(angle(I(x), s_u)) * ||I(x)||_1 with s_nu = s_u / ||s_u||_1, so a pixel
  lying on the unified direction is its own scattering light;
* the ambient light A is the mean input colour over the pixels with the largest 0.1 % of ||t~||_1 (Sec. 4.2), and
  those pixels' coefficients are reflected below that threshold (C <- 2 C_k - C) so bright objects are not
  treated as thick dust ("to prevent over-brightness");
* post-processing: a per-band linear stretch between the 1st and 99th percentiles of J, clipping to [0, 1], and a
  gamma of 5/6 on the BT.601 luma (the Y of YCbCr, so the offset is the same in every band).

Deliberate departure, for tiled processing: Eq. 10 smooths t~ by down- then up-sampling the whole image (bilinear in
the paper; the reference code shrinks to 2 % of the size below 800 pixels, 1 % below 1500, 0.5 % above). Every output
pixel then depends on the whole image and on its size, so no tile could match the full-scene result. The smoothing
here is a fixed low-pass instead: `smooth_passes` box filters of radius `smooth_radius`; two passes of radius 25 make
a triangular kernel whose half-height width, 51 pixels, matches the 50-pixel cells of the 2 % resampling. Because
t~ = C s_nu and the filter is linear, smoothing the scalar C is the same as smoothing t~, so the smoothed map is still
exactly rank one. ROP+'s ADMM refinement of C (Eq. 15) is a global FFT-based solve and is not implemented; only its
spectrum refinement (Eqs. 12-14) is available (`refine_spectrum`).

Every scene-wide quantity (s_nu, A, the reflection threshold and the stretch percentiles) comes from
`scene_statistics`, which a tiling engine calls once on a decimated read of the whole scene; the only local operation
in `forward` is the box smoothing, hence `halo = smooth_radius * smooth_passes`.

Strength. omega is the paper's only strength setting, but the post-processing stretch decides the result: on
synthetic dust over NEON and EuroSAT crops (light, moderate, heavy) and on their clean crops, omega from 0.2 to 0.8
moves PSNR by under 0.3 dB and under 0.5 dB. So `--task auto` does not scale it with the dust severity (as it scales
the dark channel prior's omega); it runs at the paper's 0.8.

The stretch percentiles (1, 99) are those of the CVPR reference code; the TPAMI code's sand-dust preset uses (1, 95).
The authors state that commercial use of the algorithm falls under Chinese patent ZL 202011281893.3.

Bands: the method is not RGB-specific (the unified spectrum simply has C entries), so it runs on every band of a
multispectral image. Only the luma of the final gamma step uses `rgb_bands`; with fewer than 3 bands, or
`rgb_bands=None`, the band mean stands in for the luma.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..physics.guided_filter import box_filter

# BT.601 luma weights of (R, G, B), as in the studio-range YCbCr conversion the reference post-processing uses.
_LUMA = (0.299, 0.587, 0.114)


@dataclass
class ROPConfig:
    omega: float = 0.8  # relaxation of Eq. 11 (the paper's setting for all experiments)
    xi: float = 1e-3  # lower bound of 1 - omega t~ in Eq. 11
    top_fraction: float = 1e-3  # share of pixels with the largest ||t~||_1 whose mean input colour is A
    smooth_radius: int = 25  # box radius of the low-pass that stands in for Eq. 10's resampling
    smooth_passes: int = 2  # box filters in sequence (2 = triangular kernel)
    refine_spectrum: bool = False  # ROP+ unified spectrum (Eqs. 12-14) instead of the plain mean (Eqs. 5-7)
    cos_threshold: float = 0.99  # zeta of Eq. 12
    refine_iterations: int = 20  # at most this many alternations of Eq. 13 and the pixel selection
    stretch_percentiles: tuple[float, float] | None = (1.0, 99.0)  # per-band linear stretch; None: no stretch
    max_stretch: float | None = None  # cap on the stretch's gain 1 / (high - low), about the band's midpoint
    gamma: float | None = 5.0 / 6.0  # exponent on the luma after the stretch; None: no gamma
    rgb_bands: tuple[int, int, int] | None = (0, 1, 2)  # bands giving the luma of the gamma step
    norm_floor: float = 1e-3  # floor on vector norms, so black pixels have a defined direction


class RankOnePrior(nn.Module):
    """Training-free sand-dust (and haze / underwater) scene recovery by the rank-one prior.

    `forward(x, stats=...)` restores (B, C, H, W) images in [0, 1]; `scene_statistics(x, mask)` gives the scene-wide
    quantities a tile needs so that tiled and whole-image results agree.
    """

    def __init__(self, cfg: ROPConfig | None = None):
        super().__init__()
        self.cfg = cfg or ROPConfig()
        c = self.cfg
        if not 0.0 < c.omega <= 1.0:
            raise ValueError(f"omega must lie in (0, 1], got {c.omega}")
        if c.xi <= 0.0:
            raise ValueError(f"xi must be > 0, got {c.xi}")
        if not 0.0 < c.top_fraction <= 1.0:
            raise ValueError(f"top_fraction must lie in (0, 1], got {c.top_fraction}")
        if c.smooth_radius < 0 or c.smooth_passes < 0:
            raise ValueError(f"smooth_radius and smooth_passes must be >= 0, got {c.smooth_radius}, {c.smooth_passes}")
        if not -1.0 < c.cos_threshold < 1.0:
            raise ValueError(f"cos_threshold must lie in (-1, 1), got {c.cos_threshold}")
        if c.stretch_percentiles is not None:
            lo, hi = c.stretch_percentiles
            if not 0.0 <= lo < hi <= 100.0:
                raise ValueError(f"stretch_percentiles must satisfy 0 <= low < high <= 100, got {(lo, hi)}")
        if c.max_stretch is not None and c.max_stretch < 1.0:
            raise ValueError(f"max_stretch must be >= 1 (or None for no cap), got {c.max_stretch}")
        if c.gamma is not None and c.gamma <= 0.0:
            raise ValueError(f"gamma must be > 0, got {c.gamma}")
        if c.rgb_bands is not None and (len(c.rgb_bands) != 3 or min(c.rgb_bands) < 0):
            raise ValueError(f"rgb_bands must be three non-negative band indices, got {c.rgb_bands}")

    @property
    def halo(self) -> int:
        """Pixels of context a tile needs on each side: the reach of the box filters in sequence."""
        return self.cfg.smooth_radius * self.cfg.smooth_passes

    # ----------------------------------------------------------------------------------------------------------
    # statistics

    def scene_statistics(self, x: Tensor, mask: Tensor | None = None, *, decimation: float = 1.0) -> dict[str, Tensor]:
        """Scene-wide quantities, each with a leading batch dimension:

        - "spectrum" (B, C): unified spectrum s_nu, L1-normalised (Eq. 7, or Eq. 14 with `refine_spectrum`);
        - "airlight" (B, C): ambient light A;
        - "threshold" (B,): coefficient C of the top `top_fraction` pixel, above which coefficients are reflected;
        - "low", "high" (B, C): stretch percentiles of the recovered J (absent when the stretch is off).

        `mask` (B, 1, H, W) or (B, H, W) bool, True = valid pixel; invalid (nodata) pixels never feed a statistic.
        `decimation`: how many scene pixels one pixel of x spans (4 for a read at a quarter of the resolution). The
        stretch percentiles are percentiles of the smoothed recovery, so the smoothing radius is divided by it to keep
        the same ground footprint; without it, percentiles from a coarse read drift by about 0.01 to 0.1.
        """
        _check_image(x)
        if decimation < 1.0:
            raise ValueError(f"decimation must be >= 1 (x is the scene or a coarser read of it), got {decimation}")
        valid = _valid_mask(x, mask)
        c = self.cfg
        spectrum = unified_spectrum(
            x,
            valid,
            refine=c.refine_spectrum,
            cos_threshold=c.cos_threshold,
            iterations=c.refine_iterations,
            floor=c.norm_floor,
        )
        coef = scattering_coefficient(x, spectrum, floor=c.norm_floor)
        airlight, threshold = _ambient_light(x, coef, valid, c.top_fraction)
        stats = {"spectrum": spectrum, "airlight": airlight, "threshold": threshold}
        if c.stretch_percentiles is not None:
            radius = round(c.smooth_radius / decimation)
            j = self._recover(x, spectrum, airlight, threshold, radius, None if mask is None else valid[:, None])
            q = torch.tensor(c.stretch_percentiles, dtype=torch.float64) / 100.0
            lo_hi = _masked_quantiles(j, valid, q)  # (B, C, 2)
            low, high = lo_hi[..., 0], lo_hi[..., 1]
            if c.max_stretch is not None:
                # A flat scene (open water, forest, one field) has a narrow range, and stretching it to [0, 1]
                # amplifies its noise as much as its contrast (12-34x on the held-out Planet and EuroSAT dust
                # crops). The cap widens a narrower range about its midpoint.
                mid, narrow = (low + high) / 2, (high - low) < 1.0 / c.max_stretch
                half = 0.5 / c.max_stretch
                low, high = torch.where(narrow, mid - half, low), torch.where(narrow, mid + half, high)
            stats["low"], stats["high"] = low, high
        return stats

    # ----------------------------------------------------------------------------------------------------------
    # restoration

    def scattering_map(
        self,
        x: Tensor,
        spectrum: Tensor,
        threshold: Tensor,
        radius: int | None = None,
        valid: Tensor | None = None,
    ) -> Tensor:
        """Smoothed rank-one scattering map t~ (B, C, H, W) = C(x) s_nu (Eqs. 9-10 with the over-brightness guard).

        `radius` overrides the configured box radius (statistics on a decimated read). `valid` (B, 1, H, W) bool
        makes the smoothing a normalised convolution over valid pixels only, so nodata values never leak in.
        """
        c = self.cfg
        radius = c.smooth_radius if radius is None else radius
        coef = scattering_coefficient(x, spectrum, floor=c.norm_floor)
        thr = threshold.reshape(-1, 1, 1, 1)
        coef = torch.where(coef > thr, (2.0 * thr - coef).clamp_min(0.0), coef)
        if valid is None:
            for _ in range(c.smooth_passes):
                coef = box_filter(coef, radius)
        else:
            w = valid.to(coef.dtype)
            coef = coef * w
            for _ in range(c.smooth_passes):
                # The ratio of two box means cancels the window counts: a weighted mean over the valid pixels.
                coef = box_filter(coef * w, radius) / box_filter(w, radius).clamp_min(1e-12)
        return coef * spectrum[:, :, None, None]

    def _recover(
        self,
        x: Tensor,
        spectrum: Tensor,
        airlight: Tensor,
        threshold: Tensor,
        radius: int | None = None,
        valid: Tensor | None = None,
    ) -> Tensor:
        """Eq. 11 without post-processing."""
        c = self.cfg
        scatter = c.omega * self.scattering_map(x, spectrum, threshold, radius, valid)
        return (x - scatter * airlight[:, :, None, None]) / (1.0 - scatter).clamp_min(c.xi)

    def forward(
        self,
        x: Tensor,
        sar: Tensor | None = None,
        stats: dict[str, Tensor] | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Restore x (B, C, H, W) in [0, 1]. `stats` from `scene_statistics` (batch 1 or B); estimated from x when
        absent. `sar` is accepted for the common restorer interface and ignored. `mask` (optional, True = valid)
        keeps nodata pixels out of the smoothing of valid ones; their own output values are meaningless."""
        _check_image(x)
        c = self.cfg
        valid = None if mask is None else _valid_mask(x, mask, require_any=False)[:, None]
        if stats is None:
            stats = self.scene_statistics(x, mask)
        stats = _broadcast_stats(stats, x, need_stretch=c.stretch_percentiles is not None)
        j = self._recover(x, stats["spectrum"], stats["airlight"], stats["threshold"], valid=valid)
        if c.stretch_percentiles is not None:
            lo = stats["low"][:, :, None, None]
            hi = stats["high"][:, :, None, None]
            j = (j - lo) / (hi - lo).clamp_min(1e-6)
        j = j.clamp(0.0, 1.0)
        if c.gamma is not None:
            j = luma_gamma(j, c.gamma, c.rgb_bands)
        return j


# --------------------------------------------------------------------------------------------------------------
# building blocks (batched, no loops over pixels)


def unified_spectrum(
    x: Tensor,
    valid: Tensor | None = None,
    refine: bool = False,
    cos_threshold: float = 0.99,
    iterations: int = 20,
    floor: float = 1e-3,
) -> Tensor:
    """Unified spectrum s_nu (B, C), L1-normalised.

    Plain ROP: s_u is the mean colour over valid pixels (Eq. 6, the minimiser of Eq. 5). ROP+ (`refine`): alternate
    Eq. 13 (mean over the selected set) with the selection {x : cos(I(x), s_u) > zeta} of Eq. 12, starting from all
    valid pixels, until the spectrum stops changing; an image whose selection would be empty keeps its estimate.
    """
    b, ch = x.shape[:2]
    flat = x.reshape(b, ch, -1)
    sel = torch.ones_like(flat[:, 0], dtype=torch.bool) if valid is None else valid.reshape(b, -1)
    s_u = _masked_mean(flat, sel)
    if refine:
        base = sel
        pix_norm = flat.norm(dim=1).clamp_min(floor)
        for _ in range(iterations):
            cos = (flat * s_u[:, :, None]).sum(1) / (pix_norm * s_u.norm(dim=1, keepdim=True).clamp_min(floor))
            new_sel = base & (cos > cos_threshold)
            has_any = new_sel.any(dim=1)
            new_s = torch.where(has_any[:, None], _masked_mean(flat, new_sel), s_u)
            done = torch.allclose(new_s, s_u, rtol=0.0, atol=1e-7)
            s_u = new_s
            if done:
                break
    return s_u / s_u.sum(dim=1, keepdim=True).clamp_min(floor)


def scattering_coefficient(x: Tensor, spectrum: Tensor, floor: float = 1e-3) -> Tensor:
    """Scattering coefficient C(x) (B, 1, H, W) of Eqs. 8-9: the length, in L1 units, of I(x) projected on the unified
    direction, C = cos(angle(I(x), s_nu)) * ||I(x)||_1, so that t~0 = C s_nu."""
    s = spectrum.to(x)
    # Accumulated band by band: torch's reductions over the band axis of an NCHW tensor are strided and several
    # times slower than a few fused in-place updates (the loop runs over bands, never over pixels).
    dot = torch.zeros_like(x[:, :1])
    sq = torch.zeros_like(dot)
    l1 = torch.zeros_like(dot)
    for k in range(x.shape[1]):
        xk = x[:, k : k + 1]
        dot.addcmul_(xk, s[:, k, None, None, None])
        sq.addcmul_(xk, xk)
        l1.add_(xk.abs())
    s_norm = s.norm(dim=1).clamp_min(floor)[:, None, None, None]
    return dot / (sq.sqrt_().clamp_min_(floor) * s_norm) * l1


def luma_gamma(x: Tensor, gamma: float, rgb_bands: tuple[int, int, int] | None = (0, 1, 2)) -> Tensor:
    """Brighten by a power law on the luma only: Y' = Y^gamma in the studio-range 8-bit YCbCr scale (Y in [16, 235],
    the curve applied to (Y + 0.5) / 256 as the reference code's look-up table does), then back to RGB. Chroma is
    untouched, so every band receives the same offset (Y' - Y) / 219; the result is clipped to [0, 1]."""
    ch = x.shape[1]
    if rgb_bands is not None and ch >= 3:
        if max(rgb_bands) >= ch:
            raise ValueError(f"rgb_bands {rgb_bands} out of range for {ch} bands")
        bands, weights = list(rgb_bands), _LUMA
    else:
        bands, weights = list(range(ch)), [1.0 / ch] * ch
    luma = torch.zeros_like(x[:, :1])
    for k, wk in zip(bands, weights):  # per band, not per pixel: faster than a strided reduction over bands
        luma.add_(x[:, k : k + 1], alpha=wk)
    y8 = 16.0 + 219.0 * luma
    y8_new = 256.0 * ((y8 + 0.5) / 256.0) ** gamma - 0.5
    return (x + (y8_new - y8) / 219.0).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------------------------
# helpers


def _check_image(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point image in [0, 1], got dtype {x.dtype}")
    if x.shape[1] < 1 or x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"empty image of shape {tuple(x.shape)}")


def _valid_mask(x: Tensor, mask: Tensor | None, require_any: bool = True) -> Tensor:
    """(B, H, W) bool validity; with `require_any`, raises if an image has no valid pixel."""
    b, _, h, w = x.shape
    if mask is None:
        return torch.ones((b, h, w), dtype=torch.bool, device=x.device)
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 3 or mask.shape[0] not in (1, b) or tuple(mask.shape[1:]) != (h, w):
        raise ValueError(
            f"mask must be (B, 1, H, W) or (B, H, W) matching image {tuple(x.shape)}, got {tuple(mask.shape)}"
        )
    valid = mask.to(device=x.device, dtype=torch.bool).expand(b, h, w)
    if require_any and not bool(valid.reshape(b, -1).any(dim=1).all()):
        raise ValueError("mask leaves an image with no valid pixel: its statistics are undefined")
    return valid


def _masked_mean(flat: Tensor, sel: Tensor) -> Tensor:
    """Mean of flat (B, C, N) over the N-positions where sel (B, N) is True."""
    w = sel.to(flat.dtype)[:, None, :]
    return (flat * w).sum(-1) / w.sum(-1).clamp_min(1.0)


def _ambient_light(x: Tensor, coef: Tensor, valid: Tensor, fraction: float) -> tuple[Tensor, Tensor]:
    """Mean input colour over each image's top `fraction` of valid pixels by coefficient, and the smallest
    coefficient among them (the reflection threshold)."""
    b, ch = x.shape[:2]
    flat_c = coef.reshape(b, -1)
    flat_x = x.reshape(b, ch, -1)
    valid = valid.reshape(b, -1)
    flat_c = torch.where(valid, flat_c, torch.full_like(flat_c, -torch.inf))
    k_each = (valid.sum(1).to(torch.float64) * fraction).floor().long().clamp_min(1)
    k = int(k_each.max())
    top, idx = flat_c.topk(k, dim=1)
    keep = torch.arange(k, device=x.device)[None, :] < k_each[:, None]
    picked = flat_x.gather(2, idx[:, None, :].expand(b, ch, k))
    airlight = _masked_mean(picked, keep)
    threshold = top.gather(1, (k_each - 1)[:, None]).squeeze(1)
    return airlight, threshold


def _masked_quantiles(x: Tensor, valid: Tensor, q: Tensor) -> Tensor:
    """Per-band quantiles (B, C, len(q)) over valid pixels, linear interpolation between order statistics (NumPy's
    default). Sorting instead of torch.quantile, which refuses inputs above 2**24 elements."""
    b, ch = x.shape[:2]
    flat = x.reshape(b, ch, -1)
    valid = valid.reshape(b, -1)
    out = []
    for i in range(b):  # images can have different numbers of valid pixels
        v = flat[i][:, valid[i]].sort(dim=1).values
        pos = q.to(v.device) * (v.shape[1] - 1)
        lo = pos.floor().long()
        hi = pos.ceil().long()
        frac = (pos - lo).to(v.dtype)
        out.append(v[:, lo] + (v[:, hi] - v[:, lo]) * frac)
    return torch.stack(out)


def _broadcast_stats(stats: dict[str, Tensor], x: Tensor, need_stretch: bool) -> dict[str, Tensor]:
    """Check the statistics against x and broadcast a single scene's statistics over a batch of tiles."""
    b, ch = x.shape[:2]
    keys = ["spectrum", "airlight", "threshold"] + (["low", "high"] if need_stretch else [])
    missing = [k for k in keys if k not in stats]
    if missing:
        raise ValueError(f"stats lack {missing}; compute them with scene_statistics() using the same config")
    out = {}
    for k in keys:
        v = torch.as_tensor(stats[k]).to(device=x.device, dtype=x.dtype)
        if k == "threshold":
            v = v.reshape(-1)
            expect = (1,) if v.shape[0] == 1 else (b,)
        else:
            if v.ndim == 1:
                v = v[None]
            expect = (v.shape[0], ch)
            if v.shape[1] != ch:
                raise ValueError(f"stats[{k!r}] has {v.shape[1]} bands, image has {ch}")
        if v.shape[0] not in (1, b) or tuple(v.shape) != expect:
            raise ValueError(f"stats[{k!r}] of shape {tuple(v.shape)} does not fit a batch of {b} images")
        out[k] = v.expand(b, *v.shape[1:]) if v.shape[0] == 1 else v
    return out
