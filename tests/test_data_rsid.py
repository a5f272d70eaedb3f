"""RSID in its release layout ``{train,test}/{hazy,GT}`` on a tiny generated tree."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from rsrestore.data import RSIDDataset, build_dataset

RNG = np.random.default_rng(4)


def write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    driver = {".png": "PNG", ".jpg": "JPEG"}[path.suffix]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver=driver, height=array.shape[1], width=array.shape[2],
                           count=array.shape[0], dtype=array.dtype) as dst:
            dst.write(array)


def make_rsid(root: Path, counts=(("train", 5), ("test", 2)), size=10):
    values = {}
    for split, n in counts:
        for i in range(1, n + 1):
            hazy = RNG.integers(0, 256, (3, size, size), dtype=np.uint8)
            gt = RNG.integers(0, 256, (3, size, size), dtype=np.uint8)
            write(root / split / "hazy" / f"{i}.png", hazy)
            write(root / split / "GT" / f"{i}.png", gt)
            values[(split, i)] = (hazy, gt)
    return values


def test_rsid_splits_and_values(tmp_path):
    values = make_rsid(tmp_path)
    train = RSIDDataset(tmp_path)
    test = build_dataset("rsid", tmp_path, split="test")
    assert len(train) == 5 and len(test) == 2
    s = test[1]
    assert s["meta"]["name"] == "2" and s["meta"]["path"] == str(tmp_path / "test" / "hazy" / "2.png")
    np.testing.assert_allclose(s["input"].numpy(), values[("test", 2)][0] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(s["target"].numpy(), values[("test", 2)][1] / 255.0, rtol=1e-6)
    cropped = RSIDDataset(tmp_path, crop=7, flip=True, seed=1)
    assert all(cropped[i]["input"].shape == (3, 7, 7) for i in range(5))


def test_rsid_jpeg_inputs_pair_with_png_targets(tmp_path):
    ramp = np.add.outer(np.arange(16), np.arange(16)) * 7  # smooth, so JPEG keeps it close
    img = np.stack([ramp, ramp[::-1], 255 - ramp]).astype(np.uint8)
    write(tmp_path / "train" / "hazy" / "a.jpg", img)
    write(tmp_path / "train" / "GT" / "a.png", img)
    s = RSIDDataset(tmp_path)[0]
    assert s["meta"]["path"].endswith("a.jpg") and s["meta"]["target_path"].endswith("a.png")
    # lossy JPEG: close to the PNG, not equal
    assert float((s["input"] - s["target"]).abs().mean()) < 0.02


def test_rsid_errors(tmp_path):
    make_rsid(tmp_path)
    with pytest.raises(ValueError, match="split must be one of 'train', 'test'"):
        RSIDDataset(tmp_path, "val")
    (tmp_path / "test" / "GT").rename(tmp_path / "test" / "clean")
    with pytest.raises(FileNotFoundError, match=r"no target folder .*GT\|gt"):
        RSIDDataset(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RSIDDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown option"):
        build_dataset("rsid", tmp_path, subset="thin")
