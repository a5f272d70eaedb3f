"""Nothing corrupted, nothing lost: `rsrestore restore` on the inputs that used to corrupt data or lose files.

Each test runs the command (typer's CliRunner, or a real process where signals or printed warnings matter) and checks
the exit status, the one-line message and the files left behind.
"""

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning
from typer.testing import CliRunner

from conftest import make_geotiff
from test_cli import _ok, _user_error
from rsrestore import tiling
from rsrestore.cli import app
from rsrestore.raster import SCRATCH_HOST, inspect_raster

runner = CliRunner()
LANDSAT = Path(__file__).resolve().parents[1] / "src" / "rsrestore" / "sample_data" / "landsat7_rgb.tif"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _restore(*args):
    return runner.invoke(app, ["restore", *map(str, args), "-q"])


def _valid_to_nodata(src: Path, out: Path) -> int:
    """Band values at the input's valid pixels that the output holds as the nodata value (holes in every GIS)."""
    with rasterio.open(src) as a, rasterio.open(out) as b:
        valid = a.dataset_mask() > 0
        return int(((b.read() == b.nodata) & valid[None]).sum())


# 0. valid pixels never become nodata -----------------------------------------------------------------------------


def test_dcp_on_landsat_sample_turns_no_valid_pixel_into_nodata(tmp_path):
    out = tmp_path / "l7.tif"
    _ok(_restore(LANDSAT, "-o", out, "--method", "dcp"))
    assert _valid_to_nodata(LANDSAT, out) == 0
    with rasterio.open(LANDSAT) as a, rasterio.open(out) as b:
        nodata = a.dataset_mask() == 0
        assert np.array_equal(b.dataset_mask() == 0, nodata)  # the border stays nodata, nothing more
        assert (b.read()[:, nodata] == 0).all()
        # dcp darkens the darkest valid pixels to the floor: they are written as 1, the value nearest nodata 0
        assert ((b.read() == 1) & ~nodata[None]).sum() > 1000


def test_dcp_on_a_real_13_band_sentinel2_scene_with_nodata_zero_keeps_every_valid_pixel(shared_data, tmp_path):
    src = tmp_path / "s2.tif"
    shutil.copy(shared_data / "sen12mscr" / "ROIs1970_fall_s2" / "s2_139" / "ROIs1970_fall_s2_139_p839.tif", src)
    with rasterio.open(src, "r+") as ds:
        ds.nodata = 0
    out = tmp_path / "out.tif"
    _ok(_restore(src, "-o", out, "--method", "dcp"))
    assert _valid_to_nodata(src, out) == 0
    with rasterio.open(out) as b:
        assert (b.read() == 1).sum() > 1000  # restored to the floor in the SWIR bands: kept one above nodata


@pytest.mark.parametrize("bands,dtype", [(4, "uint8"), (13, "uint16")])
def test_dark_scene_with_nodata_zero_keeps_every_valid_pixel(tmp_path, bands, dtype):
    rng = np.random.default_rng(0)
    top = 60 if dtype == "uint8" else 2500
    data = rng.integers(1, top, (bands, 64, 80)).astype(dtype)
    data[:, :, :8] = 0  # a nodata border
    src = make_geotiff(tmp_path / "dark.tif", data, nodata=0, photometric="MINISBLACK")
    out = tmp_path / "out.tif"
    _ok(_restore(src, "-o", out, "--method", "dcp"))
    assert _valid_to_nodata(src, out) == 0
    with rasterio.open(out) as b:
        res = b.read()
    assert (res[:, :, :8] == 0).all() and (res[:, :, 8:] >= 1).all()
    # the restore does push valid pixels to the bottom of the range: without the nudge they would be holes
    assert (res[:, :, 8:] == 1).sum() > 50


# 1. non-finite values ---------------------------------------------------------------------------------------------


def test_nan_and_inf_pixels_stay_as_they_were_and_are_counted_in_one_warning(tmp_path):
    rng = np.random.default_rng(1)
    data = (0.3 + 0.5 * rng.random((3, 96, 96))).astype(np.float32)
    data[0, 10, 10] = np.nan
    data[2, 50, 70] = np.inf
    src = make_geotiff(tmp_path / "float.tif", data)
    out = tmp_path / "out.tif"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _ok(_restore(src, "-o", out, "--method", "dcp"))
    res = rasterio.open(out).read()
    assert np.array_equal(~np.isfinite(res), ~np.isfinite(data))  # only those two values are not finite
    np.testing.assert_array_equal(res[:, 10, 10], data[:, 10, 10])  # the whole pixel is left as it was
    np.testing.assert_array_equal(res[:, 50, 70], data[:, 50, 70])
    assert not np.allclose(res[:, 40:60, 40:60], data[:, 40:60, 40:60])  # the rest was restored
    messages = [str(w.message) for w in caught if "NaN or infinity" in str(w.message)]
    assert len(messages) == 1 and "2 pixel(s)" in messages[0] and str(src) in messages[0]
    assert "\n" not in messages[0]


