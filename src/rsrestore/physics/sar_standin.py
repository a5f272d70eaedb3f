"""A Sentinel-1 (VV, VH) stand-in for cloud-removal training when no co-registered SAR scene exists.

SAR-guided cloud removers (``sarcr``, ``dsen2cr``) learn what C-band backscatter tells about the ground under a cloud.
A stand-in computed from the clean optical scene must therefore carry only what real backscatter carries, or the
network learns to read the answer from it:

- **land cover, not colour.** Backscatter depends on the scatterers' geometry and moisture, not on their visible colour.
  The stand-in reads four soft land-cover memberships from band *ratios* (water, vegetation, built-up, bare soil) and
  maps each to class-typical VV and VH in dB. The visible bands enter only as their mean (a panchromatic brightness),
  so any permutation or recolouring of B2, B3, B4 that keeps that mean leaves the stand-in unchanged.
- **texture the optical scene does not show.** Within a class, fields differ in soil moisture and roughness, which set
  their backscatter (several dB) but not their colour. Each parcel (a segment of the brightness, NIR and SWIR) gets its
  own random offset, and a fractal field adds smooth moisture-like variation: both come from ``rng``, not from the
  scene.
- **structure.** Edges of the panchromatic brightness (field borders, roads, buildings) brighten the return a little,
  built-up areas much more (double bounce) and carry sparse strong point scatterers; a range-facing slope term from
  the smoothed brightness stands in for terrain tilt.
- **the sensor.** Power is blurred to Sentinel-1 GRD's ~20 m resolution on 10 m pixels, then multiplied by speckle:
  Gamma-distributed intensity, spatially correlated as real SEN12MS-CR speckle is (lag-1 autocorrelation ~0.75).

Class values (C band, IW incidence 30-45 deg; Ulaby & Long, *Microwave Radar and Radiometric Remote Sensing*, 2014,
ch. 11-13; checked on the real SEN12MS-CR patches in ``../shared/data/sen12mscr`` by
``benchmarks/bench_sar_standin.py``): calm open water VV about -21 dB, VH -28 dB (specular); vegetation VV -10, VH -16
(volume scattering depolarises: VV - VH about 6 dB); built-up VV -7, VH -14 with strong point targets; bare soil VV
-12, VH -18.5 (the real patch's fields read -11.1 / -17.5).

The stand-in is computed from the *clean* scene, before any cloud is synthesised, so it never carries a cloud; it is
still only a stand-in: scores of a model trained on it are not scores with real Sentinel-1.

Speckle. ESA states an equivalent number of looks (ENL) of about 4.4 for IW GRDH products. SEN12MS-CR's patches
were resampled onto a 10 m UTM grid, which smooths speckle: on the real patches the per-pixel ENL measured against a
9 x 9 local mean is 7.9 (forest, ``ROIs1868_summer`` 19_p30) and 4.2-4.9 (fields and villages, 139_p839, where texture
adds variance), with a lag-1 autocorrelation of 0.73-0.81. The defaults (``looks=7``, ``speckle_sigma_px=0.9``)
reproduce that; pass ``looks=4.4, speckle_sigma_px=0`` for unresampled GRD pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from .noise import fractal_noise

__all__ = ["SAR_CLASSES", "SARClass", "land_cover", "panchromatic", "sar_standin", "speckle"]

# Sentinel-2 band indices (0-based) in SEN12MS-CR order B1, B2, B3, B4, B5, B6, B7, B8, B8A, B9, B10, B11, B12.
_B2, _B3, _B4, _B8, _B11, _B12 = 1, 2, 3, 7, 11, 12


@dataclass(frozen=True)
class SARClass:
    """Typical backscatter of one land-cover class: mean VV and VH in dB, and the spread (dB, one standard deviation)
    between parcels of that class (moisture and roughness differences the optical scene does not show)."""

    vv_db: float
    vh_db: float
    parcel_std_db: float


SAR_CLASSES: dict[str, SARClass] = {
    "water": SARClass(-21.0, -28.0, 1.5),
    "vegetation": SARClass(-10.0, -16.0, 1.5),
    "built": SARClass(-7.0, -14.0, 3.0),
    "soil": SARClass(-12.0, -18.5, 2.5),
}

# Sentinel-1 GRD: ~20 m resolution on 10 m pixels (Gaussian PSF of about one pixel).
RESOLUTION_SIGMA_PX = 1.0
DB_FLOOR = -40.0


def _ramp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def _nd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a - b) / np.maximum(a + b, 1e-4)


def panchromatic(clean: np.ndarray) -> np.ndarray:
    """Visible brightness: the mean of B2, B3, B4 (so the stand-in never sees their colour). Summed in sorted order,
    so that any permutation of the three gives the same floating-point value."""
    return np.sort(clean[[_B2, _B3, _B4]], axis=0).sum(axis=0) / 3.0


def _heterogeneity(pan: np.ndarray) -> np.ndarray:
    """Density of small-scale brightness contrast: the relative local standard deviation of the panchromatic
    brightness (1.5 px) averaged over ~3 px. High over villages and towns (roofs, walls, yards, trees mixed at 10 m),
    low over fields, water and forest canopies."""
    pan = gaussian_filter(pan, 0.7)
    mean = gaussian_filter(pan, 1.5)
    std = np.sqrt(np.maximum(gaussian_filter(pan**2, 1.5) - mean**2, 0.0))
    return gaussian_filter(std / np.maximum(mean, 1e-3), 3.0)


def land_cover(clean: np.ndarray) -> dict[str, np.ndarray]:
    """Soft memberships (each (H, W) in [0, 1], summing to 1) of water, vegetation, built-up and bare soil.

    Colour-blind indices: the visible bands enter only through :func:`panchromatic`.

    - water: visible brighter than NIR (NDWI on the visible mean) and dark SWIR;
    - vegetation: NDVI on the visible mean;
    - built-up: dense small-scale brightness contrast (:func:`_heterogeneity`) outside water and dense vegetation
      (NDBI alone confuses built-up with bare fields, which are as bright in the SWIR);
    - bare soil: the rest (harvested or ploughed fields, rock, sand).
    """
    vis, nir, swir = panchromatic(clean), clean[_B8], clean[_B11]
    water = _ramp(_nd(vis, nir), -0.05, 0.15) * _ramp(-swir, -0.08, -0.03)
    veg = _ramp(_nd(nir, vis), 0.25, 0.6) * (1.0 - water)
    built = _ramp(_heterogeneity(vis), 0.05, 0.09) * (1.0 - water) * (1.0 - veg)
    soil = np.clip(1.0 - water - veg - built, 0.0, 1.0)
    return {"water": water, "vegetation": veg, "built": built, "soil": soil}


def _parcels(clean: np.ndarray, parcel_px: float) -> np.ndarray:
    """Segment labels (H, W): parcels (fields, water bodies, blocks) that share one random moisture/roughness offset.
    Felzenszwalb's graph segmentation (scikit-image) of the panchromatic, NIR and SWIR brightness, each scaled by
    its 99th percentile; no colour enters."""
    from skimage.segmentation import felzenszwalb

    feats = np.stack([panchromatic(clean), clean[_B8], clean[_B11]], axis=-1)
    feats = feats / np.maximum(np.percentile(feats, 99, axis=(0, 1)), 1e-3)
    return felzenszwalb(feats, scale=30.0, sigma=0.8, min_size=max(4, int(parcel_px**2 / 4)))


def speckle(shape: tuple[int, int], rng: np.random.Generator, looks: float, sigma_px: float) -> np.ndarray:
    """Multiplicative speckle of mean 1 and per-pixel variance 1 / ``looks`` (the equivalent number of looks).

    Intensity speckle is Gamma-distributed (fully developed, multilooked). ``sigma_px`` > 0 correlates it spatially as
    resampling does: white Gamma noise of ``looks * sum(k**2)`` looks filtered by a normalised Gaussian kernel ``k``
    keeps mean 1 and variance ``1 / looks`` (a weighted sum of Gamma variables, close to Gamma itself)."""
    if looks <= 0:
        raise ValueError(f"looks must be > 0, got {looks}")
    if sigma_px <= 0:
        return rng.gamma(looks, 1.0 / looks, size=shape)
    impulse = np.zeros((33, 33))
    impulse[16, 16] = 1.0
    k = gaussian_filter(impulse, sigma_px, mode="constant")
    l0 = looks * float((k**2).sum()) / float(k.sum()) ** 2
    white = rng.gamma(l0, 1.0 / l0, size=shape)
    return gaussian_filter(white, sigma_px, mode="reflect")


def sar_standin(
    clean: np.ndarray,
    rng: np.random.Generator,
    *,
    looks: float = 7.0,
    speckle_sigma_px: float = 0.9,
    parcel_px: float = 12.0,
    classes: dict[str, SARClass] | None = None,
) -> np.ndarray:
    """A Sentinel-1-like (VV, VH) backscatter stand-in in dB, ``(2, H, W)`` float32, from a clean 13-band scene.

    Args:
        clean: cloud-free Sentinel-2 reflectance (13, H, W) in [0, 1] (digital number / 10000), SEN12MS-CR band order
            B1..B12 with B8A. It must be the clean scene: the stand-in is made before clouds are synthesised.
        rng: source of every random draw (parcel offsets, moisture field, point scatterers, speckle); the same seed
            gives the same stand-in.
        looks: per-pixel equivalent number of looks of the speckle (see the module docstring).
        speckle_sigma_px: spatial correlation of the speckle (Gaussian sigma in pixels); 0 for white speckle.
        parcel_px: typical side of a parcel (segment) sharing one moisture/roughness offset, in pixels; segments are
            at least ``parcel_px**2 / 4`` pixels.
        classes: class backscatter (default :data:`SAR_CLASSES`).

    Returns:
        VV, VH in dB as stored in SEN12MS-CR's ``s1`` files (float32; clipped below at -40 dB). The ``sen12mscr``
        loader (and :func:`rsrestore.raster.sar_to_unit`) then clips VV to [-25, 0] and VH to [-32.5, 0] dB and scales
        to [0, 1], as it does real Sentinel-1.
    """
    clean = np.asarray(clean, dtype=np.float64)
    if clean.ndim != 3 or clean.shape[0] != 13:
        raise ValueError(f"sar_standin needs a clean 13-band Sentinel-2 scene (13, H, W), got {clean.shape}")
    if not np.isfinite(clean).all():
        raise ValueError("the clean scene has NaN or infinite values; fill them first")
    classes = SAR_CLASSES if classes is None else classes
    h, w = clean.shape[1:]
    pan = panchromatic(clean)
    cover = land_cover(clean)

    # Class-typical backscatter with a random per-parcel offset (moisture, roughness), VV and VH offsets correlated.
    labels = _parcels(clean, parcel_px)
    n = int(labels.max()) + 1
    z_common = rng.standard_normal(n)
    z_vv = (0.8 * z_common + 0.6 * rng.standard_normal(n))[labels]
    z_vh = (0.8 * z_common + 0.6 * rng.standard_normal(n))[labels]
    vv = np.zeros((h, w))
    vh = np.zeros((h, w))
    for name, m in cover.items():
        c = classes[name]
        vv += m * (c.vv_db + c.parcel_std_db * z_vv)
        vh += m * (c.vh_db + c.parcel_std_db * z_vh)

    # Smooth moisture-like field (fractal, +-1 dB), from the rng; water is left out (its return is specular).
    g = torch.Generator().manual_seed(int(rng.integers(2**62)))
    field = fractal_noise(2, h, w, g, octaves=5, persistence=0.55, dtype=torch.float64).numpy()[:, 0]
    land = 1.0 - cover["water"]
    vv += land * 2.0 * (field[0] - 0.5)
    vh += land * 2.0 * (0.6 * field[0] + 0.4 * field[1] - 0.5)

    # Structure: edges of the panchromatic brightness (field borders, roads, walls) and a range-facing slope term.
    smooth = gaussian_filter(pan, 1.0)
    gy, gx = np.gradient(smooth)
    edge = np.hypot(gx, gy)
    edge = np.clip(edge / (np.percentile(edge, 99) + 1e-6), 0.0, 1.0)
    vv += edge * (1.0 + 3.0 * cover["built"]) * land
    vh += edge * (0.5 + 2.0 * cover["built"]) * land
    relief = gaussian_filter(pan, 4.0)
    slope = np.gradient(relief, axis=1)
    slope = np.clip(slope / (np.percentile(np.abs(slope), 99) + 1e-6), -1.0, 1.0)
    vv += 1.0 * slope * land
    vh += 1.0 * slope * land

    # Strong point scatterers (corner reflectors of buildings), Bernoulli in built-up areas, +5 to +12 dB.
    hits = rng.random((h, w)) < 0.04 * cover["built"]
    boost = rng.uniform(5.0, 12.0, size=(h, w))
    vv += hits * boost
    vh += hits * 0.6 * boost

    out = []
    for db in (vv, vh):
        power = gaussian_filter(10.0 ** (db / 10.0), RESOLUTION_SIGMA_PX, mode="reflect")
        power = power * speckle((h, w), rng, looks, speckle_sigma_px)
        out.append(np.maximum(10.0 * np.log10(np.maximum(power, 1e-12)), DB_FLOOR))
    return np.stack(out).astype(np.float32)
