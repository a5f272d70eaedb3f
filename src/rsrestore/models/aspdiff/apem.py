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

Two additions, both switchable (assumptions, not in the paper):

* ``guided_radius``: t0 is smoothed by the guided filter (guide = the hazy image) before f_t, as the dark channel
  prior itself does, so f_t corrects an edge-aware map instead of relearning edge-aware upsampling of a blocky one.
  0 gives the paper's patch-wise t0.
* ``band_exponents``: haze is thicker in blue than in red (Angstrom's law, t_c = t^(gamma_c)); f_A also returns a
  per-band exponent gamma_c (1 at the start) and the inversion uses t^(gamma_c) for band c. With a single
  wavelength-independent t (the paper's model) set it False.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...physics.dark_channel import atmospheric_light, dark_channel, refined_transmission
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


class Priors(NamedTuple):
    """Atmospheric priors of a batch. ``exponent`` (B, C) is None for a single wavelength-independent t."""

    t: Tensor  # (B, 1, H, W) refined transmission in (0, 1]
    airlight: Tensor  # (B, C) refined atmospheric light
    t0: Tensor  # (B, 1, H, W) initial transmission (after the optional guided filter)
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
    """Atmospheric prior estimation: ``forward(x, airlight0=None, stats=None) -> Priors``.

    ``airlight0`` (B, C) or (C,): the scene-level initial atmospheric light when ``x`` is a tile of a larger scene
    (otherwise it is estimated from ``x``); f_A then runs on ``x``. ``stats``: the output of :meth:`scene_airlight`
    on the whole scene (A0, refined A, exponents), which every tile of the scene should get so tiles agree.
    """

    def __init__(self, cfg: APEMConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or APEMConfig()
        if cfg.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {cfg.in_channels}")
        if not 0.0 < cfg.t_min < 1.0:
            raise ValueError(f"t_min must be in (0, 1), got {cfg.t_min}")
        self.f_t = TransmissionRefiner(cfg.in_channels, cfg.width, tuple(cfg.dilations))
        self.f_a = AirlightRefiner(cfg.in_channels, cfg.width, cfg.airlight_hidden)

    @property
    def halo(self) -> int:
        """Context a tile needs on each side for the whole-image transmission: the dark-channel window, the guided
        filter's two box filters, then f_t's receptive field."""
        c = self.cfg
        return c.patch // 2 + 2 * c.guided_radius + (self.f_t.radius if c.refine_transmission else 0)

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
        t0 = self.initial_transmission(x, airlight0) if self.cfg.refine_airlight else None
        return self._refined_airlight(x, t0, airlight0, mask)

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

    def forward(self, x: Tensor, airlight0: Tensor | None = None, stats: dict[str, Tensor] | None = None) -> Priors:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"expected a (B, {self.cfg.in_channels}, H, W) tensor, got shape {tuple(x.shape)}")
        if stats is not None:
            a0 = _batched(stats["airlight0"], x)
        else:
            a0 = _batched(self.initial_airlight(x) if airlight0 is None else airlight0, x)
        t0 = self.initial_transmission(x, a0)
        if stats is None:  # f_A on this image, sharing its t0
            stats = self._refined_airlight(x, t0, a0, None)
        a = _batched(stats.get("airlight", a0), x)
        exponent = stats.get("exponent")
        if self.cfg.refine_transmission:
            base = t0.clamp(*T_LOGIT_CLAMP)
            t = torch.sigmoid(torch.logit(base) + self.f_t(x, base))
        else:
            t = t0.clamp_min(T_LOGIT_CLAMP[0])
        return Priors(t, a, t0, a0, None if exponent is None else _batched(exponent, x))

def _batched(v: Tensor, like: Tensor) -> Tensor:
    """A per-band (C,), (1, C) or (B, C) tensor as (B, C) on ``like``'s device and dtype."""
    v = as_airlight(v, like)[:, :, 0, 0] if v.ndim != 2 else v.to(like)
    if v.shape[0] == 1 and like.shape[0] > 1:
        v = v.expand(like.shape[0], -1)
    return v

