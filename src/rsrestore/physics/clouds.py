"""Cloud synthesis from thresholded fractal noise: thin (semi-transparent) and thick (opaque) clouds, with masks.

A cloud layer is composited over the ground as an alpha blend, the usual model of thin-cloud imagery (e.g. Xu et al.,
"Thin cloud removal based on signal transmission principles and spectral mixture analysis", TGRS 2016; Lin et al.
RICE, 2019):

    I_c(x) = J'_c(x) (1 - o_c(x)) + o_c(x) C_c(x)

* density a(x) = clip((n(x) - q) / w, 0, 1) of a fractal field n in [0, 1]; q is the per-sample (1 - coverage)
  quantile of n, so the drawn coverage is exactly the cloudy fraction, and w (the preset's ``softness``) sets how
  gradually cloud edges fade in. The cloud mask is a(x) > 0.
* opacity o_c(x) = min(1, opacity * a(x) * (lambda_c / 550)^(-k)). Thin clouds scatter short wavelengths a little
  more, so their brightening falls with wavelength (k > 0, the band-dependent thickness coefficients of thin-cloud
  models); thick clouds are opaque in every band (k = 0, opacity 1 in the cloud core).
* cloud reflectance C_c(x) = brightness * S(lambda_c) * T_c * (1 - texture * m(x)), modulated by a finer fractal
  field m for the cloud's own relief:
  - S, the cloud top's spectrum: white in the visible (so RGB clouds stay white), rising linearly from 665 nm to
    ``nir_rise`` at 865 nm and flat to 1000 nm, then the SWIR levels ``swir_1610`` and ``swir_2190`` (linear
    between). The defaults (no rise, 0.75 and 0.55: water/ice absorption) are one end of each sample's range; the
    thick cloud cores of real Sentinel-2 L1C patches (SEN12MS-CR 19_p30 and 139_p839, brightest 1 % of B2) are the
    other: NIR 1.26-1.34 and B11 1.16-1.19, B12 0.87-0.93 times B2.
  - T, the transmittance of the water vapour above the cloud top in the bands that sit in its absorption lines
    (945 nm, Sentinel-2 B9; 1375 nm, B10; 1 elsewhere). Low and middle clouds stay dark there: in those real cores B9
    is 0.20-0.21 and B10 under 0.01 times B2. A cloud as bright in B9 and B10 as in the visible (no T) is a cue real
    clouds never give, and a network that learns it leaves real clouds alone.
* shadow (thick clouds only; thin-cloud shadows are too faint to matter): J' = J (1 - g_c s(x)), where s is the density
  shifted by a random offset (the sun-cloud-ground geometry, 3-12 % of the image size in a random direction) and lightly
  smoothed, and g_c = strength * min(1, (lambda_c / 550)^0.3) darkens short wavelengths a little less because shadows
  keep the bluish skylight.

* parallax (13-band Sentinel-2 only): the MSI images its bands a moment apart from slightly different along-track
  angles and L1C maps them to the ground, so anything above the ground lands a little apart in each band. The cloud
  layer (its opacity and reflectance; not the ground, nor the shadow on it) of band c is moved by
  f * d_c pixels in a direction drawn per sample, d_c from :data:`SENTINEL2_CLOUD_PARALLAX_PX`, f (the cloud's height,
  in effect) from the preset's ``parallax_range``. In the thick cores of the real SEN12MS-CR patches, B4's texture
  matches B2's at 0.74-0.92 correlation as it lies and at 0.96-0.98 moved by 1-1.4 px; B8A's at 0.25-0.74 and 0.73-0.93
  (1.6-2.9 px). Clouds aligned in every band taught the cloud removers that any colour variation inside a cloud is
  ground showing through, and on real clouds they painted that variation as lavender and olive blotches. With it,
  the layer is also blurred in the 20 m and 60 m bands as the sensor blurs it (:data:`PSF_SIGMA_PER_GSD`). Other
  band sets have no table (their sensors' timing differs), so RGB clouds are unchanged.

SAR is unaffected by clouds: a ``sar`` tensor passed in is returned as the same object.

Presets (``CLOUD_PRESETS``; "scale" is the size of the largest structures as a fraction of max(H, W), drawn once per
call):

======  ============  ========  ============  ==========  ============  ============  ============  ============
preset  coverage      softness  opacity       k           brightness    texture       scale         shadow
======  ============  ========  ============  ==========  ============  ============  ============  ============
thin    [0.40, 1.00]  0.40      [0.35, 0.75]  [0.3, 1.0]  [0.75, 0.95]  [0.00, 0.10]  [0.40, 1.00]  none
thick   [0.10, 0.50]  0.06      1             0           [0.50, 1.00]  [0.03, 0.15]  [0.25, 0.60]  [0.30, 0.60]
======  ============  ========  ============  ==========  ============  ============  ============  ============

Both presets draw ``nir_rise`` from [1.0, 1.35], ``swir_1610`` from [0.75, 1.2], ``swir_2190`` from [0.55, 0.95] and
T at 945 nm from [0.12, 0.35]; T at 1375 nm is drawn from [0, 0.01] for thick clouds and [0, 0.05] for thin ones (thin
high clouds, cirrus, are the ones B10 sees; neither real patch has any, its clouds no brighter in B10 than its ground).

The cloud reflectance is further shaded by the cloud's own thickness (0.72 at the edge to 1 at the thickest point), so
opaque clouds have bright cores and greyer fringes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .haze import REFERENCE_WAVELENGTH_NM, SENTINEL2_WAVELENGTHS_NM, check_image, resolve_wavelengths
from .noise import fractal_noise, uniform
from .sensor import gaussian_blur

__all__ = ["CloudPreset", "CLOUD_PRESETS", "SENTINEL2_CLOUD_PARALLAX_PX", "VAPOUR_BANDS_NM", "cloud_parallax_px",
           "cloud_reflectance_spectrum", "synthesize_clouds", "vapour_transmittance"]


@dataclass(frozen=True)
class CloudPreset:
    """Ranges for one cloud realisation (uniform, independent per sample)."""

    coverage_range: tuple[float, float]
    softness: float  # edge ramp width in units of the [0, 1] noise field
    opacity_range: tuple[float, float]
    k_range: tuple[float, float]  # spectral slope of the opacity
    brightness_range: tuple[float, float]
    texture_range: tuple[float, float]  # relative brightness modulation inside the cloud
    shadow: bool
    shadow_strength_range: tuple[float, float] = (0.35, 0.65)
    shadow_offset_range: tuple[float, float] = (0.03, 0.12)  # fraction of max(H, W)
    scale_range: tuple[float, float] = (0.25, 0.6)  # largest cloud structures, fraction of max(H, W)
    octaves: int = 6
    persistence: float = 0.55
    nir_rise_range: tuple[float, float] = (1.0, 1.35)  # S at 865 nm over S in the visible
    swir_1610_range: tuple[float, float] = (0.75, 1.2)
    swir_2190_range: tuple[float, float] = (0.55, 0.95)
    vapour_945_range: tuple[float, float] = (0.12, 0.35)  # water-vapour transmittance above the cloud top, B9
    vapour_1375_range: tuple[float, float] = (0.0, 0.01)  # and B10
    parallax_range: tuple[float, float] = (0.3, 1.6)  # f, the multiple of SENTINEL2_CLOUD_PARALLAX_PX drawn

    def to_dict(self) -> dict:
        return asdict(self)


CLOUD_PRESETS: dict[str, CloudPreset] = {
    "thin": CloudPreset(
        coverage_range=(0.40, 1.00),
        softness=0.40,
        opacity_range=(0.35, 0.75),
        k_range=(0.3, 1.0),
        brightness_range=(0.75, 0.95),
        texture_range=(0.0, 0.1),
        shadow=False,
        scale_range=(0.4, 1.0),
        octaves=5,
        persistence=0.5,
        vapour_1375_range=(0.0, 0.05),
    ),
    "thick": CloudPreset(
        coverage_range=(0.10, 0.50),
        softness=0.06,
        opacity_range=(1.0, 1.0),
        k_range=(0.0, 0.0),
        # Down to half: the thick cores of the real SEN12MS-CR patches read 0.47-0.58 in B2 (brightest 1 %).
        brightness_range=(0.50, 1.00),
        texture_range=(0.03, 0.15),
        shadow=True,
        shadow_strength_range=(0.3, 0.6),
    ),
}

#: Water-vapour absorption bands (nm) where a cloud top's reflectance is attenuated by the vapour above it: 945 nm
#: (Sentinel-2 B9) and 1375 nm (B10, the cirrus band).
VAPOUR_BANDS_NM: dict[str, tuple[float, float]] = {"945": (920.0, 970.0), "1375": (1340.0, 1410.0)}


#: How far (pixels of 10 m) a cloud's texture lies from where B2 puts it, per Sentinel-2 band, for f = 1: the mean of
#: the displacements measured in the thick cloud cores of the real SEN12MS-CR patches 139_p839 (0.8 times these) and
#: 19_p30 (1.2 times), by the shift (0.5 px steps) that best correlates each band's high-passed texture with B2's.
#: B10 correlates too weakly to measure (its clouds are dark); it is given B9's, its neighbour in the 60 m group.
SENTINEL2_CLOUD_PARALLAX_PX: dict[str, float] = {
    "B1": 2.5, "B2": 0.0, "B3": 0.6, "B4": 1.2, "B5": 1.4, "B6": 1.4, "B7": 1.9, "B8": 0.35, "B8A": 2.25, "B9": 2.0,
    "B10": 2.0, "B11": 1.4, "B12": 2.25,
}


def cloud_parallax_px(wavelengths_nm: Sequence[float]) -> Tensor:
    """Per band, the cloud displacement of :data:`SENTINEL2_CLOUD_PARALLAX_PX` when the bands are Sentinel-2's 13 in
    L1C order, else zeros (no table for other sensors); (C,) float64."""
    if tuple(float(w) for w in wavelengths_nm) != SENTINEL2_WAVELENGTHS_NM:
        return torch.zeros(len(wavelengths_nm), dtype=torch.float64)
    return torch.tensor(list(SENTINEL2_CLOUD_PARALLAX_PX.values()), dtype=torch.float64)


#: Ground sampling distance (m) of each Sentinel-2 band: the 20 m and 60 m bands see a cloud's texture blurred.
SENTINEL2_GSD_M: dict[str, float] = {
    "B1": 60, "B2": 10, "B3": 10, "B4": 10, "B5": 20, "B6": 20, "B7": 20, "B8": 10, "B8A": 20, "B9": 60, "B10": 60,
    "B11": 20, "B12": 20,
}
PSF_SIGMA_PER_GSD = 0.6
"""Gaussian sigma of a coarser band's view of the cloud, in units of its sampling distance (1.2 px of 10 m for the
20 m bands, 3.6 px for the 60 m ones; a pushbroom sensor's point spread is about this wide). Measured by how well each
band's high-passed cloud texture matches B2's at the best shift: the real SEN12MS-CR cores give 0.34-0.52 for B1 and
B9, the synthetic clouds 0.91-0.92 unblurred and 0.68-0.70 with this blur (0.96 and 0.94-0.96 for the 20 m bands,
whose real texture, 0.73-0.94, differs from B2's by more than blur)."""

FAINTEST_OPACITY = 1e-3
"""Opacity below which a band's blurred cloud fringe is dropped, so that the mask stays every pixel a cloud changed."""


def _at_band_resolution(op: Tensor, layer: Tensor, gsd_m: dict[str, float]) -> tuple[Tensor, Tensor]:
    """The cloud layer's opacity and opacity-weighted reflectance ((B, C, H, W) each, one band per entry of
    ``gsd_m``), each band coarser than 10 m blurred as the sensor sees it (:data:`PSF_SIGMA_PER_GSD`); fringes fainter
    than :data:`FAINTEST_OPACITY` are dropped from both."""
    op, layer = op.clone(), layer.clone()
    gsd = torch.tensor(list(gsd_m.values()))
    for metres in gsd.unique().tolist():
        if metres > 10.0:
            sigma = PSF_SIGMA_PER_GSD * metres / 10.0
            idx = (gsd == metres).nonzero().flatten().tolist()
            op[:, idx], layer[:, idx] = gaussian_blur(op[:, idx], sigma), gaussian_blur(layer[:, idx], sigma)
    keep = op >= FAINTEST_OPACITY
    return op * keep, layer * keep


def _displace(x: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
    """Move each band of (B, C, H, W) by its own sub-pixel (dy, dx) ((B, C) each): bilinear, edges held."""
    b, c, h, w = x.shape
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, 1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, 1, w)
    dy, dx = dy.to(x)[..., None, None], dx.to(x)[..., None, None]
    # The output at (y, x) samples the input at (y - dy, x - dx), in grid_sample's [-1, 1] pixel-centre coordinates.
    gy = (2.0 * (ys - dy) + 1.0) / h - 1.0
    gx = (2.0 * (xs - dx) + 1.0) / w - 1.0
    grid = torch.stack([gx.expand(b, c, h, w), gy.expand(b, c, h, w)], dim=-1).reshape(b * c, h, w, 2)
    out = F.grid_sample(x.reshape(b * c, 1, h, w), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(b, c, h, w)


def cloud_reflectance_spectrum(wavelengths_nm: Sequence[float], nir_rise: float = 1.0, swir_1610: float = 0.75,
                               swir_2190: float = 0.55) -> Tensor:
    """Relative cloud-top reflectance S(lambda) at band centres: 1 in the visible up to 665 nm, linear to ``nir_rise``
    at 865 nm, flat to 1000 nm, then linear through ``swir_1610`` at 1610 nm to ``swir_2190`` at 2190 nm (held
    beyond); (C,) float64. Water-vapour absorption is not in S (see :func:`vapour_transmittance`)."""
    # np.interp holds the end levels outside the anchors: 1 below 665 nm, swir_2190 beyond 2190 nm.
    anchors_nm = (665.0, 865.0, 1000.0, 1610.0, 2190.0)
    levels = (1.0, nir_rise, nir_rise, swir_1610, swir_2190)
    out = np.interp(np.asarray(wavelengths_nm, dtype=np.float64), anchors_nm, levels)
    return torch.from_numpy(out).clamp(0.3, 1.5)


def vapour_transmittance(wavelengths_nm: Sequence[float], t945: float, t1375: float) -> Tensor:
    """Per band, the transmittance ``t945`` or ``t1375`` inside the water-vapour bands of :data:`VAPOUR_BANDS_NM`,
    1 elsewhere; (C,) float64."""
    wl = torch.as_tensor(wavelengths_nm, dtype=torch.float64)
    out = torch.ones_like(wl)
    for (lo, hi), t in zip(VAPOUR_BANDS_NM.values(), (t945, t1375)):
        out = torch.where((wl >= lo) & (wl <= hi), torch.full_like(wl, t), out)
    return out


def _quantile_per_sample(x: Tensor, q: Tensor) -> Tensor:
    """Per-sample quantile of (B, 1, H, W) at levels q (B,), by sorting (torch.quantile caps the input size)."""
    flat = x.flatten(1)
    srt = flat.sort(dim=1).values
    n = flat.shape[1]
    idx = (q.to(x.device) * (n - 1)).round().long().clamp(0, n - 1)
    return srt.gather(1, idx[:, None]).view(-1, 1, 1, 1)


def _shift(x: Tensor, dy: int, dx: int) -> Tensor:
    """Translate (B, 1, H, W) by (dy, dx) pixels, filling with zeros (no wrap-around)."""
    h, w = x.shape[-2:]
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))
    y = F.pad(x, pad)
    y0 = max(-dy, 0)
    x0 = max(-dx, 0)
    return y[..., y0 : y0 + h, x0 : x0 + w]


