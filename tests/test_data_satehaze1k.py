"""SateHaze1K in its original release layout and in the common repack, on tiny generated trees."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from rsrestore.data import SateHaze1KDataset, build_dataset

RNG = np.random.default_rng(2)


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", height=array.shape[1], width=array.shape[2],
                           count=array.shape[0], dtype=array.dtype) as dst:
            dst.write(array)


def make_original(root: Path, subsets=("thin", "moderate", "thick"), counts=None, size=8):
    """``Haze1k_<subset>/dataset/<split>/{input,target}/N-inputs.png, N-targets.png``; returns values by file."""
    counts = counts or {"train": [1, 2, 10], "valid": [321], "test": [356, 400]}
    values = {}
    for subset in subsets:
        for split, numbers in counts.items():
            base = root / f"Haze1k_{subset}" / "dataset" / split
            # targets written in another order than inputs, so pairing cannot rely on listing order
            for n in reversed(numbers):
                t = RNG.integers(0, 256, (3, size, size), dtype=np.uint8)
                write_png(base / "target" / f"{n}-targets.png", t)
                values[(subset, split, n, "target")] = t
            for n in numbers:
                x = RNG.integers(0, 256, (3, size, size), dtype=np.uint8)
                write_png(base / "input" / f"{n}-inputs.png", x)
                values[(subset, split, n, "input")] = x
    return values


def test_original_layout_pairs_by_number(tmp_path):
    values = make_original(tmp_path)
    ds = SateHaze1KDataset(tmp_path, "train", subset="thick")
    assert len(ds) == 3
    assert [ds[i]["meta"]["name"] for i in range(3)] == ["1-inputs", "2-inputs", "10-inputs"]
    for i, n in enumerate([1, 2, 10]):
        s = ds[i]
        assert s["meta"]["target_path"].endswith(f"thick/dataset/train/target/{n}-targets.png")
        assert s["meta"]["subset"] == "thick"
        np.testing.assert_allclose(s["input"].numpy(), values[("thick", "train", n, "input")] / 255.0, rtol=1e-6)
        np.testing.assert_allclose(s["target"].numpy(), values[("thick", "train", n, "target")] / 255.0, rtol=1e-6)


def test_splits_and_subset_all(tmp_path):
    # archives often unpack into Haze1k/Haze1k_*: the folder above the Haze1k_* folders works as root too
    make_original(tmp_path / "Haze1k")
    assert len(SateHaze1KDataset(tmp_path, "valid", subset="thin")) == 1
    assert len(SateHaze1KDataset(tmp_path / "Haze1k", "val", subset="thin")) == 1
    test_all = build_dataset("satehaze1k", tmp_path, split="test")
    assert len(test_all) == 6
    assert [test_all[i]["meta"]["subset"] for i in range(6)] == ["thin"] * 2 + ["moderate"] * 2 + ["thick"] * 2
    assert len(SateHaze1KDataset(tmp_path / "Haze1k" / "Haze1k_moderate", subset="moderate")) == 3
    with pytest.raises(FileNotFoundError, match="Haze1k_"):
        SateHaze1KDataset(tmp_path / "Haze1k" / "Haze1k_moderate", subset="thin")


def test_repack_layout(tmp_path):
    for subset in ("thin", "moderate", "thick"):
        for split in ("train", "test"):
            for n in (3, 4):
                img = RNG.integers(0, 256, (3, 6, 6), dtype=np.uint8)
                write_png(tmp_path / f"Haze1k_{subset}" / split / "input" / f"{n}-inputs.png", img)
                write_png(tmp_path / f"Haze1k_{subset}" / split / "target" / f"{n}-targets.png", img)
    ds = SateHaze1KDataset(tmp_path, "test", crop=4, flip=True)
    assert len(ds) == 6
    s = ds[5]
    assert s["input"].shape == (3, 4, 4)
    np.testing.assert_array_equal(s["input"].numpy(), s["target"].numpy())
    with pytest.raises(FileNotFoundError, match=r"no 'valid' split .*found: test, train"):
        SateHaze1KDataset(tmp_path, "valid", subset="thin")


def test_errors(tmp_path):
    make_original(tmp_path, subsets=("thick",))
    with pytest.raises(FileNotFoundError, match=r"Haze1k_\{thin,moderate\}.*subset="):
        SateHaze1KDataset(tmp_path)
    with pytest.raises(ValueError, match="subset must be one of"):
        SateHaze1KDataset(tmp_path, subset="medium")
    with pytest.raises(ValueError, match="split must be one of"):
        SateHaze1KDataset(tmp_path, split="training", subset="thick")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SateHaze1KDataset(tmp_path / "missing")
    for p in (tmp_path / "Haze1k_thick" / "dataset" / "test" / "target").iterdir():
        p.rename(p.with_name("x" + p.name))
    with pytest.raises(FileNotFoundError, match=r"no input/target pairs matched.*2 input and 2 target"):
        SateHaze1KDataset(tmp_path, "test", subset="thick")
    with pytest.raises(ValueError, match="unknown option"):
        build_dataset("satehaze1k", tmp_path, level="thick")
