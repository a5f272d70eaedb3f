import numpy as np
import pytest
import rasterio

from rsrestore.raster import (
    RasterError,
    check_output_path,
    default_scale,
    from_unit,
    inspect_raster,
    parse_bands,
    read_raster,
    sar_to_unit,
    to_unit,
    write_raster,
)


@pytest.mark.parametrize(
    "dtype,driver,scale", [("uint8", "GTiff", 255), ("uint16", "GTiff", 10000), ("uint16", "PNG", 65535),
                           ("int16", "GTiff", 10000), ("float32", "GTiff", 1), ("float64", "GTiff", 1)]
)
def test_default_scales(dtype, driver, scale):
    assert default_scale(dtype, driver) == scale


def test_unsupported_dtype_is_a_clear_error(geotiff_factory):
    path, _ = geotiff_factory(dtype="int32")
    with pytest.raises(RasterError, match="unsupported data type 'int32'"):
        inspect_raster(path)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_unit_round_trip_is_lossless_for_in_range_values(dtype, geotiff_factory):
    path, data = geotiff_factory(dtype=dtype)
    values, mask, info = read_raster(path)
    assert values.dtype == np.float32 and mask.all()
    assert np.array_equal(from_unit(values, info.dtype, info.scale), data)


def test_from_unit_clips_and_rounds():
    assert from_unit(np.array([-0.2, 0.5, 1.7]), "uint8", 255).tolist() == [0, 128, 255]


def test_scale_override_and_band_selection(geotiff_factory):
    path, data = geotiff_factory(bands=5, dtype="uint16")
    values, _, info = read_raster(path, bands="4,3,2", scale=65535)
    assert info.bands == [4, 3, 2] and info.scale == 65535
    np.testing.assert_allclose(values, data[[3, 2, 1]] / 65535, rtol=1e-6)


@pytest.mark.parametrize("spec,msg", [("0,1", "start at 1"), ("a,b", "comma-separated"), ("1,1", "twice")])
def test_bad_band_specs(spec, msg):
    with pytest.raises(RasterError, match=msg):
        parse_bands(spec)


def test_band_beyond_count(geotiff_factory):
    path, _ = geotiff_factory(bands=3)
    with pytest.raises(RasterError, match="has 3 band"):
        inspect_raster(path, bands="4,3,2")


def test_nodata_mask(geotiff_factory):
    path, data = geotiff_factory(nodata=0)
    with rasterio.open(path, "r+") as ds:
        d = ds.read()
        d[:, :5, :] = 0
        d[0, 50, 50] = 0  # one band zero: still a valid pixel (dark red)
        ds.write(d)
    _, mask, info = read_raster(path)
    assert info.nodata == 0
    assert not mask[:5].any() and mask[5:].all()


def test_missing_corrupt_and_folder_inputs(tmp_path):
    with pytest.raises(RasterError, match="not found"):
        inspect_raster(tmp_path / "nope.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(RasterError, match="cannot read"):
        inspect_raster(bad)
    with pytest.raises(RasterError, match="folder"):
        inspect_raster(tmp_path)


def test_output_path_checks(tmp_path, geotiff_factory):
    src, _ = geotiff_factory()
    with pytest.raises(RasterError, match="is the input itself"):
        check_output_path(src, src, overwrite=True)
    other = tmp_path / "out.tif"
    other.write_bytes(b"x")
    with pytest.raises(RasterError, match="--overwrite"):
        check_output_path(src, other, overwrite=False)
    assert check_output_path(src, other, overwrite=True) == other
    with pytest.raises(RasterError, match="folder does not exist"):
        check_output_path(src, tmp_path / "no" / "out.tif", overwrite=False)


def test_sar_scaling_matches_dsen2cr_ranges():
    db = np.array([[[-30.0, -25.0, -12.5, 0.0, 3.0]], [[-40.0, -32.5, -16.25, 0.0, 1.0]]], dtype=np.float32)
    out = sar_to_unit(db)
    np.testing.assert_allclose(out[0, 0], [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(out[1, 0], [0, 0, 0.5, 1, 1])


def test_write_raster_png_and_geotiff(tmp_path, geotiff_factory):
    path, data = geotiff_factory()
    values, _, info = read_raster(path)
    out = write_raster(tmp_path / "copy.tif", values, like=info)
    with rasterio.open(out) as ds:
        assert ds.crs == info.crs and ds.transform == info.transform
        assert np.array_equal(ds.read(), data)
    png = write_raster(tmp_path / "copy.png", values, dtype="uint8")
    with rasterio.open(png) as ds:
        assert ds.driver == "PNG" and np.array_equal(ds.read(), data)


def test_to_unit_keeps_values_above_range():
    assert to_unit(np.array([12000], dtype=np.uint16), 10000)[0] == pytest.approx(1.2)