# 2. internal mask -------------------------------------------------------------------------------------------------


def test_internal_mask_band_is_written_back(geotiff_factory, tmp_path):
    src, _ = geotiff_factory(height=64, width=80)
    mask = np.full((64, 80), 255, np.uint8)
    mask[:20, :30] = 0
    with rasterio.open(src, "r+") as ds:
        ds.write_mask(mask)
    out = tmp_path / "out.tif"
    _ok(_restore(src, "-o", out, "--method", "dcp"))
    with rasterio.open(out) as ds:
        assert ds.mask_flag_enums[0] == [MaskFlags.per_dataset]
        assert np.array_equal(ds.dataset_mask(), mask)


# 3. --overwrite checked at the end too ----------------------------------------------------------------------------


def test_file_appearing_at_the_output_during_the_run_is_not_replaced(geotiff_factory, tmp_path, monkeypatch):
    src, _ = geotiff_factory(height=40, width=40)
    out = tmp_path / "out.tif"
    run_tiles = tiling.iter_tiles

    def another_process_writes_the_output(*args, **kwargs):
        run_tiles(*args, **kwargs)
        out.write_bytes(b"someone else's result")

    monkeypatch.setattr(tiling, "iter_tiles", another_process_writes_the_output)
    _user_error(_restore(src, "-o", out, "--method", "dcp"), str(out), "appeared while restoring", "--overwrite")
    assert out.read_bytes() == b"someone else's result"
    assert _leftovers(tmp_path) == []
    # with --overwrite the late file is replaced
    _ok(_restore(src, "-o", out, "--method", "dcp", "--overwrite"))
    assert rasterio.open(out).shape == (40, 40)


# 4. --scale -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["-1", "0", "nan"])
def test_non_positive_or_nan_scale_is_refused(geotiff_factory, tmp_path, scale):
    src, _ = geotiff_factory(height=40, width=40)
    _user_error(_restore(src, "-o", tmp_path / "o.tif", "--method", "dcp", "--scale", scale), "--scale", scale)
    assert not (tmp_path / "o.tif").exists() and _leftovers(tmp_path) == []


# 5. temporary files -----------------------------------------------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_next_run_sweeps_scratch_files_of_dead_runs_only(geotiff_factory, tmp_path):
    src, _ = geotiff_factory(height=40, width=40)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dead = [out_dir / f".old.tif.{SCRATCH_HOST}-{_dead_pid()}-0123abcd.scratch.tif",
            out_dir / f".old.png.{SCRATCH_HOST}-{_dead_pid()}-89abcdef.partial.png",
            out_dir / f".old.png.{SCRATCH_HOST}-{_dead_pid()}-89abcdef.partial.png.aux.xml"]
    live = out_dir / f".busy.tif.{SCRATCH_HOST}-{os.getpid()}-0123abcd.scratch.tif"  # this process: alive
    other_host = out_dir / f".o.tif.{SCRATCH_HOST}x-{_dead_pid()}-0123abcd.scratch.tif"  # never judged from here
    for p in (*dead, live, other_host):
        p.write_bytes(b"partial")
    _ok(_restore(src, "-o", out_dir / "new.tif", "--method", "dcp"))
    assert _leftovers(out_dir) == sorted([live.name, other_host.name])
    assert (out_dir / "new.tif").exists()


# 6. 1-bit rasters -------------------------------------------------------------------------------------------------


def test_one_bit_raster_keeps_nbits(tmp_path):
    data = (np.random.default_rng(0).random((3, 48, 64)) > 0.3).astype(np.uint8)
    src = make_geotiff(tmp_path / "bits.tif", data, nbits=1)
    out = tmp_path / "out.tif"
    _ok(_restore(src, "-o", out, "--method", "dcp"))
    with rasterio.open(out) as ds:
        assert ds.tags(1, ns="IMAGE_STRUCTURE").get("NBITS") == "1"
        res = ds.read()
    assert set(np.unique(res)) == {0, 1}
    assert inspect_raster(src).scale == 1  # 1-bit values 0 and 1 map to [0, 1], not to [0, 1/255]