def _box_blur(x: Tensor, radius: int) -> Tensor:
    if radius < 1:
        return x
    k = 2 * radius + 1
    return F.avg_pool2d(F.pad(x, (radius,) * 4, mode="replicate"), k, stride=1)


def _preset(kind: str | CloudPreset) -> tuple[str, CloudPreset]:
    if isinstance(kind, CloudPreset):
        return "custom", kind
    if kind not in CLOUD_PRESETS:
        raise ValueError(f"unknown cloud kind {kind!r}; choose one of {sorted(CLOUD_PRESETS)} or pass a CloudPreset")
    return kind, CLOUD_PRESETS[kind]


def _cloud_spectra(p: CloudPreset, wl: Sequence[float], b: int, generator: torch.Generator) -> Tensor:
    """S(lambda) * T(lambda) of each of ``b`` clouds, their shape and vapour drawn from the preset's ranges; (B, C)."""
    draws = [uniform(generator, b, *r) for r in (p.nir_rise_range, p.swir_1610_range, p.swir_2190_range,
                                                  p.vapour_945_range, p.vapour_1375_range)]
    spectra = []
    for nir, s1, s2, t9, t10 in zip(*draws):
        shape = cloud_reflectance_spectrum(wl, nir.item(), s1.item(), s2.item())
        spectra.append(shape * vapour_transmittance(wl, t9.item(), t10.item()))
    return torch.stack(spectra)


