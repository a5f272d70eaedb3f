"""Haze synthesis for overhead imagery by the atmospheric scattering model.

    I_c(x) = J_c(x) t_c(x) + A_c (1 - t_c(x)),      t_c(x) = exp(-tau_550 (lambda_c / 550 nm)^(-k) d(x))

(Koschmieder's law as written by McCartney 1976 and Narasimhan & Nayar 2003; evaluated by
:func:`rsrestore.physics.scattering.haze_forward`.)

Remote-sensing views are orthographic: every pixel looks through roughly the same air column, so the optical depth does
not follow scene depth as in ground-level dehazing data. Its spatial variation comes from the haze itself, drawn here
as a smooth fractal field d(x) with mean ~1 (:func:`rsrestore.physics.noise.fractal_noise`):

    d(x) = 1 + s (2 n(x) - 1),   n in [0, 1],   s = "spread" (0 = uniform haze)

and tau_550 is the optical depth at 550 nm. The wavelength dependence is Angstrom's law, beta(lambda) ~ lambda^(-k)
(Angstrom 1929): haze aerosols have k ~ 0.5-2 (k = 4 would be pure Rayleigh scattering), so blue bands are hazier than
red, and NIR/SWIR bands see through most haze, as in real multispectral scenes.

The atmospheric light is near white with a small random tint: A_c = a0 (lambda_c / 550)^(-s_A) + e_c, a brightness a0,
a spectral slope s_A (positive = bluish, the usual colour of haze path radiance; negative = warmer) and a per-band
jitter e_c, clipped to [0, 1].

Presets (``HAZE_PRESETS``) and the mean 550 nm transmission they give (min-max over 2,000 draws at 128x128):

=========  ============  ==========  ============  ============  ==============
preset     tau_550       k           spread        a0            mean t(550 nm)
=========  ============  ==========  ============  ============  ==============
thin       [0.10, 0.35]  [1.0, 2.0]  [0.30, 0.70]  [0.75, 0.95]  [0.70, 0.91]
moderate   [0.35, 0.80]  [0.8, 1.6]  [0.30, 0.70]  [0.75, 0.95]  [0.45, 0.71]
thick      [0.80, 1.50]  [0.3, 1.2]  [0.25, 0.60]  [0.80, 1.00]  [0.22, 0.46]
=========  ============  ==========  ============  ============  ==============

The k ranges fall with haze thickness because thick haze is dominated by larger (coarser, less wavelength-selective)
particles. ``mean_t_range`` in each preset holds the last column; the test suite checks it.

The realistic presets (``REALISTIC_HAZE``, with a ``field``) draw haze as it looks over real satellite scenes
(:class:`~rsrestore.physics.noise.PatchyField`): structures whose largest size is log-uniform from 24 px to twice the
scene, soft veils or banks cut from the field at a random coverage, their rims from soft to as sharp as thin cloud,
over a thinner veil (``floor``, a share of the densest optical depth tau_550). The airlight is whitish and slightly
blue, a0 in [0.70, 1.00] with a spectral slope s_A in [0, 0.3], and drifts by up to +-6 % across the scene. Input PSNR
is against the clean crop, median (5th-95th percentile) over 44 real crops of NEON, EuroSAT, NAIP, Dubai and Planet
scenes:

=======  ============  ====================  =============  ==========  =============  ===================
preset   tau_550 max   banks (coverage)      edge           floor       mean t(550)    input PSNR, dB
=======  ============  ====================  =============  ==========  =============  ===================
veil     [0.03, 0.30]  never                 -              [0.3, 0.8]  [0.74, 0.99]  27.5 (19.5-39.2)
patchy   [0.30, 1.40]  60 % ([0.2, 0.8])     [0.01, 0.15]   [0.0, 0.4]  [0.30, 0.95]  17.5 (10.3-25.7)
bank     [0.60, 1.80]  always ([0.2, 0.8])   [0.005, 0.05]  [0.0, 0.2]  [0.20, 0.95]  15.6 (10.4-24.3)
dense    [1.20, 2.40]  30 % ([0.6, 0.95])    [0.01, 0.15]   [0.5, 0.9]  [0.08, 0.48]  10.2 (5.8-17.6)
=======  ============  ====================  =============  ==========  =============  ===================

Banks are textured inside (their density follows the field by 0-50 % in ``patchy``, 20-60 % in ``bank``), as thin
cloud is. The contact sheets of ``benchmarks/look_synthesis.py`` (``benchmarks/results/look_haze.png``) show every
preset on every clean source beside crops of the real hazy Landsat-7 scene; the median input PSNR over those 17
sources is 8.8 dB for ``dense`` (thick 8.6). On the 44 crops of the table: thin 22.8 (16.9-31.1), moderate 15.8
(11.0-22.7), thick 10.6 (6.9-17.0). Bright scenes (sand, snow, roofs) lie close to the airlight and keep 10-15 dB even
under the densest haze; dark ones (water, forest) fall to 4-6 dB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, asdict
from typing import Sequence

import torch
from torch import Tensor

from .noise import PatchyField, fractal_noise, uniform
from .scattering import haze_forward

__all__ = [
    "RGB_WAVELENGTHS_NM",
    "RGBN_WAVELENGTHS_NM",
    "SENTINEL2_WAVELENGTHS_NM",
    "SENTINEL2_BANDS",
    "REFERENCE_WAVELENGTH_NM",
    "default_wavelengths",
    "resolve_wavelengths",
    "HazePreset",
    "HAZE_PRESETS",
    "REALISTIC_HAZE",
    "angstrom_ratio",
    "synthesize_haze",
    "check_image",
]

REFERENCE_WAVELENGTH_NM = 550.0

#: Band centres of an RGB image in R, G, B order: the Sentinel-2 B4, B3, B2 nominal centres (665, 560, 490 nm), which
#: also sit inside the passbands of common aerial/satellite RGB sensors.
RGB_WAVELENGTHS_NM: tuple[float, ...] = (665.0, 560.0, 490.0)

#: R, G, B, NIR (the NAIP band order), NIR at the Sentinel-2 B8 centre (842 nm).
RGBN_WAVELENGTHS_NM: tuple[float, ...] = (665.0, 560.0, 490.0, 842.0)

SENTINEL2_BANDS: tuple[str, ...] = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
#: Nominal Sentinel-2 MSI band centres (ESA), in the B1..B12 order used by L1C products and SEN12MS-CR.
SENTINEL2_WAVELENGTHS_NM: tuple[float, ...] = (
    443.0, 490.0, 560.0, 665.0, 705.0, 740.0, 783.0, 842.0, 865.0, 945.0, 1375.0, 1610.0, 2190.0
)


def default_wavelengths(channels: int) -> tuple[float, ...]:
    """Band centres (nm) assumed for a channel count: 1 -> 550 (panchromatic), 3 -> RGB, 4 -> RGB+NIR, 13 -> Sentinel-2."""
    table = {
        1: (REFERENCE_WAVELENGTH_NM,),
        3: RGB_WAVELENGTHS_NM,
        4: RGBN_WAVELENGTHS_NM,
        13: SENTINEL2_WAVELENGTHS_NM,
    }
    if channels not in table:
        raise ValueError(
            f"no default band wavelengths for {channels} channels (defaults exist for 1, 3 (R,G,B), 4 (R,G,B,NIR) and "
            f"13 (Sentinel-2 B1..B12)); pass wavelengths_nm with one centre wavelength per band"
        )
    return table[channels]


def resolve_wavelengths(channels: int, wavelengths_nm: Sequence[float] | None) -> tuple[float, ...]:
    """Validated band centres in nm, one per channel."""
    if wavelengths_nm is None:
        return default_wavelengths(channels)
    wl = tuple(float(w) for w in wavelengths_nm)
    if len(wl) != channels:
        raise ValueError(f"wavelengths_nm has {len(wl)} entries but the image has {channels} bands")
    if any(not (100.0 < w < 20000.0) for w in wl):
        raise ValueError(f"wavelengths_nm must be band centres in nanometres (100-20000); got {wl}")
    return wl


def check_image(x: Tensor, name: str = "clear") -> None:
    """Raise ValueError unless x is a floating (B, C, H, W) tensor."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W); got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [0, 1]; got dtype {x.dtype}")
    if min(x.shape) < 1:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")


