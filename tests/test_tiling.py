import numpy as np
import pytest
import rasterio
import torch
from torch import nn

from rsrestore.classical.dcp import DarkChannelPrior
from rsrestore.raster import RasterError
from rsrestore.tiling import ramp, restore_array, restore_file, tile_grid, tile_starts


class Square(nn.Module):
    """A per-pixel operation: tiled must equal untiled exactly."""

    halo = 0

    def forward(self, x, sar=None):
        return x * x


class StrideNet(nn.Module):
    """A network that only takes sizes divisible by 8 unless it pads itself (as every project model does)."""

    halo = 8

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x, sar=None):
        h, w = x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        xp = nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")
        y = nn.functional.avg_pool2d(self.conv(xp), 8)
        return nn.functional.interpolate(y, scale_factor=8)[..., :h, :w] * 0 + x


class Interrupt(nn.Module):
    halo = 0

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, sar=None):
        self.calls += 1
        if self.calls == 3:
            raise KeyboardInterrupt
        return x


def test_tile_starts_cover_and_overlap():
    for length in (1, 50, 512, 513, 640, 641, 1000, 2049):
        starts = tile_starts(length, 512, 32)
        tile = length if len(starts) == 1 else 512  # a side up to 1.25 tiles is one tile
        assert starts[0] == 0 and starts[-1] + tile == length
        for a, b in zip(starts, starts[1:]):
            assert b - a <= 512 - 32
    assert tile_starts(640, 512, 32) == [0] and len(tile_starts(641, 512, 32)) == 2
    with pytest.raises(ValueError):
        tile_starts(100, 32, 32)


def test_tile_grid_overlaps_are_consistent():
    grid = tile_grid(300, 417, 128, 16)
    for row in grid:
        for a, b in zip(row, row[1:]):
            assert a.right == b.left == a.x1 - b.x0 > 0
    for r0, r1 in zip(grid, grid[1:]):
        assert r0[0].bottom == r1[0].top == r0[0].y1 - r1[0].y0


def test_ramp_is_positive_and_smooth():
    w = ramp(64, 16, 16)
    assert (w > 0).all() and w.max() == 1
    assert np.all(np.diff(w[:16]) > 0) and np.all(np.diff(w[-16:]) < 0)


@pytest.mark.parametrize("shape,tile,overlap", [((3, 300, 417), 128, 16), ((4, 50, 60), 128, 16),
                                                ((3, 257, 129), 64, 40), ((13, 33, 200), 32, 8)])
def test_tiled_equals_untiled_for_a_per_pixel_op(shape, tile, overlap):
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    out = restore_array(Square(), img, tile=tile, overlap=overlap, batch_size=3)
    np.testing.assert_allclose(out, img**2, rtol=1e-5, atol=1e-6)


def test_tiled_network_with_stride_and_small_scene():
    img = np.random.default_rng(1).random((3, 45, 77)).astype(np.float32)
    out = restore_array(StrideNet(), img, tile=32, overlap=8)
    np.testing.assert_allclose(out, img, atol=1e-6)


def test_tiled_dcp_matches_whole_image_dcp():
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(1, 3, 1, 1, generator=g) * torch.ones(1, 3, 240, 300)
    clean = clean * (0.5 + 0.5 * torch.rand(1, 1, 240, 300, generator=g))
    hazy = clean * 0.6 + 0.35
    m = DarkChannelPrior()
    whole = m(hazy, stats=m.scene_statistics(hazy))[0].numpy()
    tiled = restore_array(m, hazy[0].numpy(), tile=96, overlap=16)
    b = m.cfg.patch  # away from the scene border
    assert np.abs(tiled - whole)[:, b:-b, b:-b].max() < 1e-3


def _scene(tmp_path, factory, **kw):
    return factory(**kw)


def test_geotiff_round_trip_keeps_metadata_and_nodata(geotiff_factory, tmp_path):
    path, data = geotiff_factory(height=150, width=170, nodata=0, tiled=True, blockxsize=64, blockysize=64,
                                 compress="deflate", descriptions=("r", "g", "b"))
    with rasterio.open(path, "r+") as ds:
        d = ds.read()
        d[:, :10, :] = 0
        ds.write(d)
        data = d
    out = restore_file(Square(), path, tmp_path / "out.tif", tile=64, overlap=8, progress=False)
    with rasterio.open(path) as a, rasterio.open(out) as b:
        assert b.crs == a.crs and b.transform == a.transform and b.nodata == a.nodata
        assert b.descriptions == ("r", "g", "b")
        assert b.profile["tiled"] and b.profile["blockxsize"] == 64 and b.compression == a.compression
        res = b.read()
    assert (res[:, :10] == 0).all()  # nodata untouched
    expected = np.clip(np.rint((data[:, 10:] / 255.0) ** 2 * 255), 0, 255)
    assert np.abs(res[:, 10:].astype(int) - expected).max() <= 1


def test_unselected_bands_pass_through(geotiff_factory, tmp_path):
    path, data = geotiff_factory(bands=5, dtype="uint16")
    out = restore_file(Square(), path, tmp_path / "out.tif", bands="4,3,2", tile=64, overlap=8, progress=False)
    with rasterio.open(out) as ds:
        res = ds.read()
    assert np.array_equal(res[[0, 4]], data[[0, 4]])
    assert not np.array_equal(res[3], data[3])
    expected = np.rint((data[3] / 10000.0) ** 2 * 10000)
    assert np.abs(res[3] - expected).max() <= 1


def test_png_and_jpeg_in_same_format_out(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (3, 40, 50), dtype=np.uint8)
    for ext, driver in ((".png", "PNG"), (".jpg", "JPEG")):
        src = tmp_path / f"in{ext}"
        with rasterio.open(src, "w", driver=driver, dtype="uint8", count=3, height=40, width=50) as ds:
            ds.write(data)
        out = restore_file(Square(), src, tmp_path / f"out{ext}", tile=32, overlap=8, progress=False)
        with rasterio.open(out) as ds:
            assert ds.driver == driver and ds.shape == (40, 50)


def test_cog_output_stays_cog(geotiff_factory, tmp_path):
    path, _ = geotiff_factory(height=300, width=300)
    cog = tmp_path / "cog.tif"
    rasterio.shutil.copy(path, cog, driver="COG")
    out = restore_file(Square(), cog, tmp_path / "out.tif", tile=128, overlap=16, progress=False)
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_interrupted_run_leaves_no_output(geotiff_factory, tmp_path):
    path, _ = geotiff_factory(height=200, width=200)
    dst = tmp_path / "out.tif"
    with pytest.raises(KeyboardInterrupt):
        restore_file(Interrupt(), path, dst, tile=64, overlap=8, batch_size=1, progress=False)
    assert not dst.exists()
    assert list(tmp_path.glob(".out.tif.*")) == []


def test_band_count_check(geotiff_factory, tmp_path):
    path, _ = geotiff_factory(bands=4)
    with pytest.raises(RasterError, match="takes 3 band"):
        restore_file(Square(), path, tmp_path / "o.tif", expected_bands=(3,), progress=False)
