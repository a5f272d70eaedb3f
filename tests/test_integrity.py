"""Library-level data integrity: nodata values, non-finite pixels, scratch files, BigTIFF, option checks, the Python
API's arrays. The same cases through the command line are in test_cli_integrity.py."""

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from torch import nn

import rsrestore
from rsrestore.raster import (
    SCRATCH_HOST,
    RasterError,
    RasterWriter,
    check_complete,
    check_output_format,
    check_scale,
    from_unit,
    inspect_raster,
    off_zero,
    scratch_profile,
    sweep_stale_scratch,
    write_raster,
)
from rsrestore.tiling import check_tiling, restore_array, restore_file, tile_grid


class Darken(nn.Module):
    """Pushes every value to the bottom of the range: each restored value lands on a nodata value of 0."""

    halo = 0

    def forward(self, x, sar=None):
        return x * 0 - 0.1


class Brighten(nn.Module):
    halo = 0

    def forward(self, x, sar=None):
        return x * 0 + 1.1


class Identity(nn.Module):
    halo = 0

    def forward(self, x, sar=None):
        return x


class Seer(nn.Module):
    """Records the largest absolute value it is given: NaN or a huge fill would show here."""

    halo = 0

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, sar=None):
        self.seen.append(float(x.abs().max()))
        return x * 0.5


# nodata ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype,nodata,values,expected",
    [("uint8", 0, [-0.1, 0.0, 0.001, 0.5], [1, 1, 1, 128]), ("uint8", 255, [1.2, 1.0, 0.5], [254, 254, 128]),
     ("uint16", 0, [0.0, 0.00001], [1, 1]), ("int16", -5, [-0.00051, -0.0005, -0.00049], [-6, -4, -4])],
)
def test_values_landing_on_nodata_move_to_the_nearest_value_off_it(dtype, nodata, values, expected):
    scale = {"uint8": 255, "uint16": 10000, "int16": 10000}[dtype]
    out = from_unit(np.array(values), dtype, scale, nodata=nodata)
    assert out.tolist() == expected
    assert from_unit(np.array(values), dtype, scale).tolist() != expected  # without nodata: no change


def test_nodata_the_data_type_cannot_hold_changes_nothing():
    values = np.array([0.0, 0.5, 1.0])
    for nodata in (-9999, 300, 0.5, float("nan")):
        assert from_unit(values, "uint8", 255, nodata=nodata).tolist() == [0, 128, 255]


def test_float_nodata_moves_to_the_next_float():
    out = from_unit(np.array([0.0, -1.0, 0.5]), "float32", 1.0, nodata=-1.0)
    assert out[1] != -1 and out[1] == np.nextafter(np.float32(-1), np.float32(np.inf))
    assert out[0] == 0 and out[2] == 0.5
    nan_nodata = from_unit(np.array([0.25]), "float32", 1.0, nodata=float("nan"))
    assert nan_nodata[0] == 0.25


def test_without_declared_nodata_unsigned_values_the_user_had_are_never_written_as_zero(geotiff_factory, tmp_path):
    """0 is what most products read as no data whatever the file declares: a restored value rounded or clipped to 0
    is written as 1 where the input was not 0; pixels that were 0 may stay 0. Signed and float data are left alone."""
    assert np.array_equal(off_zero(np.array([0, 0, 5, 1], np.uint16), np.array([0, 3, 7, 0])), [0, 1, 5, 1])
    assert np.array_equal(off_zero(np.array([0, -1], np.int16), np.array([4, 4])), [0, -1])
    src, data = geotiff_factory("dark16.tif", dtype="uint16", height=40, width=40)
    data[:, :4] = 0
    with rasterio.open(src, "r+") as ds:
        ds.write(data)
    res = rasterio.open(restore_file(Darken(), src, tmp_path / "dark16_out.tif", progress=False)).read()
    assert (res[:, :4] == 0).all() and (res[:, 4:] == 1).all()
    out = rsrestore._restore_in_memory(Darken(), "darken", None, data, None)  # what the API does with an array
    assert out.dtype == np.uint16 and (out[:, :4] == 0).all() and (out[:, 4:] == 1).all()


def test_restored_file_keeps_valid_pixels_off_nodata_at_both_ends(geotiff_factory, tmp_path):
    for model, nodata, name in ((Darken(), 0, "dark"), (Brighten(), 255, "bright")):
        src, data = geotiff_factory(f"{name}.tif", nodata=nodata, height=40, width=40)
        data[:, :4] = nodata
        with rasterio.open(src, "r+") as ds:
            ds.write(data)
        out = restore_file(model, src, tmp_path / f"{name}_out.tif", progress=False)
        res = rasterio.open(out).read()
        assert (res[:, :4] == nodata).all()  # nodata pixels as they were
        assert (res[:, 4:] == (1 if nodata == 0 else 254)).all()  # valid pixels next to nodata, never on it


