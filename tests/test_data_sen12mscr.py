"""SEN12MS-CR: the real miniature in the official layout, plus a generated tree for the edge cases."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from rsrestore.data import SEN12MSCRDataset, build_dataset
from rsrestore.data.sen12mscr import scale_sar, scene_split
from rsrestore.raster import RasterError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sen12mscr"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real SEN12MS-CR miniature not found at {DATA} (../shared/data from the project root)"
)
# rasterio's own transform helpers still use Affine's `*`, which newer affine releases flag
pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
FULL = "ROIs1970_fall_{kind}/{sub}_139/ROIs1970_fall_{kind}_139_p839.tif"


def read_raw(relative: str) -> np.ndarray:
    with rasterio.open(DATA / relative) as src:
        return src.read()


def load_with_warning(*args, **kwargs) -> SEN12MSCRDataset:
    with pytest.warns(UserWarning, match=r"skipped 1 of 2 .*1 without a cloud-free target .*ROIs1868_summer_s2_19_p30"):
        return SEN12MSCRDataset(*args, **kwargs)


@needs_data
def test_real_patch_values_against_numpy():
    ds = load_with_warning(DATA)
    assert len(ds) == 1
    s = ds[0]
    assert s["input"].shape == s["target"].shape == (13, 256, 256)
    assert s["sar"].shape == (2, 256, 256)
    cloudy = read_raw(FULL.format(kind="s2_cloudy", sub="s2_cloudy")).astype(np.float64)
    clear = read_raw(FULL.format(kind="s2", sub="s2")).astype(np.float64)
    sar = read_raw(FULL.format(kind="s1", sub="s1")).astype(np.float64)
    np.testing.assert_allclose(s["input"].numpy(), np.clip(cloudy, 0, 10000) / 10000, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(s["target"].numpy(), np.clip(clear, 0, 10000) / 10000, rtol=1e-6, atol=1e-7)
    vv = (np.clip(sar[0], -25, 0) + 25) / 25
    vh = (np.clip(sar[1], -32.5, 0) + 32.5) / 32.5
    np.testing.assert_allclose(s["sar"].numpy(), np.stack([vv, vh]), rtol=1e-5, atol=1e-6)
    assert float(s["sar"].min()) >= 0 and float(s["sar"].max()) <= 1
    assert sar[0].min() < -25  # this patch really exercises the VV clip


@needs_data
def test_real_patch_meta_rgb_and_crop_transform():
    ds = load_with_warning(DATA, rgb_only=True)
    s = ds[0]
    meta = s["meta"]
    assert meta["name"] == "ROIs1970_fall_s2_cloudy_139_p839"
    assert (meta["roi"], meta["scene"], meta["patch"]) == ("ROIs1970_fall", "139", "839")
    assert meta["path"].endswith("ROIs1970_fall_s2_cloudy/s2_cloudy_139/ROIs1970_fall_s2_cloudy_139_p839.tif")
    assert meta["sar_path"].endswith("ROIs1970_fall_s1/s1_139/ROIs1970_fall_s1_139_p839.tif")
    with rasterio.open(meta["path"]) as src:
        assert meta["crs"] == src.crs.to_string() == "EPSG:32650"
        assert meta["transform"] == pytest.approx(tuple(src.transform)[:6])
        full_transform = src.transform
    cloudy = read_raw(FULL.format(kind="s2_cloudy", sub="s2_cloudy")).astype(np.float64)
    np.testing.assert_allclose(s["input"].numpy(), cloudy[[3, 2, 1]] / 10000, rtol=1e-6, atol=1e-7)
    assert s["sar"].shape[0] == 2  # SAR is never band-subset
    assert s["valid"].shape == (256, 256) and bool(s["valid"].all())  # the patches declare no nodata

    cropped = load_with_warning(DATA, crop=64, seed=11)[0]
    top, left, h, w = cropped["meta"]["window"]
    window_transform = rasterio.windows.transform(rasterio.windows.Window(left, top, w, h), full_transform)
    assert cropped["meta"]["transform"] == pytest.approx(tuple(window_transform)[:6])
    np.testing.assert_array_equal(cropped["sar"].numpy(), ds[0]["sar"].numpy()[:, top : top + 64, left : left + 64])


@needs_data
def test_real_missing_target_policies_and_splits():
    with pytest.raises(FileNotFoundError, match=r"1 of 2 .* incomplete.*missing_target='skip'"):
        SEN12MSCRDataset(DATA, missing_target="raise")
    # ROIs1970_fall scene 139 is in the reference test split; ROIs1868_summer scene 19 in val
    assert scene_split("ROIs1970_fall", "139") == "test" and scene_split("ROIs1868_summer", "19") == "val"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        test = build_dataset("sen12mscr", DATA, split="test", missing_target="raise")
    assert len(test) == 1
    with pytest.warns(UserWarning, match="skipped 1 of 1"), pytest.raises(FileNotFoundError, match="no complete"):
        SEN12MSCRDataset(DATA, split="val")
    # without SAR the summer patch still lacks its target; one level above the season folders works as root
    ds = load_with_warning(DATA.parent, with_sar=False)
    assert "sar" not in ds[0] and "sar_path" not in ds[0]["meta"]


# ---------------------------------------------------------------------------------------------------------------------
# Generated tree: NaNs in SAR, missing SAR, scene filtering, option errors
# ---------------------------------------------------------------------------------------------------------------------


def write_tif(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=array.shape[1], width=array.shape[2], count=array.shape[0],
                       dtype=array.dtype, crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10)) as dst:
        dst.write(array)


def make_tree(root: Path, triplets, size=8):
    """``triplets``: (roi, scene, patch, parts) with parts a subset of {"s1", "s2", "s2_cloudy"}."""
    rng = np.random.default_rng(5)
    for roi, scene, patch, parts in triplets:
        for kind in parts:
            sub = f"{kind}_{scene}"
            if kind == "s1":
                array = rng.uniform(-40, 5, (2, size, size)).astype(np.float32)
                array[0, 0, 0] = np.nan
            else:
                array = rng.integers(0, 15000, (13, size, size)).astype(np.uint16)
            write_tif(root / f"{roi}_{kind}" / sub / f"{roi}_{kind}_{scene}_p{patch}.tif", array)


ALL = ("s1", "s2", "s2_cloudy")


def test_generated_tree_order_splits_and_nan(tmp_path):
    make_tree(tmp_path, [
        ("ROIs2017_winter", "63", "10", ALL),      # test
        ("ROIs2017_winter", "8", "2", ALL),        # train
        ("ROIs2017_winter", "8", "10", ALL),
        ("ROIs1158_spring", "17", "1", ALL),       # val
        ("ROIs1158_spring", "5", "3", ("s2", "s2_cloudy")),  # train, no SAR
    ])
    with pytest.warns(UserWarning, match=r"skipped 1 of 5 .*1 without SAR"):
        ds = SEN12MSCRDataset(tmp_path)
    names = [ds[i]["meta"]["name"] for i in range(len(ds))]
    assert names == ["ROIs1158_spring_s2_cloudy_17_p1", "ROIs2017_winter_s2_cloudy_8_p2",
                     "ROIs2017_winter_s2_cloudy_8_p10", "ROIs2017_winter_s2_cloudy_63_p10"]
    s = ds[0]
    assert s["sar"][0, 0, 0].item() == 0.0 and np.isfinite(s["sar"].numpy()).all()
    assert 0 <= float(s["input"].min()) and float(s["input"].max()) <= 1
    with pytest.warns(UserWarning, match="1 without SAR"):
        train = SEN12MSCRDataset(tmp_path, "train")
    assert [train[i]["meta"]["scene"] for i in range(len(train))] == ["8", "8"]
    train_no_sar = SEN12MSCRDataset(tmp_path, "train", with_sar=False)
    assert len(train_no_sar) == 3
    assert len(SEN12MSCRDataset(tmp_path, "val")) == 1 and len(SEN12MSCRDataset(tmp_path, "test")) == 1


def test_scale_sar_closed_form():
    raw = np.array([[[-30.0, -25.0, -12.5, 0.0, 3.0, np.nan]], [[-40.0, -32.5, -16.25, 0.0, 3.0, np.nan]]])
    np.testing.assert_allclose(scale_sar(raw), [[[0, 0, 0.5, 1, 1, 0]], [[0, 0, 0.5, 1, 1, 0]]])
    with pytest.raises(RasterError, match="must have 2 bands"):
        scale_sar(raw[:1])


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SEN12MSCRDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no SEN12MS-CR folders .*ROIs<id>_<season>_s2_cloudy"):
        SEN12MSCRDataset(tmp_path / "empty")
    make_tree(tmp_path / "t", [("ROIs2017_winter", "8", "2", ALL)])
    with pytest.raises(ValueError, match="missing_target must be one of"):
        SEN12MSCRDataset(tmp_path / "t", missing_target="ignore")
    with pytest.raises(ValueError, match="split must be one of"):
        SEN12MSCRDataset(tmp_path / "t", split="validation")
    with pytest.raises(ValueError, match="either rgb_only"):
        SEN12MSCRDataset(tmp_path / "t", rgb_only=True, bands=[1])
    with pytest.raises(RasterError, match=r"s2_cloudy_8_p2.tif has 13 band\(s\); cannot select band 14"):
        SEN12MSCRDataset(tmp_path / "t", bands=[14])[0]
    with pytest.raises(RasterError, match="start at 1"):
        SEN12MSCRDataset(tmp_path / "t", bands=[0, 1])
    with pytest.raises(ValueError, match="unknown option.*'cloudy_only'"):
        build_dataset("sen12mscr", tmp_path / "t", cloudy_only=True)
