"""Sand-dust synthesis and the integrated variable Phi of AOSR-Net.

Si et al., "AOSR-Net: All-in-One Sandstorm Removal Network" (2023) write the sand-dust scattering model as

    I_s(x) = A_s + (J_s(x) - A'_s) t_s(x),   A'_s = 1 - A_s,   t_s(x) = exp(-beta d_s(x)),   beta ~ U[0.3, 0.6]

and fold its unknowns into one variable (Eq. 6)

    Phi(x) = (I_s - A_s + t_s (A'_s - b)) / (t_s (I_s - a)),   a = 1.6, b = 1

so that the clear image follows from the observed one by the linear map of Eq. 5

    J(x) = Phi(x) (I(x) - a) + b.

(The paper calls the constants alpha and beta; here they are ``alpha`` and ``beta`` in :func:`phi_target` and
:func:`restore_from_phi` and ``phi_alpha`` / ``phi_beta`` in :func:`synthesize_dust`, apart from the extinction
coefficient, which keeps the name beta in ``beta_range``.) a = 1.6 > 1 >= I keeps the denominator away from zero.

Note a property of this model: with A'_s = 1 - A_s, a dust-free view (t_s = 1) gives I = J + 2 A_s - 1, not J, so the
cast (A_s away from 0.5) colours the image even where the dust is thin, and with t_s -> 0 the image fades to A_s. Red
values are pushed up and can exceed 1 (on bright scenes under light dust up to about a fifth of the values); the
synthesised input is clipped to [0, 1], which is why :func:`synthesize_dust` returns the Phi that makes Eq. 5 exact
for the *clipped* input (identical to Eq. 6 wherever nothing was clipped).

Overhead imagery has no meaningful scene depth, so d_s comes from a smooth fractal field (mean d, spread s:
d_s = d (1 + s (2 n - 1)), n in [0, 1]) unless a depth map is supplied. Presets (``DUST_PRESETS``) set the mean dust
load d; beta ~ U[0.3, 0.6] and the spread s ~ U[0.2, 0.5] in all of them. The mean transmission they give (min-max
over 1,000 draws):

========  ===========  ============
preset    d            mean t_s
========  ===========  ============
light     [0.4, 1.0]   [0.55, 0.89]
moderate  [1.0, 2.2]   [0.27, 0.74]
heavy     [2.2, 4.0]   [0.10, 0.52]
========  ===========  ============

Colour library (``DUST_COLOURS``, sRGB in [0, 1], R, G, B). AOSR-Net draws A_s from a library of sand-dust casts; its
values were not available to this project, so the ones below are this project's own choice. Two constraints shaped
them:

* every cast has R > G > B: mineral dust (iron oxides) absorbs blue most and scatters red most, the cast that
  sand-dust restoration methods correct (e.g. Gao et al., "Sand-dust image restoration based on reversing the blue
  channel prior", IEEE Photonics J. 2020);
* in this model a thin veil (t_s -> 1) shifts the image by 2 A_s - 1 and a dense one (t_s -> 0) turns it into A_s, so
  the casts stay within about 0.5 +- 0.2: brighter casts (e.g. A_R = 0.85) saturate the red channel of every
  mid-tone already at light dust, which looked nothing like real dust when tried on the NEON/NAIP/EuroSAT scenes
  (``benchmarks/look_synthesis.py``). The dense-dust colour is then a dim tan/ochre, as in heavy storms.

Each draw is jittered by a brightness factor U[0.95, 1.05] and per channel by U[-0.03, 0.03].

=============  ===================  =========================================
name           A_s (R, G, B)        look
=============  ===================  =========================================
yellow         (0.68, 0.60, 0.42)   the common yellow sandstorm
pale_yellow    (0.66, 0.61, 0.50)   light, washed-out dust haze
orange         (0.70, 0.55, 0.38)   dense desert storm at low sun
brown          (0.60, 0.50, 0.38)   dark, heavy dust
reddish        (0.68, 0.50, 0.38)   red-clay dust (e.g. Australian storms)
ochre          (0.72, 0.58, 0.36)   saturated yellow-orange (realistic presets only)
beige          (0.64, 0.58, 0.48)   pale desert dust (realistic presets only)
grey_yellow    (0.60, 0.57, 0.50)   greyish dust haze (realistic presets only)
grey           (0.56, 0.54, 0.50)   grey dust over towns and loess (realistic presets only)
=============  ===================  =========================================

The light / moderate / heavy presets draw one of the first five (``CLASSIC_DUST_COLOURS``).

The realistic presets (``REALISTIC_DUST``, named after WMO's stages of a dust event) keep the model and the Phi target
and change what is drawn: the cast is a random blend of two casts of the preset's casts (a continuum: greys, beige and
pale yellow for suspended dust, the whole library for blowing dust, yellow to orange and brown for storms), and the
dust load comes from a :class:`~rsrestore.physics.noise.PatchyField` (plumes and veils at scales from 24 px to twice
the scene, streaks along a random wind direction), with ``depth_range`` the densest load d_s:

==========  ===========  ===========================================================================
preset      d_s max      field
==========  ===========  ===========================================================================
suspended   [0.3, 1.4]   a widespread veil, floor 0.3-0.8 of the peak; pale, beige and grey casts
blowing     [1.0, 3.2]   plumes (60 %) or veils, streaks 1.5-5x longer than wide, floor 0-0.4; any cast
storm       [2.4, 4.5]   dense over 60-95 % of the scene or a veil, streaks up to 3x, floor 0.55-0.9; no greys
==========  ===========  ===========================================================================

More than three bands: A_s(lambda) is interpolated piecewise-linearly through the casts' B (490 nm), G (560 nm) and R
(665 nm) values; below 490 nm it continues the B-G slope (clipped to >= 0.05); above 665 nm it is held at the R value,
since mineral-dust scattering is nearly flat in the near and short-wave infrared (the iron-oxide absorption that tints
dust lies below ~600 nm). The extinction coefficient beta is kept band-independent, as coarse dust has an Angstrom
exponent near 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import Tensor

from .haze import check_image, resolve_wavelengths
from .noise import PatchyField, fractal_noise, randint, uniform
from .scattering import as_airlight

__all__ = [
    "DUST_COLOURS",
    "CLASSIC_DUST_COLOURS",
    "REALISTIC_DUST",
    "DustPreset",
    "DUST_PRESETS",
    "PHI_ALPHA",
    "PHI_BETA",
    "dust_forward",
    "dust_colour_spectrum",
    "phi_target",
    "phi_from_clean",
    "restore_from_phi",
    "synthesize_dust",
]

PHI_ALPHA = 1.6
PHI_BETA = 1.0

DUST_COLOURS: dict[str, tuple[float, float, float]] = {
    "yellow": (0.68, 0.60, 0.42),
    "pale_yellow": (0.66, 0.61, 0.50),
    "orange": (0.70, 0.55, 0.38),
    "brown": (0.60, 0.50, 0.38),
    "reddish": (0.68, 0.50, 0.38),
    "ochre": (0.72, 0.58, 0.36),
    "beige": (0.64, 0.58, 0.48),
    "grey_yellow": (0.60, 0.57, 0.50),
    "grey": (0.56, 0.54, 0.50),
}
#: The casts the light / moderate / heavy presets draw from (one per sample, as first published here).
CLASSIC_DUST_COLOURS: tuple[str, ...] = ("yellow", "pale_yellow", "orange", "brown", "reddish")

_RGB_ANCHORS_NM = (490.0, 560.0, 665.0)  # B, G, R


@dataclass(frozen=True)
class DustPreset:
    """Ranges for one dust realisation; beta follows the paper, the dust load d is the preset's own."""

    depth_range: tuple[float, float]  # image-mean d of d_s(x)
    spread_range: tuple[float, float] = (0.2, 0.5)  # non-uniformity of d_s(x)
    beta_range: tuple[float, float] = (0.3, 0.6)  # extinction coefficient (AOSR-Net: U[0.3, 0.6])
    brightness_range: tuple[float, float] = (0.95, 1.05)
    colour_jitter: float = 0.03
    octaves: int = 4
    persistence: float = 0.5
    colours: tuple[str, ...] = CLASSIC_DUST_COLOURS  # library casts drawn from
    mix_colours: bool = False  # cast = a random blend of two library casts (a continuum) rather than one of them
    field: PatchyField | None = None  # None: one smooth field of mean ``depth_range``; else plumes, ``depth_range``
    #                                   being the densest dust load

    def to_dict(self) -> dict:
        return asdict(self)