# non-finite pixels -----------------------------------------------------------------------------------------------


def test_non_finite_pixels_feed_no_tile_and_come_back_as_they_were(recwarn):
    img = np.full((3, 40, 40), 0.4, np.float32)
    img[1, 5, 5] = np.nan
    img[0, 30, 30] = -np.inf
    model = Seer()
    with pytest.warns(UserWarning, match="the array: 2 pixel"):
        out = restore_array(model, img, tile=16, overlap=4)
    assert max(model.seen) == pytest.approx(0.4, abs=1e-5)  # the model saw the fill colour, not NaN or infinity
    assert np.isnan(out[1, 5, 5]) and out[0, 30, 30] == -np.inf
    assert np.isfinite(out).sum() == out.size - 2
    np.testing.assert_allclose(out[:, 20, 20], 0.2)


def test_non_finite_pixels_feed_no_scene_statistic():
    dcp = rsrestore.load_model("dcp")
    clean = np.random.default_rng(0).uniform(0.2, 0.6, (3, 48, 48)).astype(np.float32)
    with_nan = clean.copy()
    with_nan[:, 10, 10] = np.nan
    with pytest.warns(UserWarning, match="1 pixel"):
        out = restore_array(dcp, with_nan)
    assert np.isfinite(out).sum() == out.size - 3
    assert np.isfinite(out[:, 30:, 30:]).all()


# scale and tiling options ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "x"])
def test_bad_scales_are_refused(bad, geotiff_factory):
    with pytest.raises(RasterError, match="scale"):
        check_scale(bad)
    src, _ = geotiff_factory()
    with pytest.raises(RasterError, match="scale"):
        inspect_raster(src, scale=bad)
    assert check_scale(None) is None and check_scale("255") == 255.0


@pytest.mark.parametrize("tile,overlap,batch,phrase", [(0, 0, 1, "--tile"), (15, 0, 1, "at least 16"),
                                                       (64, -1, 1, "--overlap"), (64, 64, 1, "smaller than"),
                                                       (64, 8, 0, "--batch-size")])
def test_bad_tiling_options(tile, overlap, batch, phrase):
    with pytest.raises(RasterError, match=phrase):
        check_tiling(tile, overlap, batch)
    with pytest.raises(RasterError, match=phrase):
        rsrestore.restore(np.zeros((3, 32, 32), np.float32), method="dcp", tile=tile, overlap=overlap,
                          batch_size=batch)


def test_small_scenes_are_one_tile_per_side_up_to_a_quarter_more_than_the_tile():
    assert [len(r) for r in tile_grid(600, 640, 512, 32)] == [1]
    grid = tile_grid(600, 700, 512, 32)
    assert len(grid) == 1 and len(grid[0]) == 2 and grid[0][0].y1 == 600


# scratch files ---------------------------------------------------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_sweep_removes_dead_runs_scratch_and_keeps_live_and_foreign_ones(tmp_path):
    dead = tmp_path / f".a.tif.{SCRATCH_HOST}-{_dead_pid()}-0123abcd.scratch.tif"
    live = tmp_path / f".b.tif.{SCRATCH_HOST}-{os.getpid()}-0123abcd.scratch.tif"
    older_format = tmp_path / ".c.tif.0123abcd.scratch.tif"  # no pid to judge by: kept
    user_file = tmp_path / ".hidden.tif"
    for p in (dead, live, older_format, user_file):
        p.write_bytes(b"x")
    assert sweep_stale_scratch(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, older_format.name, user_file.name])


def test_scratch_name_carries_host_and_pid(geotiff_factory, tmp_path):
    src, _ = geotiff_factory()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    writer = RasterWriter(inspect_raster(src), out_dir / "out.tif")
    try:
        (scratch,) = list(out_dir.glob(".out.tif.*.scratch.tif"))
        assert f".{SCRATCH_HOST}-{os.getpid()}-" in scratch.name
    finally:
        writer.abort()
    assert list(out_dir.iterdir()) == []


def test_scratch_of_a_scene_too_large_for_classic_tiff_is_bigtiff(tmp_path, geotiff_factory):
    src, _ = geotiff_factory()
    info = inspect_raster(src)
    # A 60000 x 60000 x 3 scene (10.8 GB uncompressed, compressed tiles): no pixel is written, so GDAL closes it
    # in milliseconds with one shared empty tile (about 11 MB of tile index).
    big = info.__class__(**{**info.__dict__, "height": 60000, "width": 60000,
                            "profile": {**info.profile, "height": 60000, "width": 60000, "tiled": True,
                                        "blockxsize": 512, "blockysize": 512, "compress": "deflate"}})
    assert scratch_profile(big, "GTiff")["BIGTIFF"] == "IF_SAFER"
    for scene, name, magic in ((big, "big.tif", b"II+\x00"), (info, "small.tif", b"II*\x00")):
        writer = RasterWriter(scene, tmp_path / name)
        try:
            writer._ds.close()  # the header is written on close
            (scratch,) = list(tmp_path.glob(f".{name}.*.scratch.tif"))
            # BigTIFF for the big scene; small scenes stay classic TIFF, which every reader opens
            with open(scratch, "rb") as f:
                assert f.read(4) == magic
        finally:
            writer.abort()


