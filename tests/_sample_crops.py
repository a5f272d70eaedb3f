"""Clear 128 x 128 crops of two shipped sample scenes, for the do-no-harm checks of bundled weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import torch

import rsrestore


def clear_sample_crops(size: int = 128) -> torch.Tensor:
    """(8, 3, size, size) in [0, 1]: four crops each of Rocky Mountain NP (a source no bundled weights trained on)
    and NAIP (R, G, B of its four bands), at the corners of the four quadrants."""
    sample = Path(rsrestore.__file__).parent / "sample_data"
    crops = []
    for name in ("rmnp_rgb.tif", "naip_4band_crop.tif"):
        with rasterio.open(sample / name) as ds:
            img = torch.from_numpy(ds.read([1, 2, 3]).astype(np.float32) / 255.0)
        h, w = img.shape[-2:]
        crops += [img[:, y:y + size, x:x + size] for y in (0, h // 2) for x in (0, w // 2)]
    return torch.stack(crops)
