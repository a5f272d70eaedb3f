"""Training, evaluation and restoration read a file the same way: every dataset goes through rsrestore.raster.

For each format and dtype a dataset item must equal what ``rsrestore restore`` reads (``raster.read_raster``):
values, 1-based band selection and the valid-pixel mask; SEN12MS-CR differs only by its documented DSen2-CR clip.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from rsrestore.data import build_dataset
from rsrestore.raster import RasterError, read_raster, sar_to_unit

# rasterio's own transform helpers still use Affine's `*`, which newer affine releases flag
pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
RNG = np.random.default_rng(9)
DRIVERS = {".tif": "GTiff", ".png": "PNG", ".jpg": "JPEG"}
# (suffix, dtype): JPEG holds 8 bits (GDAL's 12-bit JPEG is not a format to train on)
CASES = [(".tif", "uint8"), (".tif", "uint16"), (".png", "uint8"), (".png", "uint16"), (".jpg", "uint8")]


def write(path: Path, array: np.ndarray, nodata=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver=DRIVERS[path.suffix], height=array.shape[1], width=array.shape[2], count=array.shape[0],
                   dtype=array.dtype)
    if path.suffix == ".tif":
        profile.update(crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10), nodata=nodata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(array)
    return path


def scene(dtype: str, bands: int = 3, size: tuple[int, int] = (12, 10)) -> np.ndarray:
    top = 255 if dtype == "uint8" else 14000  # above 10000: reflectance x 10000 may exceed 1 (bright clouds)
    raw = RNG.integers(1, top, size=(bands, *size), endpoint=True).astype(dtype)
    raw[:, :2, :3] = 0  # a nodata corner where the file declares nodata 0
    return raw


def restore_reads(path: Path, bands=None, scale=None):
    values, valid, _ = read_raster(path, bands=bands, scale=scale)
    return values, valid


def items(ds):
    """Every item, with any warning an error: reading thousands of PNG/JPEG files must stay quiet."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize(("suffix", "dtype"), CASES)
def test_paired_dataset_reads_what_restore_reads(tmp_path, suffix, dtype):
    nodata = 0 if suffix == ".tif" else None
    x = write(tmp_path / "input" / f"a{suffix}", scene(dtype, bands=4 if suffix == ".tif" else 3), nodata)
    y = write(tmp_path / "target" / f"a{suffix}", scene(dtype, bands=4 if suffix == ".tif" else 3), nodata)
    (item,) = items(build_dataset("paired", tmp_path))
    for key, path in (("input", x), ("target", y)):
        values, _ = restore_reads(path)
        assert item[key].numpy().dtype == values.dtype == np.float32
        np.testing.assert_array_equal(item[key].numpy(), values)
    valid = restore_reads(x)[1] & restore_reads(y)[1]
    np.testing.assert_array_equal(item["valid"].numpy(), valid)
    assert bool(valid.all()) == (nodata is None)  # the GeoTIFF's nodata corner is invalid in both paths
    # band numbers as restore --bands counts them
    (sel,) = items(build_dataset("paired", tmp_path, bands="3,1"))
    np.testing.assert_array_equal(sel["input"].numpy(), restore_reads(x, bands=[3, 1])[0])
    if dtype == "uint16":  # the scale follows the format, as in restore: 10000 in a GeoTIFF, 65535 in a PNG
        scale = 10000.0 if suffix == ".tif" else 65535.0
        raw = restore_reads(x, scale=1.0)[0]  # the stored values
        np.testing.assert_allclose(item["input"].numpy(), raw / scale, rtol=1e-6)
        # and a scale given to the dataset acts as restore --scale does
        (scaled,) = items(build_dataset("paired", tmp_path, scale=40000))
        np.testing.assert_array_equal(scaled["input"].numpy(), restore_reads(x, scale=40000)[0])
        np.testing.assert_allclose(scaled["input"].numpy(), raw / 40000, rtol=1e-6)


