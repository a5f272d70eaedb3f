"""A PNG or JPEG cut short is refused, never read as zeros (GDAL's drivers fill the missing rows silently)."""

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from _one_line_errors import user_error
from rsrestore.cli import app
from rsrestore.data.paired import PairedDataset
from rsrestore.raster import RasterError, read_raster


def _write(path, driver, seed=0):
    img = (np.random.default_rng(seed).random((3, 96, 120)) * 255).astype("uint8")
    with rasterio.open(path, "w", driver=driver, height=96, width=120, count=3, dtype="uint8") as ds:
        ds.write(img)
    return path


def _cut(path, fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


@pytest.mark.parametrize("suffix, driver", [(".png", "PNG"), (".jpg", "JPEG")])
def test_truncated_file_is_refused_and_the_whole_file_reads(tmp_path, suffix, driver):
    whole = _write(tmp_path / f"whole{suffix}", driver)
    assert read_raster(whole)[0].shape == (3, 96, 120)
    cut = _cut(_write(tmp_path / f"cut{suffix}", driver))
    with pytest.raises(RasterError, match="truncated"):
        read_raster(cut)


def test_restore_of_a_truncated_png_is_one_line_and_writes_nothing(tmp_path):
    cut = _cut(_write(tmp_path / "scene.png", "PNG"))
    res = CliRunner().invoke(app, ["restore", str(cut), "-o", str(tmp_path / "out.png"), "--method", "dcp", "-q"])
    user_error(res, "scene.png", "truncated")
    assert not (tmp_path / "out.png").exists()


def test_dataset_refuses_a_truncated_image(tmp_path):
    for folder in ("input", "target"):
        (tmp_path / folder).mkdir()
        _write(tmp_path / folder / "a.png", "PNG", seed=1)
    _cut(tmp_path / "input" / "a.png")
    with pytest.raises(RasterError, match="a.png"):
        PairedDataset(tmp_path)[0]