_ALL_CASTS = tuple(DUST_COLOURS)

DUST_PRESETS: dict[str, DustPreset] = {
    "light": DustPreset(depth_range=(0.4, 1.0)),
    "moderate": DustPreset(depth_range=(1.0, 2.2)),
    "heavy": DustPreset(depth_range=(2.2, 4.0)),
    # Realistic dust (WMO's names for the three stages): the whole yellow-orange-grey range of casts as blends of the
    # library's, and non-uniform loads from a PatchyField.
    # suspended dust haze: a thin, widespread veil, pale or greyish (saturated casts turn dark ground olive-brown)
    "suspended": DustPreset(depth_range=(0.3, 1.4), colours=("pale_yellow", "beige", "grey_yellow", "grey"),
                            mix_colours=True,
                            field=PatchyField(bank_probability=0.0, floor_range=(0.3, 0.8))),
    # blowing dust: plumes and streaks raised by the wind, sharp or soft, over clearer ground
    "blowing": DustPreset(depth_range=(1.0, 3.2), colours=_ALL_CASTS, mix_colours=True,
                          field=PatchyField(bank_probability=0.6, floor_range=(0.0, 0.4), stretch_range=(1.5, 5.0),
                                            edge_range=(0.01, 0.12))),
    # dust storm: a dense load over most of the scene, yellow to orange-brown
    "storm": DustPreset(depth_range=(2.4, 4.5), mix_colours=True,
                        colours=("yellow", "orange", "ochre", "brown", "reddish", "beige", "pale_yellow"),
                        field=PatchyField(bank_probability=0.3, coverage_range=(0.6, 0.95), floor_range=(0.55, 0.9),
                                          stretch_range=(1.0, 3.0))),
}