def synthesize_clouds(
    clear: Tensor,
    generator: torch.Generator,
    kind: str | CloudPreset = "thin",
    shadow: bool = True,
    wavelengths_nm: Sequence[float] | None = None,
    sar: Tensor | None = None,
) -> dict:
    """Composite thin or thick clouds over `clear` (B, C, H, W) in [0, 1].

    `shadow` enables cast shadows for presets that have them (thick). Returns a dict with ``input``, ``mask`` (cloud,
    (B, 1, H, W) float 0/1), ``shadow`` (shadow outside the cloud, (B, 1, H, W) float 0/1; zeros when there is none),
    ``opacity`` (B, C, H, W), ``params`` (JSON-ready, one entry per sample) and ``sar`` when one was passed (untouched).
    """
    check_image(clear)
    if sar is not None and (sar.ndim != 4 or sar.shape[0] != clear.shape[0] or sar.shape[-2:] != clear.shape[-2:]):
        raise ValueError(f"sar must be (B, 2, H, W) matching the image; got {tuple(sar.shape)}")
    name, p = _preset(kind)
    b, c, h, w = clear.shape
    wl = resolve_wavelengths(c, wavelengths_nm)
    dev, dt = clear.device, clear.dtype
    wl_t = torch.tensor(wl, dtype=torch.float64)

    coverage = uniform(generator, b, *p.coverage_range)
    opacity = uniform(generator, b, *p.opacity_range)
    k = uniform(generator, b, *p.k_range)
    brightness = uniform(generator, b, *p.brightness_range)
    texture = uniform(generator, b, *p.texture_range)
    size = uniform(generator, 1, *p.scale_range)
    scale = max(h, w, 4)
    n = fractal_noise(b, h, w, generator, octaves=p.octaves, persistence=p.persistence,
                      base_scale=max(float(size) * scale, 2.0), device=dev, dtype=dt)
    m = fractal_noise(b, h, w, generator, octaves=4, persistence=0.6,
                      base_scale=max(scale / 8.0, 2.0), device=dev, dtype=dt)

    q = _quantile_per_sample(n, (1.0 - coverage).clamp(0.0, 1.0))
    # Full coverage means every pixel is cloudy: put the threshold just under the minimum so a(x) > 0 everywhere.
    q = torch.where((coverage >= 1.0).to(dev).view(b, 1, 1, 1), torch.full_like(q, -1e-3), q - 1e-6)
    density = ((n - q) / p.softness).clamp(0.0, 1.0)
    mask = (density > 0).to(dt)

    ratio = (wl_t[None, :] / REFERENCE_WAVELENGTH_NM) ** (-k[:, None])  # (B, C)
    op = (opacity[:, None] * ratio).to(dev, dt)[:, :, None, None] * density
    op = op.clamp(0.0, 1.0)
    spectra = _cloud_spectra(p, wl, b, generator)  # (B, C): S * T per sample
    colour = (brightness[:, None] * spectra).clamp(max=1.0).to(dev, dt)[:, :, None, None]
    # Reflectance grows with cloud optical thickness: darker, greyer fringes and bright cores, which is what makes an
    # opaque cloud read as a cloud rather than a flat grey blob.
    core = ((n - q) / (1.0 - q).clamp_min(1e-6)).clamp(0.0, 1.0)
    shade = 0.72 + 0.28 * core.sqrt()
    cloud = colour * shade * (1.0 - texture.to(dev, dt).view(b, 1, 1, 1) * m)

    ground = clear
    shadow_field = torch.zeros_like(mask)  # how deep the cast shadow is, 0 where there is none
    # Same keys with or without shadow, so parameters of thin and thick samples collate together.
    shadow_info: dict = {"shadow": False, "shadow_strength": [0.0] * b, "shadow_offset_px": [[0, 0]] * b}
    if shadow and p.shadow:
        strength = uniform(generator, b, *p.shadow_strength_range)
        offset = uniform(generator, b, *p.shadow_offset_range)
        angle = uniform(generator, b, 0.0, 2.0 * math.pi)
        shifted = []
        offsets = []
        for i in range(b):
            dy = int(round(offset[i].item() * scale * math.sin(angle[i].item())))
            dx = int(round(offset[i].item() * scale * math.cos(angle[i].item())))
            offsets.append([dy, dx])
            shifted.append(_shift(density[i : i + 1], dy, dx))
        shadow_field = _box_blur(torch.cat(shifted), max(1, scale // 128))
        gain = (strength[:, None] * (wl_t[None, :] / REFERENCE_WAVELENGTH_NM).pow(0.3).clamp(max=1.0)).to(dev, dt)
        ground = clear * (1.0 - gain[:, :, None, None] * shadow_field)
        shadow_info = {"shadow": True, "shadow_strength": strength.tolist(), "shadow_offset_px": offsets}

    layer = op * cloud  # what the cloud adds; the ground keeps 1 - op
    # Drawn last, so that every other draw (and so each cloud's shape and spectrum) is as without parallax.
    parallax_info: dict = {"parallax_factor": [0.0] * b, "parallax_angle": [0.0] * b}
    per_band = cloud_parallax_px(wl)
    if per_band.any():
        factor = uniform(generator, b, *p.parallax_range)
        angle = uniform(generator, b, 0.0, 2.0 * math.pi)
        reach = factor[:, None] * per_band[None, :]  # (B, C) pixels
        dy, dx = reach * angle.sin()[:, None], reach * angle.cos()[:, None]
        op, layer = _displace(op, dy, dx).clamp(0.0, 1.0), _displace(layer, dy, dx)
        op, layer = _at_band_resolution(op, layer, SENTINEL2_GSD_M)
        mask = (op.amax(dim=1, keepdim=True) > 0).to(dt)
        parallax_info = {"parallax_factor": factor.tolist(), "parallax_angle": angle.tolist()}

    shadow_mask = ((shadow_field > 0) & (mask == 0)).to(dt)  # the shadow outside every band's cloud
    cloudy = (ground * (1.0 - op) + layer).clamp(0.0, 1.0)
    params = {
        "kind": "cloud",
        "preset": name,
        "coverage": coverage.tolist(),
        "opacity": opacity.tolist(),
        "spectral_k": k.tolist(),
        "brightness": brightness.tolist(),
        "texture": texture.tolist(),
        "cloud_scale": float(size),
        "wavelengths_nm": list(wl),
        "cloud_spectrum": spectra.tolist(),
        **shadow_info,
        **parallax_info,
        "cloud_fraction": mask.flatten(1).mean(1).double().cpu().tolist(),
        "shadow_fraction": shadow_mask.flatten(1).mean(1).double().cpu().tolist(),
    }
    out = {"input": cloudy, "mask": mask, "shadow": shadow_mask, "opacity": op, "params": params}
    if sar is not None:
        out["sar"] = sar
    return out
