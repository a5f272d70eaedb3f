"""APEM, the atmospheric prior estimation module of ASPDiff (Zhang et al., "Atmospheric Scattering Prior embedded
Diffusion Model for remote sensing image dehazing", IEEE TGRS 2022), and its prior-consistency loss.

No code accompanies the paper; this follows its equations, and every value its text leaves open is marked
"assumption" below.

1. Initial priors from the dark channel prior (He et al., TPAMI 2011): the dark channel over a 15 x 15 patch, the
   atmospheric light A0 among the brightest 0.1 % of it, and t0 = 1 - 0.95 dark(I / A0).
2. Two light networks correct them:

   * f_t takes (I, t0) and returns a refined transmission t in (0, 1]: a residual on the logit of the initial map,
     from a small fully convolutional network of dilated 3 x 3 convolutions (dilations 1, 2, 4, 8; receptive field
     35 x 35). It is translation-equivariant and local, so a tile read with a halo of :attr:`APEM.halo` pixels gives
     exactly the whole-image map.
   * f_A takes (I, A0) and returns a refined per-band atmospheric light: pixel-wise features of (I, t0) averaged
     over the image (global pooling), with the bands' means and spreads and A0, through an MLP that adds a bounded
     correction to A0. A scene-wide quantity: when a scene is restored in tiles, it is computed once on the whole
     (decimated) scene (:meth:`APEM.scene_airlight`) and handed to every tile.

   Both networks' last layers start at zero, so an untrained APEM returns the dark channel prior's own priors.
3. The prior-consistency loss || (I - A (1 - t)) / max(t, eps) - J ||_1 against the clean image J, plus an optional
   total-variation term on t (:func:`apem_loss`).

Three additions, all switchable (assumptions, not in the paper):

* ``guided_radius``: t0 is smoothed by the guided filter (guide = the hazy image) before f_t, as the dark channel
  prior itself does, so f_t corrects an edge-aware map instead of relearning edge-aware upsampling of a blocky one
  (with ``ft_scale`` > 1 the filter comes after f_t instead, see below). 0 gives the paper's patch-wise t0.
* ``band_exponents``: haze is thicker in blue than in red (Angstrom's law, t_c = t^(gamma_c)); f_A also returns a
  per-band exponent gamma_c (1 at the start) and the inversion uses t^(gamma_c) for band c. With a single
  wavelength-independent t (the paper's model) set it False.
* ``ft_scale``: f_t (and f_A's pixel features) run on means over ``ft_scale`` x ``ft_scale`` blocks of the image
  and of the patch-wise estimate t_est = 1 - omega dark(I / A0). Transmission is smooth, and at full resolution f_t
  cost as much as the whole dark channel prior. f_t's correction of the reduced map, upsampled (bilinear), is added
  to t_est before the one guided filter the dark channel prior runs anyway (guide = the full-resolution image), so
  that filter brings the refined transmission back to full resolution along the image's edges:
  t = GF(I, t_est + up(sigmoid(logit(t0') + f_t(I', t0')) - t0')), with I', t0' the block means. A zero f_t still
  gives the dark channel prior's map exactly. 1 is the original full-resolution f_t (a residual on the logit of the
  guided full-resolution t0), which weights trained before this option need; None (the field's default) leaves the
  choice to the owner: the ``apem`` method uses 2, ASPDiff (whose weights were trained at full resolution) 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...physics.dark_channel import (
    atmospheric_light,
    dark_channel,
    guided_refinement,
    refined_transmission,
    transmission_estimate,
)
from ...physics.scattering import as_airlight, haze_inverse

__all__ = ["APEM", "APEMConfig", "Priors", "apem_loss", "band_transmission", "invert_priors", "total_variation"]

T_LOGIT_CLAMP = (1e-3, 1.0 - 1e-4)  # the initial map is clamped here before its logit (finite residual base)


@dataclass
class APEMConfig:
    in_channels: int = 3  # bands of the image (any count)
    width: int = 16  # hidden width of f_t and of f_A's pixel features (assumption: "light" networks)
    dilations: tuple[int, ...] = (1, 2, 4, 8)  # f_t's hidden 3x3 convolutions (assumption)
    airlight_hidden: int = 32  # hidden units of f_A's MLP (assumption)
    patch: int = 15  # dark-channel window (paper: 15 x 15)
    omega: float = 0.95  # fraction of haze the initial transmission removes (paper: 0.95)
    top_fraction: float = 0.001  # brightest 0.1 % of the dark channel pick A0 (paper)
    t_min: float = 0.05  # floor of t when inverting the scattering model (assumption)
    guided_radius: int = 20  # guided filter on t0 before f_t; 0 = the paper's patch-wise t0 (assumption)
    guided_eps: float = 1e-3  # guided filter regulariser (assumption)
    max_airlight_shift: float = 0.3  # f_A moves A0 by at most this much per band (tanh-bounded; assumption)
    band_exponents: bool = True  # per-band transmission t^(gamma_c) (Angstrom's law; assumption, not in the paper)
    refine_transmission: bool = True  # False: t = the initial map (the paper's "DCP priors without refinement")
    refine_airlight: bool = True  # False: A = A0 (and gamma = 1)
    tv_weight: float = 0.01  # weight of the total variation of t in the training loss (assumption)
    ft_scale: int | None = None  # f_t / f_A at 1/ft_scale of the resolution; 1 = full (pre-option weights); None:
    # the owner decides (APEMDehazer: DEFAULT_FT_SCALE; ASPDiff: 1). See the module docstring.


class Priors(NamedTuple):
    """Atmospheric priors of a batch. ``exponent`` (B, C) is None for a single wavelength-independent t."""

    t: Tensor  # (B, 1, H, W) refined transmission in (0, 1]
    airlight: Tensor  # (B, C) refined atmospheric light
    t0: Tensor  # (B, 1, H, W) initial transmission (after the optional guided filter; with ft_scale > 1 and f_t on:
    # the patch-wise estimate 1 - omega dark(I / A0) that f_t's correction is added to before the filter)
    airlight0: Tensor  # (B, C) initial atmospheric light
    exponent: Tensor | None = None  # (B, C) per-band exponent gamma_c: band c sees t ** gamma_c


def band_transmission(priors: Priors) -> Tensor:
    """The transmission each band sees: t (B, 1, H, W), or t^(gamma_c) (B, C, H, W) with per-band exponents."""
    if priors.exponent is None:
        return priors.t
    return priors.t ** priors.exponent[:, :, None, None].to(priors.t)


def invert_priors(hazy: Tensor, priors: Priors, t_min: float) -> Tensor:
    """J = (I - A (1 - t)) / max(t, t_min), the scattering model inverted with the priors (not clamped)."""
    return haze_inverse(hazy, band_transmission(priors), priors.airlight, t_min=t_min)


def total_variation(x: Tensor) -> Tensor:
    """Mean absolute difference between horizontal and vertical neighbours (anisotropic total variation)."""
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean() if x.shape[-2] > 1 else x.new_zeros(())
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean() if x.shape[-1] > 1 else x.new_zeros(())
    return dx + dy


def apem_loss(hazy: Tensor, priors: Priors, clean: Tensor, *, eps: float = 0.05, tv_weight: float = 0.0) -> Tensor:
    """The prior-consistency loss || (I - A (1 - t)) / max(t, eps) - J ||_1 (mean over pixels and bands), plus
    ``tv_weight`` times the total variation of t.

    With the t and A that synthesised the haze (t >= eps), the inverse is J exactly and the loss is 0. ``eps``
    (assumption: 0.05, the floor of the project's haze synthesis) keeps 1 / t and its gradient bounded.
    """
    recovered = invert_priors(hazy.float(), priors._replace(t=priors.t.float()), t_min=eps)
    loss = (recovered - clean.float()).abs().mean()
    if tv_weight:
        loss = loss + tv_weight * total_variation(priors.t.float())
    return loss


class TransmissionRefiner(nn.Module):
    """f_t: (I, t_init) -> a residual on logit(t_init). Dilated 3x3 convolutions, replicate padding, zero-initialised
    output (so the refined map starts as the initial one)."""

    def __init__(self, in_channels: int, width: int, dilations: tuple[int, ...]):
        super().__init__()
        self.head = nn.Conv2d(in_channels + 1, width, 3, padding=1, padding_mode="replicate")
        self.body = nn.ModuleList(
            nn.Conv2d(width, width, 3, padding=d, dilation=d, padding_mode="replicate") for d in dilations
        )
        self.tail = nn.Conv2d(width, 1, 3, padding=1, padding_mode="replicate")
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)
        self.radius = 1 + sum(dilations) + 1  # pixels of context each output pixel depends on

    def forward(self, image: Tensor, t_init: Tensor) -> Tensor:
        h = torch.cat([image, t_init], dim=1)
        if image.is_contiguous(memory_format=torch.channels_last):  # cat with a 1-band map loses the layout
            h = h.contiguous(memory_format=torch.channels_last)
        h = F.leaky_relu(self.head(h), 0.1, inplace=True)
        for conv in self.body:
            h = h + F.leaky_relu(conv(h), 0.1, inplace=True)
        return self.tail(h)


class AirlightRefiner(nn.Module):
    """f_A: (I, t0, A0) -> a bounded shift of A0 and the log of the per-band exponents. Global pooling of pixel-wise
    features (valid pixels only) and of the bands' means and standard deviations, then an MLP with a zero-initialised
    output layer."""

    def __init__(self, in_channels: int, width: int, hidden: int):
        super().__init__()
        self.pixel = nn.Conv2d(in_channels + 1, width, 1)
        self.mlp = nn.Sequential(nn.Linear(width + 3 * in_channels, hidden), nn.LeakyReLU(0.1),
                                 nn.Linear(hidden, 2 * in_channels))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, image: Tensor, t0: Tensor, airlight0: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        feats = F.leaky_relu(self.pixel(torch.cat([image, t0], dim=1)), 0.1)
        if mask is None:
            pooled = feats.mean(dim=(2, 3))
            mean, std = image.mean(dim=(2, 3)), image.std(dim=(2, 3), unbiased=False)
        else:
            w = mask.to(image.dtype)
            n = w.sum(dim=(2, 3)).clamp_min(1.0)
            pooled = (feats * w).sum(dim=(2, 3)) / n
            mean = (image * w).sum(dim=(2, 3)) / n
            std = (((image - mean[:, :, None, None]) ** 2 * w).sum(dim=(2, 3)) / n).sqrt()
        out = self.mlp(torch.cat([pooled, mean, std, airlight0], dim=1))
        shift, log_exponent = out.chunk(2, dim=1)
        return shift, log_exponent


class APEM(nn.Module):
    """Atmospheric prior estimation: ``forward(x, airlight0=None, stats=None, origins=None) -> Priors``.

    ``airlight0`` (B, C) or (C,): the scene-level initial atmospheric light when ``x`` is a tile of a larger scene
    (otherwise it is estimated from ``x``); f_A then runs on ``x``. ``stats``: the output of :meth:`scene_airlight`
    on the whole scene (A0, refined A, exponents), which every tile of the scene should get so tiles agree.
    ``origins``: the scene position (y0, x0) of each tile of the batch; with ``ft_scale`` > 1 the reduced-resolution
    blocks then fall on the scene's block grid, so a tile's transmission is the whole image's (None: each image is a
    scene of its own).
    """

    def __init__(self, cfg: APEMConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or APEMConfig()
        if cfg.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {cfg.in_channels}")
        if not 0.0 < cfg.t_min < 1.0:
            raise ValueError(f"t_min must be in (0, 1), got {cfg.t_min}")
        scale = 1 if cfg.ft_scale is None else cfg.ft_scale
        if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
            raise ValueError(f"ft_scale must be a positive integer (or None), got {cfg.ft_scale!r}")
        self.ft_scale = scale
        self.f_t = TransmissionRefiner(cfg.in_channels, cfg.width, tuple(cfg.dilations))
        self.f_a = AirlightRefiner(cfg.in_channels, cfg.width, cfg.airlight_hidden)

    @property
    def reduced(self) -> bool:
        """Whether the networks run at a reduced resolution (``ft_scale`` > 1)."""
        return self.ft_scale > 1

    @property
    def halo(self) -> int:
        """Context a tile needs on each side for the whole-image transmission: the dark-channel window, the guided
        filter's two box filters, then f_t's receptive field (at reduced resolution: times ``ft_scale``, plus a block
        for the upsampling, one for the block-grid alignment and one for a partial block at the read's edge)."""
        c, s = self.cfg, self.ft_scale
        halo = c.patch // 2 + 2 * c.guided_radius
        if c.refine_transmission:
            halo += self.f_t.radius if s == 1 else s * (self.f_t.radius + 3)
        return halo

    def initial_transmission(self, x: Tensor, airlight0: Tensor) -> Tensor:
        """t0 = 1 - omega dark(I / A0), guided-filtered when ``guided_radius`` > 0, clamped to [0, 1]."""
        c = self.cfg
        return refined_transmission(x, airlight0, omega=c.omega, patch=c.patch, guided_radius=c.guided_radius,
                                    guided_eps=c.guided_eps)

    def initial_airlight(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        c = self.cfg
        return atmospheric_light(x, dark_channel(x, c.patch), fraction=c.top_fraction, mask=mask)

    def scene_airlight(self, x: Tensor, mask: Tensor | None = None, airlight0: Tensor | None = None) -> dict[str, Tensor]:
        """Scene-level atmospheric light: {"airlight0": A0, "airlight": refined A, "exponent": gamma (when
        ``band_exponents``)}, all (B, C). ``mask`` (B, 1, H, W) True = valid pixel; invalid pixels feed neither A0
        nor f_A's pooling."""
        if airlight0 is None:
            airlight0 = self.initial_airlight(x, mask)
        airlight0 = _batched(airlight0, x)
        if not self.cfg.refine_airlight:
            return self._refined_airlight(x, None, airlight0, mask)
        if not self.reduced:
            return self._refined_airlight(x, self.initial_transmission(x, airlight0), airlight0, mask)
        small, t0_small = self._reduced_priors(x, self._estimate(x, airlight0), 0, 0)
        weight = None if mask is None else F.avg_pool2d(mask.to(x.dtype), self.ft_scale, ceil_mode=True)
        return self._refined_airlight(small, t0_small, airlight0, weight)

    def _refined_airlight(self, x: Tensor, t0: Tensor | None, airlight0: Tensor, mask: Tensor | None) -> dict:
        c = self.cfg
        out = {"airlight0": airlight0, "airlight": airlight0}
        if c.refine_airlight:
            shift, log_exponent = self.f_a(x, t0, airlight0, mask)
            # Within the value range: an airlight above saturation would darken and tint saturated clouds.
            out["airlight"] = (airlight0 + c.max_airlight_shift * torch.tanh(shift)).clamp(1e-3, 1.0)
            if c.band_exponents:
                out["exponent"] = torch.exp(log_exponent.clamp(-2.0, 2.0))
        return out

    def _estimate(self, x: Tensor, airlight0: Tensor) -> Tensor:
        c = self.cfg
        return transmission_estimate(x, airlight0, omega=c.omega, patch=c.patch)

    def _reduced_priors(self, x: Tensor, t_est: Tensor, crop_y: int, crop_x: int) -> tuple[Tensor, Tensor]:
        """The image and the initial map at 1/ft_scale: means over ``ft_scale`` x ``ft_scale`` blocks of ``x`` and of
        the patch-wise estimate, blocks from row ``crop_y`` and column ``crop_x`` on (the scene's block grid). The
        map is not guided-filtered there: the full-resolution filter after f_t does that (a filter at the reduced
        resolution cost more than f_t, and the weights trained on guided maps lose < 0.1 dB without it)."""
        s = self.ft_scale
        small = F.avg_pool2d(x[..., crop_y:, crop_x:], s, ceil_mode=True)  # partial edge blocks: their own mean
        return small, F.avg_pool2d(t_est[..., crop_y:, crop_x:], s, ceil_mode=True).clamp(0.0, 1.0)

    def _upsampled(self, v: Tensor, size: tuple[int, int], crop_y: int, crop_x: int) -> Tensor:
        """Inverse of :meth:`_reduced_priors`' block means: bilinear to full resolution (block centres on the block
        grid), the ``crop_y`` / ``crop_x`` rows and columns before the grid's first block edge-replicated."""
        h, w = size
        up = F.interpolate(v, scale_factor=self.ft_scale, mode="bilinear", align_corners=False)
        up = up[..., : h - crop_y, : w - crop_x]
        return F.pad(up, (crop_x, 0, crop_y, 0), mode="replicate") if crop_y or crop_x else up

    def _reduced_correction(self, small: Tensor, t0_small: Tensor) -> Tensor:
        """f_t's correction of the reduced initial map, in transmission units: exactly 0 for a zero f_t output."""
        base = t0_small.clamp(*T_LOGIT_CLAMP)
        logit0 = torch.logit(base)
        return torch.sigmoid(logit0 + self.f_t(small, base)) - torch.sigmoid(logit0)

    def forward(self, x: Tensor, airlight0: Tensor | None = None, stats: dict[str, Tensor] | None = None,
                origins: list[tuple[int, int]] | None = None) -> Priors:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"expected a (B, {self.cfg.in_channels}, H, W) tensor, got shape {tuple(x.shape)}")
        if stats is not None:
            a0 = _batched(stats["airlight0"], x)
        else:
            a0 = _batched(self.initial_airlight(x) if airlight0 is None else airlight0, x)
        if self.reduced:
            return self._reduced_forward(x, a0, stats, origins)
        t0 = self.initial_transmission(x, a0)
        if stats is None:  # f_A on this image, sharing its t0
            stats = self._refined_airlight(x, t0, a0, None)
        if self.cfg.refine_transmission:
            base = t0.clamp(*T_LOGIT_CLAMP)
            t = torch.sigmoid(torch.logit(base) + self.f_t(x, base))
        else:
            t = t0.clamp_min(T_LOGIT_CLAMP[0])
        return self._priors(t, t0, a0, stats, x)

    def _reduced_forward(self, x: Tensor, a0: Tensor, stats: dict | None, origins) -> Priors:
        """``ft_scale`` > 1: f_t (and f_A, without ``stats``) on block means, then the one full-resolution guided
        filter. Without ``stats`` every image is a scene of its own (``origins`` are not used)."""
        c = self.cfg
        t_est = self._estimate(x, a0)
        passes = None
        if stats is None:
            origins = None
            if c.refine_airlight:  # f_A on the reduced copy, as scene_airlight does; the same pass serves f_t
                small, t0_small = self._reduced_priors(x, t_est, 0, 0)
                passes = [((0, 0), None, small, t0_small)]
                stats = self._refined_airlight(small, t0_small, a0, None)
            else:
                stats = self._refined_airlight(x, None, a0, None)
        if not c.refine_transmission:
            t0 = guided_refinement(x, t_est, c.guided_radius, c.guided_eps)  # the dark channel prior's map
            return self._priors(t0.clamp_min(T_LOGIT_CLAMP[0]), t0, a0, stats, x)
        return self._corrected(x, t_est, a0, stats, passes or self._reduced_passes(x, t_est, origins))

    def _reduced_passes(self, x: Tensor, t_est: Tensor, origins) -> list:
        """Reduced copies of the batch, one per offset of the scene's block grid in the tiles (``origins``)."""
        s = self.ft_scale
        crops = [(0, 0)] * x.shape[0] if origins is None else [((-oy) % s, (-ox) % s) for oy, ox in origins]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, crop in enumerate(crops):
            groups.setdefault(crop, []).append(i)
        passes = []
        for (cy, cx), index in groups.items():
            rows = None if len(groups) == 1 else index
            xs, ts = (x, t_est) if rows is None else (x[rows], t_est[rows])
            passes.append(((cy, cx), rows, *self._reduced_priors(xs, ts, cy, cx)))
        return passes

    def _corrected(self, x: Tensor, t_est: Tensor, a0: Tensor, stats: dict, passes: list) -> Priors:
        """t = GF(I, t_est + up(f_t's reduced correction)), one reduced pass per block-grid offset ``(crop, rows,
        small, t0_small)`` (``rows`` None: the whole batch). The priors' t0 is t_est, the map the filter starts from."""
        size = x.shape[-2:]
        correction = torch.empty_like(t_est) if len(passes) > 1 else None
        for (cy, cx), rows, small, t0_small in passes:
            up = self._upsampled(self._reduced_correction(small, t0_small), size, cy, cx)
            if correction is None:
                correction = up
            else:
                correction[rows] = up
        t = guided_refinement(x, t_est + correction, self.cfg.guided_radius, self.cfg.guided_eps, T_LOGIT_CLAMP[0])
        return self._priors(t, t_est, a0, stats, x)

    def _priors(self, t: Tensor, t0: Tensor, a0: Tensor, stats: dict, x: Tensor) -> Priors:
        a = _batched(stats.get("airlight", a0), x)
        exponent = stats.get("exponent")
        return Priors(t, a, t0, a0, None if exponent is None else _batched(exponent, x))


def _batched(v: Tensor, like: Tensor) -> Tensor:
    """A per-band (C,), (1, C) or (B, C) tensor as (B, C) on ``like``'s device and dtype."""
    v = as_airlight(v, like)[:, :, 0, 0] if v.ndim != 2 else v.to(like)
    if v.shape[0] == 1 and like.shape[0] > 1:
        v = v.expand(like.shape[0], -1)
    return v