def angstrom_ratio(wavelengths_nm: Tensor, k: Tensor) -> Tensor:
    """beta(lambda) / beta(550 nm) = (lambda / 550)^(-k); wavelengths (C,), k (B,) -> (B, C)."""
    return (wavelengths_nm[None, :] / REFERENCE_WAVELENGTH_NM) ** (-k[:, None])


@dataclass(frozen=True)
class HazePreset:
    """Ranges from which one haze realisation is drawn (uniformly, independently per sample).

    Without a ``field`` (thin / moderate / thick) the haze is one smooth whole-scene fractal field of mean optical
    depth ``tau_range`` (``spread_range``, ``tint``, ``persistence`` apply). With a
    :class:`~rsrestore.physics.noise.PatchyField` (the realistic presets) it is banks and veils, ``tau_range`` is the
    optical depth of the densest haze, and ``slope_range`` and ``airlight_variation_range`` apply.
    """

    tau_range: tuple[float, float]  # optical depth at 550 nm: the image mean (smooth) or the densest haze (banks)
    k_range: tuple[float, float]  # Angstrom exponent
    spread_range: tuple[float, float] = (0.3, 0.7)  # non-uniformity s of d(x) = 1 + s (2 n - 1)
    airlight_range: tuple[float, float] = (0.75, 0.95)  # brightness a0 of the atmospheric light
    tint: float = 0.2  # |s_A| bound: A_c = a0 (lambda_c / 550)^(-s_A), s_A ~ U[-tint / 2, tint]
    jitter: float = 0.015  # per-band uniform jitter half-width added to A
    octaves: int = 4
    persistence: float = 0.5
    t_floor: float = 0.05  # keeps the densest spots from turning into flat airlight
    mean_t_range: tuple[float, float] = (0.0, 1.0)  # documented mean t(550 nm) these ranges give
    field: PatchyField | None = None  # None: one smooth whole-scene field; else banks and veils (realistic)
    slope_range: tuple[float, float] = (0.0, 0.3)  # with a field: airlight spectral slope s_A (> 0: bluish)
    airlight_variation_range: tuple[float, float] = (0.0, 0.06)  # relative change of A across the scene

    def to_dict(self) -> dict:
        return asdict(self)