# 9. the output format must hold the data, checked before any tile ------------------------------------------------


@pytest.mark.parametrize(
    "bands,dtype,ext,phrase",
    [(13, "uint16", ".png", "at most 4 bands"), (3, "float32", ".png", "8- or 16-bit"),
     (3, "float32", ".jpg", "8-bit"), (3, "uint16", ".jpg", "12-bit"), (4, "uint8", ".png", "alpha"),
     (4, "uint8", ".jpg", "1 or 3 bands")],
)
def test_output_format_that_cannot_hold_the_data_is_refused_up_front(
    geotiff_factory, tmp_path, monkeypatch, bands, dtype, ext, phrase
):
    # NIR as a plain 4th band, as in NAIP (GDAL would otherwise call a 4th uint8 band alpha)
    src, _ = geotiff_factory(bands=bands, dtype=dtype, height=40, width=40, photometric="MINISBLACK")

    def must_not_run(*args, **kwargs):
        raise AssertionError("the scene was processed before the output format was checked")

    monkeypatch.setattr(tiling, "iter_tiles", must_not_run)
    out = tmp_path / f"out{ext}"
    _user_error(_restore(src, "-o", out, "--method", "dcp"), str(out), phrase, ".tif")
    assert not out.exists() and _leftovers(tmp_path) == []


def test_truncated_cog_input_is_one_line_naming_the_file(geotiff_factory, tmp_path):
    src, _ = geotiff_factory(height=512, width=512)
    cog = tmp_path / "cog.tif"
    rasterio.shutil.copy(src, cog, driver="COG", BLOCKSIZE=128, COMPRESS="NONE", OVERVIEWS="NONE")
    size = cog.stat().st_size
    with open(cog, "r+b") as f:
        f.truncate(size // 2)  # the header and tile index survive, the second half of the tiles does not
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    _user_error(_restore(cog, "-o", out_dir / "o.tif", "--method", "dcp", "--tile", "128"), str(cog),
                "damaged or truncated")
    assert list(out_dir.iterdir()) == []


# 11. messages -----------------------------------------------------------------------------------------------------


def _s2_and_sar(tmp_path, sar_bands=2, shift=0.0):
    rng = np.random.default_rng(0)
    optical = make_geotiff(tmp_path / "s2.tif", rng.integers(1, 5000, (13, 32, 32)).astype(np.uint16))
    from rasterio.transform import from_origin

    sar = make_geotiff(tmp_path / f"s1_{sar_bands}.tif", rng.uniform(-25, 0, (sar_bands, 32, 32)).astype(np.float32),
                       transform=from_origin(500000.0 + shift, 4600000.0, 10.0, 10.0))
    return optical, sar


@pytest.mark.parametrize("sar_bands", [1, 3])
def test_sar_with_wrong_band_count_names_file_and_count(tmp_path, sar_bands):
    optical, sar = _s2_and_sar(tmp_path, sar_bands)
    _user_error(_restore(optical, "-o", tmp_path / "o.tif", "--method", "dsen2cr", "--sar", sar),
                str(sar), f"has {sar_bands} band(s)", "takes 2")


def test_sar_grid_error_says_what_differs(tmp_path):
    optical, sar = _s2_and_sar(tmp_path, shift=30.0)
    result = _restore(optical, "-o", tmp_path / "o.tif", "--method", "dsen2cr", "--sar", sar)
    _user_error(result, str(sar), "transform", "500030.0", "500000.0", "--align")
    assert "CRS" not in result.output and "size" not in result.output  # only what differs


def test_sar_given_to_an_optical_method_is_an_error(geotiff_factory, tmp_path):
    src, _ = geotiff_factory(height=40, width=40)
    _, sar = _s2_and_sar(tmp_path)
    _user_error(_restore(src, "-o", tmp_path / "o.tif", "--method", "dcp", "--sar", sar), "takes no SAR", "--sar")
    assert not (tmp_path / "o.tif").exists()


def test_scene_without_valid_pixel_names_the_file(tmp_path):
    src = make_geotiff(tmp_path / "empty.tif", np.zeros((3, 32, 32), np.uint8), nodata=0)
    _user_error(_restore(src, "-o", tmp_path / "o.tif", "--method", "dcp"), str(src), "no valid pixel")
    assert _leftovers(tmp_path) == []


# 12. COG creation settings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", ["ZSTD", "DEFLATE", "LZW"])
def test_cog_output_keeps_compression_predictor_blocks_and_overviews(geotiff_factory, tmp_path, compress):
    plain, _ = geotiff_factory(height=300, width=300)
    with rasterio.open(plain, "r+") as ds:
        ds.build_overviews([2, 4])  # the COG driver alone would make [2, 4, 8] with 64-pixel blocks
    cog = tmp_path / "cog.tif"
    rasterio.shutil.copy(plain, cog, driver="COG", COMPRESS=compress, PREDICTOR=2, BLOCKSIZE=64)
    out = tmp_path / "out.tif"
    _ok(_restore(cog, "-o", out, "--method", "dcp"))
    with rasterio.open(cog) as a, rasterio.open(out) as b:
        sa, sb = a.tags(ns="IMAGE_STRUCTURE"), b.tags(ns="IMAGE_STRUCTURE")
        assert sb["LAYOUT"] == "COG" and sb["COMPRESSION"] == sa["COMPRESSION"] == compress
        assert sb.get("PREDICTOR") == sa.get("PREDICTOR") == "2"
        assert b.block_shapes == a.block_shapes == [(64, 64)] * 3
        assert b.overviews(1) == a.overviews(1) == [2, 4]


# 13. tiling options -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option,value,phrase", [("--tile", "0", "--tile"), ("--tile", "8", "at least 16"),
                                                  ("--overlap", "-1", "--overlap"), ("--overlap", "-10", "--overlap"),
                                                  ("--batch-size", "0", "--batch-size"),
                                                  ("--overlap", "64", "smaller than the tile size")])
