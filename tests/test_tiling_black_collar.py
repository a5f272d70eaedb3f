"""A black collar in a scene that declares no nodata is treated as nodata: filled before the model, kept on output."""

import numpy as np
import rasterio
from conftest import make_geotiff
from test_nodata_fill import EdgeResponse

from rsrestore.tiling import black_pixels, restore_array, restore_file


def _scene():
    # A flat 0.3 field with a black collar on the left and a black top-right corner; one valid pixel is black in
    # two bands only (a sensor fringe), which is data.
    image = np.full((3, 40, 60), 0.3, np.float32)
    image[:, :, :12] = 0.0
    image[:, :6, 50:] = 0.0
    image[:2, 20, 30] = 0.0
    mask = ~black_pixels(image)
    return image, mask


def test_black_pixels_are_black_in_every_band():
    image, mask = _scene()
    assert not mask[:, :12].any() and not mask[:6, 50:].any() and mask[20, 30] and mask.sum() == 40 * 48 - 60
    nan = np.full((3, 2, 2), np.nan, np.float32)
    assert not black_pixels(nan).any()


def test_array_without_mask_restores_as_with_the_collar_declared():
    image, mask = _scene()
    declared = restore_array(EdgeResponse(), image, mask=mask, tile=32, overlap=8)
    implicit = restore_array(EdgeResponse(), image, tile=32, overlap=8)
    np.testing.assert_array_equal(implicit, declared)
    assert (implicit[:, ~mask] == 0).all()  # the collar comes back black, as it was
    assert np.abs(implicit[:, :, 12:15]).max() < 1e-6  # no edge response beside the collar: it was filled
    assert implicit[:, 20, 30].max() > 0.1  # the partly black valid pixel is an edge the model did see


def test_all_black_array_is_an_image():
    out = restore_array(EdgeResponse(), np.zeros((3, 20, 20), np.float32))
    assert out.shape == (3, 20, 20) and (out == 0).all()


def test_file_without_nodata_keeps_its_black_collar(tmp_path):
    image, mask = _scene()
    data = (image * 255).round().astype(np.uint8)
    src = make_geotiff(tmp_path / "collar.tif", data)
    declared = make_geotiff(tmp_path / "declared.tif", data, nodata=0)
    restore_file(EdgeResponse(), src, tmp_path / "out.tif", tile=32, overlap=8)
    restore_file(EdgeResponse(), declared, tmp_path / "out_declared.tif", tile=32, overlap=8)
    with rasterio.open(tmp_path / "out.tif") as a, rasterio.open(tmp_path / "out_declared.tif") as b:
        out, ref = a.read(), b.read()
        assert a.nodata is None
    # Equal but for valid pixels that were 0 in a band, which the declared file's writer lifts to 1 so that they do
    # not read as nodata (where the input was not 0 both writers write 1 for a 0: see raster.off_zero).
    np.testing.assert_array_equal(np.where(mask, np.maximum(out, 1), out), ref)
    assert (out[:, ~mask] == 0).all()  # the collar is kept black
    assert (out[:, :, 12:15] == 1).all()  # no edge response beside it (it was filled); 0 written as 1 (input 77)


def test_declared_nodata_leaves_black_data_pixels_to_the_model(tmp_path):
    image, mask = _scene()
    data = (image * 255).round().astype(np.uint8)
    src = make_geotiff(tmp_path / "nodata255.tif", data, nodata=255)  # declares another value: black is data
    restore_file(EdgeResponse(), src, tmp_path / "out.tif", tile=32, overlap=8)
    with rasterio.open(tmp_path / "out.tif") as ds:
        out = ds.read()
    assert out[:, :, 11:13].min() > 50  # the collar's edge is restored as data: the edge response is there


def test_the_decimated_copy_that_checks_for_a_collar_serves_the_scene_statistics(tmp_path):
    """A scene that declares no nodata is read decimated once at open (is it all black?); the scene statistics use that
    copy instead of reading the file again."""
    from rsrestore.raster import inspect_raster
    from rsrestore.tiling import STATS_MAX_SIDE, RasterSource

    image, mask = _scene()
    src = make_geotiff(tmp_path / "collar.tif", (image * 255).round().astype(np.uint8))
    source = RasterSource(inspect_raster(src))
    try:
        assert source.black_is_nodata
        reads = []
        real_read = source.ds.read

        class Counting:  # the dataset, with its reads counted
            def __getattr__(self, name):
                return getattr(source.ds_real, name)

            def read(self, *args, **kwargs):
                reads.append(kwargs.get("out_shape"))
                return real_read(*args, **kwargs)

        source.ds_real, source.ds = source.ds, Counting()
        img, valid = source.decimated(STATS_MAX_SIDE)
        assert reads == []  # served from the copy read at open
        np.testing.assert_array_equal(valid, mask)
        assert np.abs(img - np.round(image * 255) / 255).max() < 1e-6
        source.decimated(16)  # another size is read (once)
        source.decimated(16)
        assert len(reads) == 1
    finally:
        source.ds = source.ds_real
        source.close()