# Haze as it looks over real satellite scenes: whitish, slightly blue airlight (0.7-1.0) that drifts slowly across the
# scene; banks and veils from a few tens of pixels to the whole scene. Tuned on contact sheets of every clean source
# (benchmarks/look_synthesis.py) against the real hazy Landsat-7 scene.
_REALISTIC = dict(airlight_range=(0.70, 1.00), jitter=0.01)

HAZE_PRESETS: dict[str, HazePreset] = {
    "thin": HazePreset(tau_range=(0.10, 0.35), k_range=(1.0, 2.0), mean_t_range=(0.70, 0.91)),
    "moderate": HazePreset(tau_range=(0.35, 0.80), k_range=(0.8, 1.6), mean_t_range=(0.45, 0.71)),
    "thick": HazePreset(
        tau_range=(0.80, 1.50),
        k_range=(0.3, 1.2),
        spread_range=(0.25, 0.6),
        airlight_range=(0.80, 1.00),
        mean_t_range=(0.22, 0.46),
    ),
    # a faint veil over the whole scene, gently uneven
    "veil": HazePreset(tau_range=(0.03, 0.30), k_range=(0.8, 1.8), mean_t_range=(0.74, 0.99),
                       field=PatchyField(bank_probability=0.0, floor_range=(0.3, 0.8)), **_REALISTIC),
    # patches of haze of every size, soft or sharp, over a thinner veil
    "patchy": HazePreset(tau_range=(0.30, 1.40), k_range=(0.5, 1.5), mean_t_range=(0.30, 0.95),
                         field=PatchyField(bank_probability=0.6, floor_range=(0.0, 0.4), interior_range=(0.0, 0.5)),
                         **_REALISTIC),
    # dense banks with sharp edges, like thin cloud
    "bank": HazePreset(tau_range=(0.60, 1.80), k_range=(0.2, 1.0), mean_t_range=(0.20, 0.95),
                       field=PatchyField(bank_probability=1.0, edge_range=(0.005, 0.05), floor_range=(0.0, 0.2),
                                         interior_range=(0.2, 0.6)),
                       **_REALISTIC),
    # thick haze over most of the scene: the degraded input scores about 8-14 dB PSNR
    "dense": HazePreset(tau_range=(1.20, 2.40), k_range=(0.2, 0.8), t_floor=0.08, mean_t_range=(0.08, 0.48),
                        field=PatchyField(bank_probability=0.3, coverage_range=(0.6, 0.95), floor_range=(0.5, 0.9)),
                        **_REALISTIC),
}

#: The presets of real-looking haze (``preset="realistic"`` in :mod:`rsrestore.synthesize` draws among them).
REALISTIC_HAZE: tuple[str, ...] = ("veil", "patchy", "bank", "dense")


