"""What the sensor and the file add to a degraded scene: blur, noise, JPEG compression and band misregistration.

Real hazy scenes rarely reach a user as clean physics: the optics and the platform's motion blur them, the detector
adds photon and read noise, the bands of a push-broom sensor are not perfectly co-registered, and many scenes are
passed around as JPEG. A model trained on pristine synthetic inputs meets all of this for the first time on real data.
:func:`degrade_sensor` draws these effects per sample, in the order they happen (bands shifted at the focal plane,
blurred by the point spread function, noise at the detector, JPEG when the file is written), and is applied to the
degraded input only, never to the clean target.

* Blur: a Gaussian point spread function of standard deviation sigma pixels (``kornia.filters.gaussian_blur2d``).
* Noise: x + sqrt(read^2 + shot x) N(0, 1), read noise plus signal-dependent photon (shot) noise.
* JPEG: encoded and decoded by libjpeg (through Pillow) at a quality of 60-95, 4:2:0 chroma subsampling for 3-band
  images as JPEG files carry them; other band counts are compressed band by band as greyscale, as a JPEG-compressed
  multi-band GeoTIFF stores them. A differentiable JPEG approximation (kornia) would not give the real codec's blocks.
* Band misregistration: some bands shifted by a fraction of a pixel up to about a pixel in a random direction
  (bilinear resampling, ``kornia.geometry.transform.translate``, edges repeated).

All randomness comes from the caller's ``torch.Generator``.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from .haze import check_image
from .noise import uniform

__all__ = [
    "SensorPreset",
    "SENSOR_DEFAULT",
    "gaussian_blur",
    "add_noise",
    "jpeg_compress",
    "shift_bands",
    "degrade_sensor",
    "sensor_setting",
]


@dataclass(frozen=True)
class SensorPreset:
    """Chances and ranges of the sensor and file effects; each effect is drawn independently per sample."""

    blur_probability: float = 0.5
    blur_sigma_range: tuple[float, float] = (0.3, 1.2)  # pixels
    noise_probability: float = 0.6
    read_noise_range: tuple[float, float] = (0.002, 0.015)  # standard deviation on [0, 1] values
    shot_noise_range: tuple[float, float] = (0.0, 2e-4)  # variance per unit of signal
    jpeg_probability: float = 0.4
    jpeg_quality_range: tuple[int, int] = (60, 95)
    misregistration_probability: float = 0.3
    shift_range: tuple[float, float] = (0.2, 1.0)  # pixels

    def to_dict(self) -> dict:
        return asdict(self)


SENSOR_DEFAULT = SensorPreset()


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Blur (B, C, H, W) with a Gaussian of `sigma` pixels (kernel +-3 sigma, edges reflected)."""
    from kornia.filters import gaussian_blur2d

    if sigma <= 0:
        return x
    half = max(1, math.ceil(3.0 * sigma))
    half = min(half, (min(x.shape[-2:]) - 1) // 2) or 1  # reflection needs the kernel inside the image
    return gaussian_blur2d(x, (2 * half + 1, 2 * half + 1), (sigma, sigma), border_type="reflect")


def add_noise(x: Tensor, generator: torch.Generator, read_sigma: float, shot: float = 0.0) -> Tensor:
    """x + sqrt(read_sigma^2 + shot x) N(0, 1), clipped to [0, 1]."""
    z = torch.randn(x.shape, generator=generator, device=generator.device, dtype=torch.float32).to(x.device, x.dtype)
    return (x + torch.sqrt(read_sigma**2 + shot * x.clamp_min(0.0)) * z).clamp(0.0, 1.0)


def jpeg_compress(x: Tensor, quality: int) -> Tensor:
    """Encode (B, C, H, W) in [0, 1] as 8-bit JPEG at `quality` and decode it again (libjpeg via Pillow).

    3 bands: one colour JPEG (4:2:0 chroma subsampling); any other count: each band a greyscale JPEG.
    """
    from PIL import Image

    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100; got {quality}")
    a = np.clip(np.rint(x.detach().cpu().double().numpy() * 255.0), 0, 255).astype(np.uint8)
    out = np.empty_like(a)

    def roundtrip(img: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(quality), subsampling="4:2:0")
        buf.seek(0)
        with Image.open(buf) as decoded:
            return np.asarray(decoded)

    for i in range(a.shape[0]):
        if a.shape[1] == 3:
            out[i] = roundtrip(np.ascontiguousarray(a[i].transpose(1, 2, 0))).transpose(2, 0, 1)
        else:
            for c in range(a.shape[1]):
                out[i, c] = roundtrip(a[i, c])
    return torch.from_numpy(out).to(x.device, x.dtype) / 255.0


def shift_bands(x: Tensor, shifts: Tensor) -> Tensor:
    """Translate each band of (B, C, H, W) by ``shifts`` (B, C, 2) pixels as (dx, dy): out(r, c) = x(r - dy, c - dx).

    Bilinear resampling, the image's edge repeated where the shift uncovers it.
    """
    from kornia.geometry.transform import translate

    b, c, h, w = x.shape
    if shifts.shape != (b, c, 2):
        raise ValueError(f"shifts must be (B, C, 2) = ({b}, {c}, 2); got {tuple(shifts.shape)}")
    flat = x.reshape(b * c, 1, h, w).clone()
    s = shifts.reshape(b * c, 2).to(x.device, x.dtype)
    which = (s != 0).any(dim=1)  # bands without a shift stay bit for bit as they were
    if which.any():
        flat[which] = translate(flat[which], s[which], mode="bilinear", padding_mode="border", align_corners=True)
    return flat.reshape(b, c, h, w)


def degrade_sensor(x: Tensor, generator: torch.Generator, preset: SensorPreset = SENSOR_DEFAULT) -> tuple[Tensor, dict]:
    """Apply randomly drawn misregistration, blur, noise and JPEG to `x` (B, C, H, W) in [0, 1].

    Returns the degraded batch (same shape, dtype, device, values in [0, 1]) and JSON-ready ``params``: per sample,
    the blur sigma, read and shot noise, JPEG quality and band shifts actually applied (0 / None when not drawn).
    Draws come from `generator` in a fixed order, so a seed reproduces the result.
    """
    check_image(x, "input")
    p = preset
    b, c = x.shape[:2]
    out = []
    params: dict[str, list] = {"blur_sigma": [], "read_noise": [], "shot_noise": [], "jpeg_quality": [],
                               "band_shifts": []}
    for i in range(b):
        y = x[i:i + 1]
        # Every value is drawn whether or not it is used, so one effect's chance never shifts another's draws.
        u = uniform(generator, 4)
        sigma = float(uniform(generator, 1, *p.blur_sigma_range)[0])
        read = float(uniform(generator, 1, *p.read_noise_range)[0])
        shot = float(uniform(generator, 1, *p.shot_noise_range)[0])
        quality = int(round(float(uniform(generator, 1, p.jpeg_quality_range[0] - 0.5,
                                                 p.jpeg_quality_range[1] + 0.5)[0])))
        quality = min(max(quality, p.jpeg_quality_range[0]), p.jpeg_quality_range[1])
        moved = uniform(generator, c) < 0.5  # which bands move (at least one, never all: one stays the reference)
        magnitude = uniform(generator, c, *p.shift_range)
        angle = uniform(generator, c, 0.0, 2.0 * math.pi)

        shifts = None
        if c > 1 and u[3] < p.misregistration_probability:
            if not moved.any():
                moved[0] = True
            if moved.all():
                moved[-1] = False
            s = torch.stack([magnitude * torch.cos(angle), magnitude * torch.sin(angle)], dim=1) * moved[:, None]
            y = shift_bands(y, s[None])
            shifts = s.tolist()
        if u[0] < p.blur_probability:
            y = gaussian_blur(y, sigma)
        else:
            sigma = 0.0
        if u[1] < p.noise_probability:
            y = add_noise(y, generator, read, shot)
        else:
            read, shot = 0.0, 0.0
        if u[2] < p.jpeg_probability:
            y = jpeg_compress(y, quality)
        else:
            quality = None
        out.append(y.clamp(0.0, 1.0))
        for key, value in zip(params, (sigma, read, shot, quality, shifts)):
            params[key].append(value)
    return torch.cat(out), params


def sensor_setting(value: bool | float | dict | None) -> tuple[float, SensorPreset]:
    """The chance and the effects of a ``sensor`` option as a config gives it: ``true`` / ``false``, a chance in
    [0, 1], or a mapping ``{probability: 0.5, <any SensorPreset field>: ...}`` (e.g. ``jpeg_probability: 0.8``)."""
    if value is None:
        return 0.0, SENSOR_DEFAULT
    if isinstance(value, bool):
        return float(value), SENSOR_DEFAULT
    if isinstance(value, (int, float)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"sensor must be a chance in [0, 1], true / false, or a mapping; got {value!r}")
        return float(value), SENSOR_DEFAULT
    if isinstance(value, dict):
        fields = dict(value)
        chance = sensor_setting(fields.pop("probability", 1.0))[0]
        known = set(SensorPreset.__dataclass_fields__)
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown sensor setting(s) {', '.join(unknown)}; accepted: probability, "
                             f"{', '.join(sorted(known))}")
        try:
            preset = SensorPreset(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
        except TypeError as e:
            raise ValueError(f"bad sensor setting: {e}") from None
        return chance, preset
    raise ValueError(f"sensor must be a chance in [0, 1], true / false, or a mapping; got {value!r}")