def test_bad_tiling_options_are_one_line(geotiff_factory, tmp_path, option, value, phrase):
    src, _ = geotiff_factory(height=40, width=40)
    args = ["--tile", "64"] if option == "--overlap" and value == "64" else []
    _user_error(_restore(src, "-o", tmp_path / "o.tif", "--method", "dcp", *args, option, value), phrase)
    assert not (tmp_path / "o.tif").exists()


def test_very_small_tile_warns(geotiff_factory, tmp_path):
    src, _ = geotiff_factory(height=40, width=40)
    with pytest.warns(UserWarning, match="tile size 16 is very small"):
        _ok(_restore(src, "-o", tmp_path / "o.tif", "--method", "dcp", "--tile", "16", "--overlap", "4"))


def test_scene_a_little_larger_than_a_tile_is_one_tile(geotiff_factory, tmp_path, monkeypatch):
    src, _ = geotiff_factory(height=600, width=600)
    grids = []
    make_grid = tiling.tile_grid
    monkeypatch.setattr(tiling, "tile_grid", lambda *a: grids.append(make_grid(*a)) or grids[-1])
    _ok(_restore(src, "-o", tmp_path / "o.tif", "--method", "dcp"))
    assert [len(row) for row in grids[0]] == [1]


# 14. tiny scenes --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("height,width", [(5, 7), (1, 1)])
def test_dcp_refuses_a_scene_smaller_than_its_patch(geotiff_factory, tmp_path, height, width):
    src, _ = geotiff_factory(height=height, width=width)
    _user_error(_restore(src, "-o", tmp_path / "o.tif", "--method", "dcp"), str(src), f"{width}x{height}",
                "at least 15x15")
    assert _leftovers(tmp_path) == [] and not (tmp_path / "o.tif").exists()


# 15. non-georeferenced PNG and JPEG -------------------------------------------------------------------------------


@pytest.mark.parametrize("ext,driver", [(".png", "PNG"), (".jpg", "JPEG")])
def test_plain_png_and_jpeg_get_no_side_car_and_no_georeferencing_warning(tmp_path, ext, driver):
    src = tmp_path / f"in{ext}"
    data = np.random.default_rng(0).integers(20, 230, (3, 40, 50), dtype=np.uint8)
    with rasterio.open(src, "w", driver=driver, dtype="uint8", count=3, height=40, width=50) as ds:
        ds.write(data)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _ok(_restore(src, "-o", out_dir / f"o{ext}", "--method", "dcp"))
    assert not [w for w in caught if issubclass(w.category, NotGeoreferencedWarning)]
    assert sorted(p.name for p in out_dir.iterdir()) == [f"o{ext}"]  # no .aux.xml, no scratch