def test_named_datasets_read_what_restore_reads(tmp_path):
    def pair(inp: Path, tgt: Path, dtype="uint8") -> tuple[Path, Path]:
        return write(inp, scene(dtype)), write(tgt, scene(dtype))

    checks = []
    rice = pair(tmp_path / "RICE1" / "cloud" / "0.png", tmp_path / "RICE1" / "label" / "0.png")
    checks.append((build_dataset("rice", tmp_path / "RICE1", split="all"), rice))
    haze = pair(tmp_path / "Haze1k_thin" / "test" / "input" / "1-inputs.jpg",
                tmp_path / "Haze1k_thin" / "test" / "target" / "1-targets.png")
    checks.append((build_dataset("satehaze1k", tmp_path, split="test", subset="thin"), haze))
    rsid = pair(tmp_path / "rsid" / "test" / "hazy" / "1.png", tmp_path / "rsid" / "test" / "GT" / "1.png", "uint16")
    checks.append((build_dataset("rsid", tmp_path / "rsid", split="test"), rsid))
    for ds, (x, y) in checks:
        (item,) = items(ds)
        np.testing.assert_array_equal(item["input"].numpy(), restore_reads(x)[0])
        np.testing.assert_array_equal(item["target"].numpy(), restore_reads(y)[0])
        np.testing.assert_array_equal(item["valid"].numpy(), restore_reads(x)[1] & restore_reads(y)[1])


def test_sen12mscr_differs_from_restore_only_by_the_dsen2cr_clip(tmp_path):
    base = tmp_path / "ROIs2017_winter_{kind}" / "{kind}_8" / "ROIs2017_winter_{kind}_8_p2.tif"
    cloudy = write(Path(str(base).format(kind="s2_cloudy")), scene("uint16", bands=13), nodata=0)
    clear = write(Path(str(base).format(kind="s2")), scene("uint16", bands=13), nodata=0)
    sar_db = RNG.uniform(-40, 5, (2, 12, 10)).astype(np.float32)
    sar = write(Path(str(base).format(kind="s1")), sar_db)
    (item,) = items(build_dataset("sen12mscr", tmp_path, rgb_only=True))
    for key, path in (("input", cloudy), ("target", clear)):
        values, _ = restore_reads(path, bands=[4, 3, 2])
        assert values.max() > 1  # restore keeps reflectance above 1; DSen2-CR clips it
        np.testing.assert_array_equal(item[key].numpy(), np.clip(values, 0, 1))
    np.testing.assert_array_equal(item["valid"].numpy(), restore_reads(cloudy)[1] & restore_reads(clear)[1])
    assert not bool(item["valid"].all())
    np.testing.assert_array_equal(item["sar"].numpy(), sar_to_unit(read_raster(sar, scale=1.0)[0]))


def test_synthetic_dataset_crops_what_restore_reads(tmp_path):
    path = write(tmp_path / "clean" / "a.tif", scene("uint16", bands=4, size=(40, 36)))
    ds = build_dataset("synthetic", tmp_path / "clean", kind="haze", size=16, flip=False, bands=[3, 2, 1])
    item = ds[0]
    row, col, h, w = item["meta"]["window"]
    values = restore_reads(path, bands=[3, 2, 1])[0][:, row : row + h, col : col + w]
    np.testing.assert_array_equal(item["target"].numpy(), np.clip(values, 0, 1))


def test_a_damaged_file_is_one_line_naming_it_in_every_path(tmp_path):
    write(tmp_path / "input" / "a.png", scene("uint8"))
    bad = tmp_path / "target" / "a.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    ds = build_dataset("paired", tmp_path)
    with pytest.raises(RasterError) as from_dataset:
        ds[0]
    with pytest.raises(RasterError) as from_restore:
        read_raster(bad)
    assert str(from_dataset.value) == str(from_restore.value)
    assert str(bad) in str(from_dataset.value) and "\n" not in str(from_dataset.value)


def test_evaluate_leaves_out_the_pixels_restore_leaves_out(tmp_path):
    from rsrestore.evaluate import evaluate

    target = scene("uint8", size=(16, 16))  # SSIM needs 11 x 11
    target[:, :2, :3] = 77  # the target holds real values where the input has nodata
    degraded = target.copy()
    degraded[:, :2, :3] = 0
    write(tmp_path / "input" / "a.tif", degraded, nodata=0)
    write(tmp_path / "target" / "a.tif", target)
    (item,) = items(build_dataset("paired", tmp_path))
    assert int((~item["valid"]).sum()) == 6
    results = evaluate(["input"], "paired", tmp_path, tmp_path / "report", pictures=0, progress=False)
    # equal on every valid pixel: a perfect score, the nodata corner never counted as an error
    assert results["input"].mean["mae"] == 0.0 and results["input"].mean["psnr"] == float("inf")