def _preset(preset: str | HazePreset) -> tuple[str, HazePreset]:
    if isinstance(preset, HazePreset):
        return "custom", preset
    if preset not in HAZE_PRESETS:
        raise ValueError(f"unknown haze preset {preset!r}; choose one of {sorted(HAZE_PRESETS)} or pass a HazePreset")
    return preset, HAZE_PRESETS[preset]


def synthesize_haze(
    clear: Tensor,
    generator: torch.Generator,
    preset: str | HazePreset = "moderate",
    wavelengths_nm: Sequence[float] | None = None,
) -> dict:
    """Add spatially non-uniform, wavelength-dependent haze to `clear` (B, C, H, W) in [0, 1].

    Returns a dict with ``input`` (hazy image, same shape/dtype/device as `clear`), ``transmission`` (B, C, H, W) per
    band, ``transmission_550`` (B, 1, H, W), ``airlight`` ((B, C); (B, C, H, W) for presets with a ``field``, whose
    airlight drifts across the scene) and ``params`` (JSON-ready lists, one entry per sample: preset name, tau_550,
    Angstrom k, spread, airlight (its scene mean for presets with a field), wavelengths and the mean 550 nm
    transmission; presets with a field add the values :meth:`PatchyField.draw` drew and ``airlight_variation``).
    Random draws happen in a fixed order from `generator` only, so a seed reproduces the output exactly.
    """
    check_image(clear)
    name, p = _preset(preset)
    b, c, h, w = clear.shape
    wl = resolve_wavelengths(c, wavelengths_nm)
    dev, dt = clear.device, clear.dtype

    smooth = p.field is None
    tau = uniform(generator, b, *p.tau_range)
    k = uniform(generator, b, *p.k_range)
    spread = uniform(generator, b, *p.spread_range) if smooth else None
    a0 = uniform(generator, b, *p.airlight_range)
    slope = uniform(generator, b, -p.tint / 2.0, p.tint) if smooth else uniform(generator, b, *p.slope_range)
    jitter = uniform(generator, (b, c), -p.jitter, p.jitter)
    n = None
    if smooth:
        n = fractal_noise(b, h, w, generator, octaves=p.octaves, persistence=p.persistence,
                          base_scale=max(h, w, 4), device=dev, dtype=dt)

    wl_t = torch.tensor(wl, dtype=torch.float64)
    ratio = angstrom_ratio(wl_t, k)  # (B, C)
    airlight = (a0[:, None] * (wl_t[None, :] / REFERENCE_WAVELENGTH_NM) ** (-slope[:, None]) + jitter).clamp(0.0, 1.0)
    a = airlight.to(dev, dt)
    extra: dict = {}

    if n is not None:
        d = 1.0 + spread.to(dev, dt).view(b, 1, 1, 1) * (2.0 * n - 1.0)
        # Normalise to mean exactly 1 so tau_550 is the image-mean optical depth; otherwise a field that happens to
        # sit high or low would shift a sample out of its preset's transmission range.
        d = d / d.mean(dim=(2, 3), keepdim=True)
    else:
        d, extra = p.field.draw(b, h, w, generator, device=dev, dtype=dt)
        # The airlight drifts slowly across the scene (sun angle, haze composition): a field twice the scene's size.
        variation = uniform(generator, b, *p.airlight_variation_range)
        drift = fractal_noise(b, h, w, generator, octaves=2, base_scale=max(2.0 * max(h, w), 4.0), device=dev,
                              dtype=dt)
        a = (a[:, :, None, None] * (1.0 + variation.to(dev, dt).view(b, 1, 1, 1) * (2.0 * drift - 1.0))).clamp(0, 1)
        extra["airlight_variation"] = variation.tolist()
    tau_map = tau.to(dev, dt).view(b, 1, 1, 1) * d
    t550 = torch.exp(-tau_map).clamp_min(p.t_floor)
    t = torch.exp(-tau_map * ratio.to(dev, dt)[:, :, None, None]).clamp_min(p.t_floor)
    hazy = haze_forward(clear, t, a).clamp(0.0, 1.0)

    params = {
        "kind": "haze",
        "preset": name,
        "tau_550": tau.tolist(),
        "angstrom_k": k.tolist(),
        "spread": None if spread is None else spread.tolist(),
        "airlight": airlight.tolist(),
        **extra,
        "wavelengths_nm": list(wl),
        "mean_t550": t550.flatten(1).mean(1).double().cpu().tolist(),
    }
    return {"input": hazy, "transmission": t, "transmission_550": t550, "airlight": a, "params": params}
