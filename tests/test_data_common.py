"""Shared data helpers: raster reading and scaling, stem matching, seeded crop/flip, the dataset base class."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from rsrestore.data.common import (
    CropFlip,
    RestorationDataset,
    apply_crop_flip,
    draw_crop_flip,
    list_images,
    match_by_stem,
    natural_key,
    read_image,
    read_mask,
    read_phi,
    sample_seed,
    shift_transform,
)
from rsrestore.raster import RasterError

DRIVERS = {".png": "PNG", ".tif": "GTiff", ".jpg": "JPEG", ".bmp": "BMP"}


def write(path: Path, array: np.ndarray, **profile) -> Path:
    array = array if array.ndim == 3 else array[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            path, "w", driver=DRIVERS[path.suffix], height=array.shape[1], width=array.shape[2],
            count=array.shape[0], dtype=array.dtype, **profile,
        ) as dst:
            dst.write(array)
    return path


RNG = np.random.default_rng(0)


# The scales of rsrestore.raster (restore's): uint16 means reflectance x 10000 in a GeoTIFF, full range in a PNG.
@pytest.mark.parametrize(
    ("suffix", "dtype", "divisor"),
    [(".png", np.uint8, 255.0), (".png", np.uint16, 65535.0), (".tif", np.uint16, 10000.0), (".bmp", np.uint8, 255.0),
     (".tif", np.int16, 10000.0)],
)
def test_read_image_scales_by_dtype_and_format(tmp_path, suffix, dtype, divisor):
    bands = 1 if suffix == ".bmp" else 3
    raw = RNG.integers(0, np.iinfo(dtype).max, size=(bands, 5, 7), endpoint=True).astype(dtype)
    out, valid, info = read_image(write(tmp_path / f"a{suffix}", raw))
    assert out.dtype == np.float32 and out.shape == (bands, 5, 7) and info.scale == divisor
    assert valid.shape == (5, 7) and valid.all()
    np.testing.assert_allclose(out, raw.astype(np.float64) / divisor, rtol=1e-6)


def test_read_image_float_passes_through_and_explicit_scale_does_not_clip(tmp_path):
    raw = RNG.normal(size=(13, 4, 6)).astype(np.float32) * 3
    path = write(tmp_path / "f.tif", raw)
    np.testing.assert_array_equal(read_image(path)[0], raw)
    dn = np.array([[[0, 5000, 10000, 20000]]], dtype=np.uint16)
    out = read_image(write(tmp_path / "s2.tif", dn), scale=5000)[0]
    np.testing.assert_allclose(out, [[[0.0, 1.0, 2.0, 4.0]]])


def test_read_image_band_selection_is_1_based_and_errors_name_the_file(tmp_path):
    raw = np.stack([np.full((3, 4), 10 * (i + 1), np.uint8) for i in range(4)])
    path = write(tmp_path / "four.tif", raw)
    out = read_image(path, bands=[4, 3, 2])[0]
    np.testing.assert_allclose(out[:, 0, 0], np.array([40, 30, 20]) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(read_image(path, bands="4,3,2")[0], out)
    with pytest.raises(RasterError, match=r"four.tif has 4 band\(s\); cannot select band 5"):
        read_image(path, bands=[5])
    with pytest.raises(RasterError, match="start at 1"):
        read_image(path, bands=[0, 1])
    with pytest.raises(RasterError, match=r"not found: .*missing.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(RasterError, match=r"broken.png") as err:
        read_image(tmp_path / "broken.png")
    assert "\n" not in str(err.value)


def test_png_alpha_dropped_but_geotiff_fourth_band_kept(tmp_path):
    rgba = RNG.integers(0, 256, size=(4, 5, 6), dtype=np.uint8)
    png = write(tmp_path / "rgba.png", rgba)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(png) as src:
            assert src.colorinterp[-1] == rasterio.enums.ColorInterp.alpha
    out, valid, _ = read_image(png)
    np.testing.assert_allclose(out, rgba[:3] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(valid, rgba[3] > 0)  # transparency is the valid mask, as in restore
    tif = write(tmp_path / "rgbn.tif", rgba)
    assert read_image(tif)[0].shape[0] == 4


def test_palette_png_expands_to_rgb_and_band_1_and_mask_keep_indices(tmp_path):
    index = np.array([[0, 1, 1], [2, 0, 1]], dtype=np.uint8)
    path = tmp_path / "pal.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", height=2, width=3, count=1, dtype="uint8") as dst:
            dst.write(index, 1)
            dst.write_colormap(1, {0: (0, 0, 0, 255), 1: (255, 128, 0, 255), 2: (10, 20, 30, 255)})
    rgb = read_image(path)[0]
    assert rgb.shape == (3, 2, 3)
    np.testing.assert_allclose(rgb[:, 0, 1] * 255, [255, 128, 0], atol=1e-4)
    np.testing.assert_allclose(rgb[:, 1, 0] * 255, [10, 20, 30], atol=1e-4)
    # an explicit band selection counts the file's bands, as GDAL does: band 1 holds the indices
    np.testing.assert_allclose(read_image(path, bands=[1])[0][0] * 255, index, atol=1e-4)
    np.testing.assert_allclose(read_mask(path)[0] * 255, index, atol=1e-4)


def test_read_mask_binary_and_255(tmp_path):
    m = (RNG.random((6, 5)) > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(read_mask(write(tmp_path / "m01.png", m)), m[None].astype(np.float32))
    np.testing.assert_array_equal(read_mask(write(tmp_path / "m255.png", m * 255)), m[None].astype(np.float32))
    rgb = np.stack([m * 255, m * 0, m * 0])  # a red-on-black mask saved as RGB
    np.testing.assert_array_equal(read_mask(write(tmp_path / "mrgb.png", rgb)), m[None].astype(np.float32))
    np.save(tmp_path / "m.npy", m.astype(np.float32) * 0.5)
    np.testing.assert_allclose(read_mask(tmp_path / "m.npy"), m[None] * 0.5)


def test_read_phi_tif_and_npy_unscaled(tmp_path):
    phi = RNG.normal(size=(3, 4, 5)).astype(np.float32) * 4
    np.testing.assert_array_equal(read_phi(write(tmp_path / "p.tif", phi)), phi)
    np.save(tmp_path / "p.npy", phi[0])
    np.testing.assert_array_equal(read_phi(tmp_path / "p.npy"), phi[:1])


def test_natural_sort_and_listing(tmp_path):
    names = ["10.png", "2.png", "1.png", "b.jpg", "A.tif", ".hidden.png", "notes.txt"]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    listed = [p.name for p in list_images(tmp_path)]
    assert listed == ["1.png", "2.png", "10.png", "A.tif", "b.jpg"]
    assert sorted(["p10", "p9", "p100"], key=natural_key) == ["p9", "p10", "p100"]


def test_match_by_stem_reports_unmatched():
    inputs = [Path("in/a.png"), Path("in/b.png"), Path("in/c.png")]
    targets = [Path("gt/b.jpg"), Path("gt/a.png"), Path("gt/z.png")]
    m = match_by_stem(inputs, targets)
    assert [(i.stem, t.name) for i, t in m.pairs] == [("a", "a.png"), ("b", "b.jpg")]
    assert [p.name for p in m.unmatched_inputs] == ["c.png"]
    assert [p.name for p in m.unmatched_targets] == ["z.png"]
    with pytest.raises(ValueError, match="share the key"):
        match_by_stem([Path("a.png"), Path("a.jpg")], targets)


def _dihedral_reference(x: np.ndarray, k: int, mirror: bool) -> np.ndarray:
    if mirror:
        x = x[..., ::-1]
    return np.rot90(x, k, axes=(-2, -1))


def test_crop_flip_matches_numpy_reference_for_all_moves():
    x = torch.arange(2 * 6 * 6, dtype=torch.float32).reshape(2, 6, 6)
    for k in range(4):
        for mirror in (False, True):
            move = CropFlip(1, 2, 4, 4, k, mirror)
            ref = _dihedral_reference(x.numpy()[:, 1:5, 2:6], k, mirror)
            np.testing.assert_array_equal(apply_crop_flip(x, move).numpy(), ref)


def test_draw_crop_flip_covers_all_eight_moves_and_keeps_non_square_shapes():
    g = torch.Generator().manual_seed(0)
    seen = {(m.rot90, m.hflip) for m in (draw_crop_flip(8, 8, 4, True, g) for _ in range(400))}
    assert len(seen) == 8
    rects = [draw_crop_flip(5, 9, None, True, g) for _ in range(200)]
    assert {m.rot90 for m in rects} == {0, 2}
    with pytest.raises(ValueError, match="does not fit"):
        draw_crop_flip(5, 9, 6, False, g)


@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
def test_shift_transform_matches_rasterio_window_transform():
    t = from_origin(700000.0, 3710000.0, 10.0, 10.0)
    ours = shift_transform(t[:6], top=24, left=11)
    ref = rasterio.windows.transform(rasterio.windows.Window(11, 24, 64, 64), t)
    np.testing.assert_allclose(ours, ref[:6])


class _Toy(RestorationDataset):
    """Input is a ramp, target = 2 * input + 1, sar and mask derived, so any mismatch between tensors shows."""

    def __init__(self, n=5, h=16, w=16, **kw):
        super().__init__(**kw)
        self.samples = list(range(n))
        self.h, self.w = h, w

    def load(self, index):
        base = torch.arange(self.h * self.w, dtype=torch.float32).reshape(1, self.h, self.w) + 1000 * index
        x = torch.cat([base, base + 0.5, base + 0.25])
        return {
            "input": x,
            "target": 2 * x + 1,
            "sar": torch.cat([base, -base]),
            "mask": (base % 3 == 0).float(),
            "meta": {"name": str(index), "path": f"{index}.png", "transform": (10.0, 0.0, 0.0, 0.0, -10.0, 0.0)},
        }


def test_dataset_applies_one_move_to_every_tensor():
    ds = _Toy(crop=8, flip=True, seed=3)
    for i in range(len(ds)):
        s = ds[i]
        assert s["input"].shape == (3, 8, 8) and s["sar"].shape == (2, 8, 8) and s["mask"].shape == (1, 8, 8)
        torch.testing.assert_close(s["target"], 2 * s["input"] + 1)
        torch.testing.assert_close(s["sar"][0], s["input"][0])
        torch.testing.assert_close(s["sar"][1], -s["input"][0])
        torch.testing.assert_close(s["mask"][0], (s["input"][0] % 3 == 0).float())
        top, left, h, w = s["meta"]["window"]
        full = ds.load(i)["input"]
        window = full.numpy()[:, top : top + h, left : left + w]
        ref = _dihedral_reference(window, s["meta"]["rot90"], s["meta"]["hflip"])
        np.testing.assert_array_equal(s["input"].numpy(), ref)
        assert s["meta"]["transform"] == pytest.approx((10.0, 0.0, 10.0 * left, 0.0, -10.0, -10.0 * top))


def test_dataset_seeding_is_reproducible_per_epoch():
    a, b = _Toy(crop=5, flip=True, seed=7), _Toy(crop=5, flip=True, seed=7)
    first = [a[i]["meta"]["window"] + (a[i]["meta"]["rot90"], a[i]["meta"]["hflip"]) for i in range(5)]
    # visiting in another order (as a shuffling sampler or several workers would) gives the same items
    again = {i: b[i]["meta"]["window"] + (b[i]["meta"]["rot90"], b[i]["meta"]["hflip"]) for i in reversed(range(5))}
    assert first == [again[i] for i in range(5)]
    a.set_epoch(1)
    second = [a[i]["meta"]["window"] + (a[i]["meta"]["rot90"], a[i]["meta"]["hflip"]) for i in range(5)]
    assert second != first
    a.set_epoch(0)
    assert [a[i]["meta"]["window"] + (a[i]["meta"]["rot90"], a[i]["meta"]["hflip"]) for i in range(5)] == first
    c = _Toy(crop=5, flip=True, seed=8)
    assert [c[i]["meta"]["window"] + (c[i]["meta"]["rot90"], c[i]["meta"]["hflip"]) for i in range(5)] != first
    assert sample_seed(7, 1, 2, 5) == 7 * 1_000_003 + 5 + 2


def test_dataset_without_crop_or_flip_returns_whole_images_and_checks_options():
    ds = _Toy(h=7, w=9)
    s = ds[-1]
    torch.testing.assert_close(s["input"], ds.load(4)["input"])
    assert s["meta"]["window"] == (0, 0, 7, 9)
    with pytest.raises(IndexError):
        ds[5]
    for bad in ({"crop": 0}, {"crop": 2.5}, {"flip": "yes"}, {"seed": 1.0}):
        with pytest.raises(ValueError):
            _Toy(**bad)
    for bad in ("rgb", [-1], [0, 1, 2], [1, 1], [], 3, [1.5]):
        with pytest.raises(RasterError):
            _Toy(bands=bad)
    assert _Toy(bands="4,3,2").bands == _Toy(bands=(4, 3, 2)).bands == [4, 3, 2]
    with pytest.raises(ValueError, match="epoch"):
        ds.set_epoch(-1)


def test_dataset_rejects_tensors_of_different_sizes():
    class Bad(_Toy):
        def load(self, index):
            s = super().load(index)
            s["target"] = s["target"][..., :-1]
            return s

    with pytest.raises(ValueError, match="differ in size"):
        Bad()[0]