#: The presets of real-looking dust (``preset="realistic"`` in :mod:`rsrestore.synthesize` draws among them).
REALISTIC_DUST: tuple[str, ...] = ("suspended", "blowing", "storm")


def dust_colour_spectrum(rgb: Sequence[float] | Tensor, wavelengths_nm: Sequence[float]) -> Tensor:
    """A sand-dust cast given as (R, G, B) evaluated at band centres (see the module docstring); returns (C,) float64.

    `rgb` may also be (B, 3), giving (B, C).
    """
    rgb_t = torch.as_tensor(rgb, dtype=torch.float64)
    squeeze = rgb_t.ndim == 1
    rgb_t = rgb_t.reshape(-1, 3)
    wl = torch.as_tensor(wavelengths_nm, dtype=torch.float64)
    b_, g_, r_ = rgb_t[:, 2:3], rgb_t[:, 1:2], rgb_t[:, 0:1]
    lb, lg, lr = _RGB_ANCHORS_NM
    below = b_ + (g_ - b_) * (wl - lb) / (lg - lb)  # also the B-G segment, and its extension below 490 nm
    between = g_ + (r_ - g_) * (wl - lg) / (lr - lg)
    out = torch.where(wl <= lg, below, torch.where(wl <= lr, between, r_.expand(-1, wl.numel())))
    out = out.clamp(0.05, 1.0)
    return out[0] if squeeze else out


def dust_forward(clear: Tensor, transmission: Tensor, airlight: Tensor) -> Tensor:
    """The AOSR-Net sand-dust scattering model I = A + (J - (1 - A)) t, unclipped. airlight (B, C) or (B, C, 1, 1)."""
    a = as_airlight(airlight, clear)
    return a + (clear - (1.0 - a)) * transmission


