"""Shared fixtures: the real data folder beside the repository, and small generated GeoTIFFs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Two pytest-xdist workers share two cores: one thread each avoids oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


def make_geotiff(path: Path, data: np.ndarray, nodata=None, crs="EPSG:32633", descriptions=None, **extra) -> Path:
    """Write a (C, H, W) array as a georeferenced GeoTIFF with a known transform."""
    c, h, w = data.shape
    profile = dict(driver="GTiff", dtype=str(data.dtype), count=c, height=h, width=w, crs=crs,
                   transform=from_origin(500000.0, 4600000.0, 10.0, 10.0), nodata=nodata)
    profile.update(extra)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        if descriptions:
            ds.descriptions = descriptions
    return path


@pytest.fixture
def geotiff_factory(tmp_path):
    def factory(name="scene.tif", bands=3, height=97, width=131, dtype="uint8", nodata=None, seed=0, **extra):
        rng = np.random.default_rng(seed)
        if dtype == "uint8":
            data = rng.integers(1, 256, (bands, height, width), dtype=np.uint8)
        elif dtype == "uint16":
            data = rng.integers(1, 10000, (bands, height, width)).astype(np.uint16)
        elif dtype == "int16":
            data = rng.integers(1, 10000, (bands, height, width)).astype(np.int16)
        else:
            data = rng.random((bands, height, width)).astype(dtype)
        return make_geotiff(tmp_path / name, data, nodata=nodata, **extra), data

    return factory
