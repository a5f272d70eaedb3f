"""Random crops of clean imagery for synthesis: any source, any size, band layout and dtype, read one way.

:class:`CleanCrops` turns a list of clean image files into random square crops (C, size, size) in [0, 1], every
draw from the caller's generator. Files are read through :func:`rsrestore.synthesize.read_crop`
(:func:`rsrestore.raster.read_raster` on a window), so a big scene costs one window, not the scene. On top of the
plain crop it can:

* pick each file's R, G, B bands (``bands="rgb"``), from the band names when the file has them (``red`` / ``B04`` /
  ``SR_B4`` ...), else from the colour interpretation (PNG, JPEG, RGB GeoTIFF), else from the usual layouts (3 or 4
  bands: 1, 2, 3; 13 bands: Sentinel-2's 4, 3, 2); ``band_map`` names them for the rest by file-name pattern;
* stretch files whose values are not display-ready (16-bit DN or reflectance) to [0, 1] by their own 0.5-99.5 %
  percentiles, band by band (``stretch="auto"``: files that are not 8-bit; ``"all"``);
* avoid no-data: a window with more than ``max_invalid`` of its pixels invalid (nodata, alpha, NaN, or black in every
  band, as the borders of many JPEG/PNG scenes are) is drawn again, up to 8 times;
* zoom (``scale_jitter`` = (low, high), log-uniform: 2 reads a window half the size and enlarges it; an image too
  small for the window is enlarged to fit instead of being mirror-padded), rotate by any angle (``rotate``), and
  jitter brightness and colour (per-band gains).

Each option off draws nothing, so crops stay as they were without it.
"""

from __future__ import annotations

import fnmatch
import math
import re
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from rasterio.errors import NotGeoreferencedWarning
from torch import Tensor

from ..physics.noise import uniform
from ..synthesize import draw_window, read_crop

__all__ = ["CleanCrops", "rgb_bands_of", "remove_veil", "STRETCH_MODES"]

STRETCH_MODES = ("none", "auto", "all")
_MAX_TRIES = 8
DARK_OBJECT_PERCENTILE = 0.1
# Sentinel-2 and Landsat 8/9 number red, green and blue alike (B4, B3, B2); Landsat 4-7 do not, so a bare "B3" is only
# read as red-green-blue by these numbers when the file says nothing else.
_NAMES = {"red": 0, "green": 1, "blue": 2}
_NUMBERS = {"4": 0, "3": 1, "2": 2}


def rgb_bands_of(info: Any) -> list[int] | None:
    """The 1-based R, G, B bands of a raster (its :class:`~rsrestore.raster.RasterInfo`), or None when unknown."""
    found: dict[int, int] = {}
    for i, desc in enumerate(info.descriptions or ()):
        words = re.split(r"[^a-z0-9]+", (desc or "").lower())
        for word in words:
            if word in _NAMES and _NAMES[word] not in found:
                found[_NAMES[word]] = i + 1
    if len(found) < 3:
        found = {}
        for i, desc in enumerate(info.descriptions or ()):
            m = re.fullmatch(r"(?:sr_)?b0?([234])", (desc or "").strip().lower())
            if m and _NUMBERS[m.group(1)] not in found:
                found[_NUMBERS[m.group(1)]] = i + 1
    if len(found) < 3:
        found = {}
        for i, ci in enumerate(info.colorinterp or ()):
            name = getattr(ci, "name", str(ci)).lower()
            if name in _NAMES and _NAMES[name] not in found:
                found[_NAMES[name]] = i + 1
    if len(found) == 3:
        return [found[0], found[1], found[2]]
    if not any(info.descriptions or ()):
        from ..recognise import RecogniserError, rgb_bands

        try:
            return rgb_bands(info.count)  # the usual layouts, as `rsrestore inspect` reads them
        except RecogniserError:
            return None
    return None


def remove_veil(x: Tensor, levels: Sequence[float] | Tensor) -> tuple[Tensor, float]:
    """A clean crop `x` (C, H, W) in [0, 1] without its scene's veil, and the veil: with v the lowest of the scene's
    per-band dark-object `levels` (bounded to [0, 0.95], so the division stays tame), ``(x - v) / (1 - v)``, clipped
    to [0, 1].

    The path radiance that top-of-atmosphere scenes and many aerial images carry is itself a thin haze, ``x = J (1 -
    v) + v`` with a white airlight; this inverts it. One level for all bands keeps a grey a grey and a white cloud
    white: taking each band's own level off (Chavez's dark-object subtraction) turned clouds cream and dark ground
    brown in the outputs of a model trained so.
    """
    veil = float(min(float(v) for v in levels))
    veil = min(max(veil, 0.0), 0.95)
    return ((x - veil) / (1.0 - veil)).clamp(0.0, 1.0), veil


