"""Side-by-side comparison pictures (input | output(s) | reference) for people who would rather look than read."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

LABEL_HEIGHT = 18


def display_bands(channels: int, rgb_bands: Sequence[int] | None = None) -> list[int]:
    """0-based band indices shown as R, G, B: given, or Sentinel-2's B4, B3, B2 for 13 bands, or the first three."""
    if rgb_bands is not None:
        return list(rgb_bands)
    if channels == 13:
        return [3, 2, 1]
    if channels >= 3:
        return [0, 1, 2]
    return [0] * 3


def display_stretch(image: np.ndarray, rgb_bands: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Low/high values (per shown band) for a 1-99 % stretch; dark multispectral reflectance needs one to be seen."""
    rgb = image[display_bands(image.shape[0], rgb_bands)].reshape(3, -1)
    lo = np.percentile(rgb, 1, axis=1)
    hi = np.percentile(rgb, 99, axis=1)
    return lo, np.maximum(hi, lo + 1e-6)


def to_rgb8(image: np.ndarray, rgb_bands: Sequence[int] | None = None, stretch=None) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, 3) uint8; `stretch` = (lo, hi) per band, or None for the plain [0, 1] range."""
    rgb = np.asarray(image, dtype=np.float32)[display_bands(image.shape[0], rgb_bands)]
    if stretch is not None:
        lo, hi = stretch
        rgb = (rgb - lo[:, None, None]) / (hi - lo)[:, None, None]
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def comparison_image(
    panels: Sequence[tuple[str, np.ndarray]],
    rgb_bands: Sequence[int] | None = None,
    max_side: int = 384,
    stretch: bool | None = None,
) -> Image.Image:
    """Panels (label, (C, H, W) image) side by side with labels above. All panels share one display stretch (taken
    from the last panel, normally the reference) so that colour differences between them are real."""
    if not panels:
        raise ValueError("no panels to show")
    h, w = panels[0][1].shape[-2:]
    channels = panels[0][1].shape[0]
    if stretch is None:
        stretch = channels != 3  # RGB in [0, 1] is shown as is; multispectral reflectance is stretched
    s = display_stretch(panels[-1][1], rgb_bands) if stretch else None
    f = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * f)), max(1, round(h * f)))
    canvas = Image.new("RGB", (size[0] * len(panels), size[1] + LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, img) in enumerate(panels):
        if img.shape[-2:] != (h, w):
            raise ValueError(f"panel {label!r} has size {img.shape[-2:]}, expected {(h, w)}")
        tile = Image.fromarray(to_rgb8(img, rgb_bands, s)).resize(size, Image.BILINEAR)
        canvas.paste(tile, (i * size[0], LABEL_HEIGHT))
        draw.text((i * size[0] + 4, 3), label, fill="black")
    return canvas


def save_comparison(path: str | Path, panels: Sequence[tuple[str, np.ndarray]], **kw) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    comparison_image(panels, **kw).save(path)
    return path