def phi_target(I: Tensor, A: Tensor, t: Tensor, alpha: float = PHI_ALPHA, beta: float = PHI_BETA) -> Tensor:
    """AOSR-Net Eq. 6: Phi = (I - A + t (A' - beta)) / (t (I - alpha)), A' = 1 - A.

    I (B, C, H, W); A (B, C) or (B, C, 1, 1); t (B, 1, H, W) or (B, C, H, W). Requires I < alpha everywhere.
    """
    if not alpha > 1.0:
        raise ValueError(f"alpha must exceed the largest image value (1); got {alpha}")
    a = as_airlight(A, I)
    return (I - a + t * ((1.0 - a) - beta)) / (t * (I - alpha))


def phi_from_clean(clean: Tensor, I: Tensor, alpha: float = PHI_ALPHA, beta: float = PHI_BETA) -> Tensor:
    """The Phi that makes Eq. 5 reproduce `clean` from `I` exactly: Phi = (J - beta) / (I - alpha)."""
    if not alpha > 1.0:
        raise ValueError(f"alpha must exceed the largest image value (1); got {alpha}")
    return (clean - beta) / (I - alpha)


def restore_from_phi(I: Tensor, phi: Tensor, alpha: float = PHI_ALPHA, beta: float = PHI_BETA) -> Tensor:
    """AOSR-Net Eq. 5: J = Phi (I - alpha) + beta."""
    return phi * (I - alpha) + beta


def _preset(preset: str | DustPreset) -> tuple[str, DustPreset]:
    if isinstance(preset, DustPreset):
        return "custom", preset
    if preset not in DUST_PRESETS:
        raise ValueError(f"unknown dust preset {preset!r}; choose one of {sorted(DUST_PRESETS)} or pass a DustPreset")
    return preset, DUST_PRESETS[preset]