class CleanCrops:
    """Random crops of `files` (see the module docstring for the options)."""

    def __init__(
        self,
        files: Sequence[Path],
        size: int,
        bands: list[int] | str | None = None,
        scale: float | None = None,
        *,
        band_map: Mapping[str, Sequence[int]] | None = None,
        stretch: str = "none",
        max_invalid: float = 0.05,
        scale_jitter: Sequence[float] | None = None,
        rotate: bool = False,
        brightness_jitter: float = 0.0,
        colour_jitter: float = 0.0,
    ) -> None:
        if stretch not in STRETCH_MODES:
            raise ValueError(f"stretch must be one of {', '.join(STRETCH_MODES)}; got {stretch!r}")
        if isinstance(bands, str) and bands != "rgb":
            raise ValueError(f"bands must be 1-based band numbers or 'rgb'; got {bands!r}")
        if band_map is not None:
            if not isinstance(band_map, Mapping):
                raise ValueError(f"band_map must map file-name patterns to band lists, e.g. {{'*_im10.tif': [3, 2, "
                                 f"1]}}; got {band_map!r}")
            for pattern, sel in band_map.items():
                if not (isinstance(sel, Sequence) and sel and all(isinstance(b, int) and b >= 1 for b in sel)):
                    raise ValueError(f"band_map[{pattern!r}] must be 1-based band numbers like [3, 2, 1]; got {sel!r}")
        if not 0.0 <= float(max_invalid) <= 1.0:
            raise ValueError(f"max_invalid must be in [0, 1]; got {max_invalid!r}")
        if scale_jitter is not None:
            lo, hi = (float(v) for v in scale_jitter)
            if not 0.05 <= lo <= hi <= 20.0:
                raise ValueError(f"scale_jitter must be [low, high] zoom factors with 0.05 <= low <= high <= 20, "
                                 f"e.g. [0.5, 2.0]; got {scale_jitter!r}")
            scale_jitter = (lo, hi)
        for name, value in (("brightness_jitter", brightness_jitter), ("colour_jitter", colour_jitter)):
            if isinstance(value, bool) or not 0.0 <= float(value) < 1.0:
                raise ValueError(f"{name} must be a number in [0, 1), e.g. 0.1 for +-10 %; got {value!r}")
        self.files = list(files)
        self.size = size
        self.bands = bands
        self.scale = scale
        self.band_map = dict(band_map or {})
        self.stretch = stretch
        self.max_invalid = float(max_invalid)
        self.scale_jitter = scale_jitter
        self.rotate = bool(rotate)
        self.brightness_jitter = float(brightness_jitter)
        self.colour_jitter = float(colour_jitter)
        self._info: dict[int, Any] = {}
        self._stretch: dict[int, tuple[float, float] | None] = {}
        self._dark: dict[int, np.ndarray] = {}

    # -- per file --------------------------------------------------------------------------------------------------

    def info(self, fi: int) -> Any:
        if fi not in self._info:
            from ..raster import inspect_raster

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._info[fi] = inspect_raster(self.files[fi])
        return self._info[fi]

    def bands_of(self, fi: int) -> list[int] | None:
        """1-based bands read from file `fi` (None: all)."""
        path = self.files[fi]
        for pattern, sel in self.band_map.items():
            if fnmatch.fnmatch(path.name, pattern) or fnmatch.fnmatch(path.as_posix(), pattern):
                return list(sel)
        if self.bands != "rgb":
            return self.bands
        rgb = rgb_bands_of(self.info(fi))
        if rgb is None:
            info = self.info(fi)
            raise ValueError(
                f"{path}: cannot tell which of its {info.count} bands are red, green and blue (band names: "
                f"{list(info.descriptions)}); name them in band_map, e.g. band_map: {{'{path.name}': [3, 2, 1]}}"
            )
        return rgb

    def stretch_of(self, fi: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-band (low, high) of file `fi`'s own stretch, or None when it is used as read."""
        if fi not in self._stretch:
            info = self.info(fi)
            wanted = self.stretch == "all" or (self.stretch == "auto" and info.dtype != "uint8")
            self._stretch[fi] = self._percentiles(fi) if wanted else None
        return self._stretch[fi]

    def dark_levels(self, fi: int) -> np.ndarray:
        """Per-band dark-object level of file `fi` in crop units (after its stretch): the 0.1 % percentile of its
        valid pixels, the path radiance a dark-object subtraction (Chavez 1988) takes off the whole scene."""
        if fi not in self._dark:
            sample = self._sample(fi)
            level = np.percentile(sample, DARK_OBJECT_PERCENTILE, axis=1) if sample.size else np.zeros(len(sample))
            limits = self.stretch_of(fi)
            if limits is not None:
                level = (level - limits[0]) / (limits[1] - limits[0])
            self._dark[fi] = np.clip(level, 0.0, 1.0).astype(np.float32)
        return self._dark[fi]

    def _sample(self, fi: int) -> np.ndarray:
        """Up to about a quarter-million valid pixels (C, N) of file `fi`, for its percentiles (not kept: a source of
        thousands of tiles would hold them all)."""
        from ..raster import read_raster

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            values, valid, _ = read_raster(self.files[fi], bands=self.bands_of(fi), scale=self.scale)
        step = max(1, int(math.sqrt(valid.size / 250_000)))  # a quarter-million pixels are plenty for percentiles
        return values[:, ::step, ::step][:, valid[::step, ::step]]

    def _percentiles(self, fi: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self._sample(fi)
        if sample.size == 0:
            return np.zeros(len(sample), np.float32), np.ones(len(sample), np.float32)
        # per band: top-of-atmosphere data (Landsat L1 DN, Sentinel-2 L1C) carry the atmosphere's blue offset, which a
        # joint stretch would keep as a cyan cast
        lo, hi = np.percentile(sample, [0.5, 99.5], axis=1)
        return lo.astype(np.float32), np.maximum(hi, lo + 1e-6).astype(np.float32)

    # -- per crop --------------------------------------------------------------------------------------------------

    def crop(self, fi: int, generator: torch.Generator) -> tuple[Tensor, dict]:
        """A random crop (C, size, size) float32 in [0, 1] of file `fi` and what was drawn (window, pad, zoom, ...)."""
        g = generator
        zoom = 1.0
        if self.scale_jitter is not None:
            lo, hi = self.scale_jitter
            zoom = math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * float(uniform(g, 1)[0]))
        angle = float(uniform(g, 1, 0.0, 360.0)[0]) if self.rotate else 0.0
        # the window that, zoomed and turned, still covers the crop
        cover = abs(math.cos(math.radians(angle))) + abs(math.sin(math.radians(angle)))
        info = self.info(fi)
        if self.scale_jitter is not None:
            # an image smaller than the window is enlarged rather than mirrored into a kaleidoscope
            zoom = max(zoom, self.size * cover / min(info.height, info.width))
        side = max(2, math.ceil(self.size / zoom * cover - 1e-9))
        indices = None if (b := self.bands_of(fi)) is None else [x - 1 for x in b]

        best = None
        for _ in range(_MAX_TRIES):
            window = draw_window(g, info.height, info.width, side)
            array, pad, valid = read_crop(self.files[fi], window, side, self.scale, indices, with_mask=True)
            invalid = 1.0 - float(valid.mean())
            if best is None or invalid < best[3]:
                best = (window, array, pad, invalid)
            if invalid <= self.max_invalid:
                break
        window, array, pad, invalid = best
        x = torch.from_numpy(array)
        limits = self.stretch_of(fi)
        if limits is not None:
            lo, hi = (torch.from_numpy(v)[:, None, None] for v in limits)
            x = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
        if zoom != 1.0 or angle:
            x = self._zoom_and_turn(x, zoom, angle)
        gains = None
        if self.brightness_jitter or self.colour_jitter:
            bright = uniform(g, 1, 1.0 - self.brightness_jitter, 1.0 + self.brightness_jitter)
            colour = uniform(g, x.shape[0], 1.0 - self.colour_jitter, 1.0 + self.colour_jitter)
            gains = (bright * colour).float()
            x = (x * gains[:, None, None]).clamp(0.0, 1.0)
        meta = {"window": tuple(window), "pad": pad, "invalid": round(invalid, 4), "zoom": zoom, "angle": angle,
                "stretch": None if limits is None else [v.tolist() for v in limits],
                "gains": None if gains is None else gains.tolist(), "bands": indices}
        return x.contiguous(), meta

    def _zoom_and_turn(self, x: Tensor, zoom: float, angle: float) -> Tensor:
        """Resize by `zoom` (antialiased), turn by `angle` degrees about the centre (kornia), cut the central crop."""
        from kornia.geometry.transform import rotate

        y = x[None]
        if zoom != 1.0:
            side = max(self.size, round(x.shape[-1] * zoom))
            y = torch.nn.functional.interpolate(y, size=(side, side), mode="bilinear", align_corners=False,
                                                antialias=zoom < 1.0)
        if angle:
            y = rotate(y, torch.tensor([angle], dtype=y.dtype), mode="bilinear", padding_mode="reflection")
        top = (y.shape[-2] - self.size) // 2
        left = (y.shape[-1] - self.size) // 2
        return y[0, :, top:top + self.size, left:left + self.size].clamp(0.0, 1.0)