# Python API ------------------------------------------------------------------------------------------------------


def test_api_messages_do_not_point_at_command_line_flags_only(geotiff_factory, tmp_path):
    src, _ = geotiff_factory()
    existing = tmp_path / "exists.tif"
    existing.write_bytes(b"x")
    with pytest.raises(RasterError, match=r"set overwrite=True \(CLI: --overwrite\)"):
        rsrestore.restore(src, method="dcp", output=existing)
    with pytest.raises(RasterError, match="overwrite=True"):
        write_raster(existing, np.zeros((3, 4, 4), np.float32), overwrite=False)


@pytest.mark.parametrize("dtype,scale", [("uint8", 255), ("uint16", 10000)])
def test_api_scales_integer_arrays_and_returns_their_dtype(dtype, scale):
    rng = np.random.default_rng(0)
    raw = rng.integers(1, scale, (3, 40, 40)).astype(dtype)
    out = rsrestore.restore(raw, method="dcp")
    assert out.dtype == raw.dtype
    expected = from_unit(rsrestore.restore(raw.astype(np.float32) / scale, method="dcp"), dtype, scale)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


def test_api_returns_a_tensor_for_a_tensor():
    x = torch.rand(3, 32, 32)
    y = rsrestore.restore(x, method="dcp")
    assert isinstance(y, torch.Tensor) and y.shape == x.shape and y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), rsrestore.restore(x.numpy(), method="dcp"))
    x8 = (x * 255).to(torch.uint8)
    assert rsrestore.restore(x8, method="dcp").dtype == torch.uint8


def test_api_refuses_sar_for_an_optical_method_and_a_bad_scale():
    with pytest.raises(RasterError, match="takes no SAR"):
        rsrestore.restore(np.zeros((3, 32, 32), np.float32), method="dcp", sar=np.zeros((2, 32, 32), np.float32))
    with pytest.raises(RasterError, match="scale"):
        rsrestore.restore(np.zeros((3, 32, 32), np.uint8), method="dcp", scale=-1)


def test_restore_file_refuses_sar_for_a_model_without_sar(geotiff_factory, tmp_path):
    src, _ = geotiff_factory()
    with pytest.raises(RasterError, match="Identity takes no SAR"):
        restore_file(Identity(), src, tmp_path / "o.tif", sar=src, progress=False)
    assert list(tmp_path.glob(".o.tif*")) == [] and not Path(tmp_path / "o.tif").exists()


def test_late_output_is_refused_also_where_hard_links_are_not_supported(geotiff_factory, tmp_path, monkeypatch):
    src, _ = geotiff_factory()
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def no_hard_links(a, b):
        raise OSError(1, "Operation not permitted")  # e.g. FAT or some network shares

    monkeypatch.setattr(os, "link", no_hard_links)
    writer = RasterWriter(inspect_raster(src), out_dir / "o.tif")
    (out_dir / "o.tif").write_bytes(b"late")
    with pytest.raises(RasterError, match="appeared while restoring"):
        writer.commit()
    assert sorted(p.name for p in out_dir.iterdir()) == ["o.tif"] and (out_dir / "o.tif").read_bytes() == b"late"
    (out_dir / "o.tif").unlink()
    assert RasterWriter(inspect_raster(src), out_dir / "o.tif").commit().exists()
    assert sorted(p.name for p in out_dir.iterdir()) == ["o.tif"]


def test_png_cannot_hold_a_mask_band(geotiff_factory, tmp_path):
    src, _ = geotiff_factory()
    with rasterio.open(src, "r+") as ds:
        ds.write_mask(np.full((ds.height, ds.width), 255, np.uint8))
    info = inspect_raster(src)
    assert info.has_internal_mask
    with pytest.raises(RasterError, match="PNG cannot hold the scene's mask"):
        check_output_format(info, tmp_path / "o.png")
    assert check_output_format(info, tmp_path / "o.jpg") == "JPEG"  # JPEG keeps a mask inside the file


def test_a_geotiff_missing_blocks_is_not_committed(geotiff_factory, tmp_path, monkeypatch):
    src, _ = geotiff_factory(height=200, width=200, tiled=True, blockxsize=64, blockysize=64)
    check_complete(src, src)  # a whole file passes
    cut = tmp_path / "cut.tif"
    cut.write_bytes(src.read_bytes()[:-5000])  # what a full disk leaves: the last blocks' bytes are missing
    with pytest.raises(RasterError, match="was not written completely"):
        check_complete(cut, tmp_path / "out.tif")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(OSError) as e:
        check_complete(cut, tmp_path / "out.tif")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "out.tif")