def synthesize_dust(
    clear: Tensor,
    generator: torch.Generator,
    depth: Tensor | None = None,
    beta_range: tuple[float, float] | None = None,
    preset: str | DustPreset = "moderate",
    colour: str | Sequence[float] | None = None,
    wavelengths_nm: Sequence[float] | None = None,
    phi_alpha: float = PHI_ALPHA,
    phi_beta: float = PHI_BETA,
) -> dict:
    """Add a sand-dust cast and veil to `clear` (B, C, H, W) in [0, 1] by the AOSR-Net sand-dust scattering model.

    Args:
        depth: optional d_s map, (B, 1, H, W) or (1, 1, H, W), used as given (t_s = exp(-beta d_s)); by default a
            fractal field whose mean is drawn from the preset's ``depth_range``.
        beta_range: overrides the preset's extinction range (the paper's U[0.3, 0.6]).
        colour: a ``DUST_COLOURS`` name or an (R, G, B) cast; by default one is drawn from the library per sample.
        wavelengths_nm: band centres for images that are not RGB (see :mod:`rsrestore.physics.haze` for defaults).

    Returns a dict with ``input`` (clipped to [0, 1]), ``phi`` (the Eq. 5 target for that input), ``transmission``
    (B, 1, H, W), ``airlight`` (A_s, (B, C)) and ``params`` (JSON-ready, one entry per sample).
    """
    check_image(clear)
    name, p = _preset(preset)
    b, c, h, w = clear.shape
    wl = resolve_wavelengths(c, wavelengths_nm)
    dev, dt = clear.device, clear.dtype
    lo, hi = p.beta_range if beta_range is None else beta_range
    if not 0.0 <= lo <= hi:
        raise ValueError(f"beta_range must be (low, high) with 0 <= low <= high; got {(lo, hi)}")

    names = list(DUST_COLOURS)
    beta = uniform(generator, b, lo, hi)
    colour_names: list[str] = []
    casts = []
    for _ in range(b):
        if colour is None and p.mix_colours:
            first, second = (p.colours[randint(generator, len(p.colours))] for _ in range(2))
            share = float(uniform(generator, 1)[0])
            colour_names.append(f"{first}+{second}" if first != second else first)
            casts.append(tuple(share * u + (1.0 - share) * v
                               for u, v in zip(DUST_COLOURS[first], DUST_COLOURS[second])))
        elif colour is None:
            cname = p.colours[randint(generator, len(p.colours))]
            colour_names.append(cname)
            casts.append(DUST_COLOURS[cname])
        elif isinstance(colour, str):
            if colour not in DUST_COLOURS:
                raise ValueError(f"unknown dust colour {colour!r}; choose one of {names} or pass (R, G, B)")
            colour_names.append(colour)
            casts.append(DUST_COLOURS[colour])
        else:
            rgb = tuple(float(v) for v in colour)
            if len(rgb) != 3 or not all(0.0 <= v <= 1.0 for v in rgb):
                raise ValueError(f"colour must be a name or (R, G, B) in [0, 1]; got {colour!r}")
            colour_names.append("custom")
            casts.append(rgb)
    bright = uniform(generator, b, *p.brightness_range)
    jit = uniform(generator, (b, 3), -p.colour_jitter, p.colour_jitter)
    rgb = (torch.tensor(casts, dtype=torch.float64) * bright[:, None] + jit).clamp(0.0, 1.0)
    airlight = dust_colour_spectrum(rgb, wl)  # (B, C)

    if depth is None and p.field is not None:
        dpeak = uniform(generator, b, *p.depth_range)
        shape, drawn = p.field.draw(b, h, w, generator, device=dev, dtype=dt)
        d = shape * dpeak.to(dev, dt).view(b, 1, 1, 1)
        depth_info = {"depth_mean": d.flatten(1).mean(1).double().cpu().tolist(), "depth_peak": dpeak.tolist(),
                      "spread": None, **drawn}
    elif depth is None:
        dmean = uniform(generator, b, *p.depth_range)
        spread = uniform(generator, b, *p.spread_range)
        n = fractal_noise(b, h, w, generator, octaves=p.octaves, persistence=p.persistence,
                          base_scale=max(h, w, 4), device=dev, dtype=dt)
        d = 1.0 + spread.to(dev, dt).view(b, 1, 1, 1) * (2.0 * n - 1.0)
        d = d / d.mean(dim=(2, 3), keepdim=True) * dmean.to(dev, dt).view(b, 1, 1, 1)
        depth_info = {"depth_mean": dmean.tolist(), "spread": spread.tolist()}
    else:
        if depth.ndim != 4 or depth.shape[1] != 1 or depth.shape[-2:] != (h, w) or depth.shape[0] not in (1, b):
            raise ValueError(f"depth must be (B, 1, H, W) or (1, 1, H, W) matching {tuple(clear.shape)}; "
                             f"got {tuple(depth.shape)}")
        if (depth < 0).any():
            raise ValueError("depth must be non-negative")
        d = depth.to(dev, dt).expand(b, 1, h, w)
        depth_info = {"depth_mean": d.flatten(1).mean(1).double().cpu().tolist(), "spread": None}

    t = torch.exp(-beta.to(dev, dt).view(b, 1, 1, 1) * d)
    a = airlight.to(dev, dt)
    dusty = dust_forward(clear, t, a).clamp(0.0, 1.0)
    phi = phi_from_clean(clear, dusty, phi_alpha, phi_beta)

    params = {
        "kind": "dust",
        "preset": name,
        "beta": beta.tolist(),
        "colour": colour_names,
        "cast_rgb": rgb.tolist(),
        "airlight": airlight.tolist(),
        "wavelengths_nm": list(wl),
        **depth_info,
        "mean_t": t.flatten(1).mean(1).double().cpu().tolist(),
        "phi_alpha": phi_alpha,
        "phi_beta": phi_beta,
    }
    return {"input": dusty, "phi": phi, "transmission": t, "airlight": a, "params": params}
