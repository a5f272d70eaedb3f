"""The synthetic dataset writer: layout, formats, manifest, and bit-for-bit regeneration."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

from rsrestore.physics.sanddust import restore_from_phi
from rsrestore.synthesize import (
    PRESET_GROUPS,
    find_images,
    load_manifest,
    read_crop,
    read_sample,
    regenerate_sample,
    sample_seed,
    synthesize_dataset,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# The generated GeoTIFFs carry no georeferencing on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def write_png(path: Path, h: int, w: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 3 + yy) % 256, (yy * 5) % 256, (xx * 7 + 40) % 256], -1)
    img = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def write_tif(path: Path, c: int, h: int, w: int, seed: int, dtype=np.uint16) -> Path:
    rng = np.random.default_rng(seed)
    data = rng.integers(200, 4000, (c, h, w)).astype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c, dtype=data.dtype.name) as dst:
        dst.write(data)
    return path


@pytest.fixture
def rgb_folder(tmp_path: Path) -> Path:
    root = tmp_path / "clean"
    write_png(root / "a.png", 50, 60, 0)
    write_png(root / "sub" / "b.png", 40, 36, 1)  # smaller than the crop along one side: reflect-padded
    write_png(root / "c.png", 64, 64, 2)
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.mark.parametrize("kind", ["haze", "dust", "cloud"])
def test_writes_paired_layout_and_regenerates_bit_for_bit(rgb_folder: Path, tmp_path: Path, kind: str):
    out = synthesize_dataset(rgb_folder, tmp_path / f"out_{kind}", kind, n=5, size=48, seed=7, progress=False)
    extra = {"dust": "phi", "cloud": "mask"}.get(kind)
    expect_dirs = {"input", "target"} | ({extra} if extra else set())
    assert {p.name for p in out.iterdir() if p.is_dir()} == expect_dirs
    m = load_manifest(out)
    assert m["kind"] == kind and m["n"] == 5 and m["size"] == 48 and m["seed"] == 7 and m["num_sources"] == 3
    assert len(m["samples"]) == 5
    for rec in m["samples"]:
        i = rec["index"]
        assert (out / rec["files"]["input"]).suffix == ".png"
        assert rec["seed"] == sample_seed(7, i)
        assert rec["params"]["kind"] == kind and rec["preset"] == rec["params"]["preset"]
        stored = read_sample(out, i)
        assert stored["input"].shape == (3, 48, 48) and stored["input"].dtype == np.uint8
        again = regenerate_sample(out, i)
        assert again.keys() == stored.keys()
        for key in stored:
            assert again[key].dtype == stored[key].dtype
            assert np.array_equal(again[key], stored[key]), (i, key)
        # The target is the stored crop of the named source file.
        src = rgb_folder / rec["source"]
        crop, pad = read_crop(src, tuple(rec["window"]), 48)
        assert pad == rec["pad"]
        assert np.array_equal(stored["target"], np.rint(crop * 255).astype(np.uint8))
        if kind == "dust":
            assert stored["phi"].dtype == np.float32 and stored["phi"].shape == (3, 48, 48)
            i_u = torch.from_numpy(stored["input"].astype(np.float32) / 255)
            j_u = torch.from_numpy(stored["target"].astype(np.float32) / 255)
            assert (restore_from_phi(i_u, torch.from_numpy(stored["phi"])) - j_u).abs().max() < 1e-6
        if kind == "cloud":
            assert stored["mask"].shape == (1, 48, 48) and set(np.unique(stored["mask"])) <= {0, 255}
            assert stored["mask"].mean() / 255 == pytest.approx(rec["params"]["cloud_fraction"], abs=1e-6)


def test_small_image_is_reflect_padded(tmp_path: Path):
    src = write_png(tmp_path / "clean" / "tiny.png", 20, 30, 3)
    out = synthesize_dataset(src, tmp_path / "out", "haze", n=1, size=48, seed=0, progress=False)
    rec = load_manifest(out)["samples"][0]
    assert rec["window"] == [0, 0, 20, 30]
    assert rec["pad"] == [[14, 14], [9, 9]]
    tgt = read_sample(out, 0)["target"]
    raw = np.asarray(Image.open(src)).transpose(2, 0, 1)
    assert np.array_equal(tgt[:, 14:34, 9:39], raw)
    # Mirrored about the edge pixels, which are not repeated.
    assert np.array_equal(tgt[:, 13], tgt[:, 15]) and np.array_equal(tgt[:, :, 8], tgt[:, :, 10])
    assert np.array_equal(tgt[:, 0, 9:39], raw[:, 14])


def test_multiband_sources_write_float_geotiffs(tmp_path: Path):
    clean = tmp_path / "ms"
    write_tif(clean / "s2_a.tif", 13, 40, 44, 0)
    write_tif(clean / "s2_b.tif", 13, 52, 40, 1)
    out = synthesize_dataset(clean, tmp_path / "out", "cloud", preset="thick", n=3, size=32, seed=1, progress=False)
    m = load_manifest(out)
    for rec in m["samples"]:
        assert rec["preset"] == "thick"
        assert rec["files"]["input"].endswith(".tif") and rec["files"]["mask"].endswith(".png")
        stored = read_sample(out, rec["index"])
        assert stored["input"].dtype == np.float32 and stored["input"].shape == (13, 32, 32)
        # uint16 GeoTIFF reflectance is divided by 10000.
        crop, _ = read_crop(clean / rec["source"], tuple(rec["window"]), 32)
        assert np.array_equal(stored["target"], crop)
        assert stored["target"].max() < 0.5
        again = regenerate_sample(out, rec["index"])
        assert all(np.array_equal(again[k], stored[k]) for k in stored)


def test_band_selection_and_mixed_band_counts(tmp_path: Path):
    clean = tmp_path / "mixed"
    write_tif(clean / "four.tif", 4, 40, 40, 0, dtype=np.uint8)
    write_png(clean / "three.png", 40, 40, 1)
    with pytest.raises(ValueError, match="band counts"):
        synthesize_dataset(clean, tmp_path / "o1", "haze", n=4, size=32, progress=False)
    out = synthesize_dataset(clean, tmp_path / "o2", "haze", n=4, size=32, bands=[0, 1, 2], progress=False)
    assert all(read_sample(out, i)["input"].shape == (3, 32, 32) for i in range(4))
    assert load_manifest(out)["bands"] == [0, 1, 2]


def test_regenerate_after_moving_clean_images(rgb_folder: Path, tmp_path: Path):
    out = synthesize_dataset(rgb_folder, tmp_path / "out", "dust", n=2, size=32, seed=3, progress=False)
    moved = tmp_path / "moved"
    shutil.move(str(rgb_folder), moved)
    with pytest.raises(FileNotFoundError, match="clean_root"):
        regenerate_sample(out, 1)
    again = regenerate_sample(out, 1, clean_root=moved)
    stored = read_sample(out, 1)
    assert all(np.array_equal(again[k], stored[k]) for k in stored)


def test_same_seed_same_dataset_different_seed_differs(rgb_folder: Path, tmp_path: Path):
    a = synthesize_dataset(rgb_folder, tmp_path / "a", "haze", n=3, size=32, seed=5, progress=False)
    b = synthesize_dataset(rgb_folder, tmp_path / "b", "haze", n=3, size=32, seed=5, progress=False)
    c = synthesize_dataset(rgb_folder, tmp_path / "c", "haze", n=3, size=32, seed=6, progress=False)
    for i in range(3):
        assert np.array_equal(read_sample(a, i)["input"], read_sample(b, i)["input"])
    assert any(not np.array_equal(read_sample(a, i)["input"], read_sample(c, i)["input"]) for i in range(3))
    ma, mb = json.loads((a / "manifest.json").read_text()), json.loads((b / "manifest.json").read_text())
    assert ma["samples"] == mb["samples"]


def test_writer_errors(rgb_folder: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="kind"):
        synthesize_dataset(rgb_folder, tmp_path / "x", "snow", n=1, progress=False)
    with pytest.raises(ValueError, match="preset"):
        synthesize_dataset(rgb_folder, tmp_path / "x", "haze", preset="heavy", n=1, progress=False)
    with pytest.raises(FileNotFoundError):
        synthesize_dataset(tmp_path / "nowhere", tmp_path / "x", "haze", n=1, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        find_images(empty)
    out = synthesize_dataset(rgb_folder, tmp_path / "y", "haze", n=1, size=32, progress=False)
    with pytest.raises(FileExistsError):
        synthesize_dataset(rgb_folder, out, "haze", n=1, size=32, progress=False)
    synthesize_dataset(rgb_folder, out, "cloud", n=2, size=32, progress=False, overwrite=True)
    assert not (out / "phi").exists() and len(list((out / "input").iterdir())) == 2
    with pytest.raises(ValueError, match="not a synthetic dataset"):
        load_manifest({"format": "other"})


def test_written_dataset_loads_with_paired_loader(rgb_folder: Path, tmp_path: Path):
    paired = pytest.importorskip("rsrestore.data.paired")
    out = synthesize_dataset(rgb_folder, tmp_path / "out", "dust", n=3, size=32, seed=2, progress=False)
    ds = paired.PairedDataset(out)
    assert len(ds) == 3
    item = ds[0]
    stored = read_sample(out, 0)
    assert torch.allclose(item["input"], torch.from_numpy(stored["input"].astype(np.float32) / 255))
    assert torch.allclose(item["phi"], torch.from_numpy(stored["phi"]))
    restored = restore_from_phi(item["input"], item["phi"])
    assert (restored - item["target"]).abs().max() < 1e-6


def test_real_scenes(tmp_path: Path):
    if not SHARED_DATA.exists():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    sources = [SHARED_DATA / "neon" / "HARV" / "HARV_001.png", SHARED_DATA / "naip" / "m_4709963_se_14_1_20090818.tif"]
    if not all(p.is_file() for p in sources):
        pytest.skip("NEON/NAIP sample files are absent")
    out = synthesize_dataset(sources[0], tmp_path / "neon", "cloud", n=2, size=128, seed=0, progress=False)
    assert read_sample(out, 1)["mask"].shape == (1, 128, 128)
    out = synthesize_dataset(sources[1], tmp_path / "naip", "haze", n=2, size=128, seed=0, progress=False)
    s = read_sample(out, 0)
    assert s["input"].shape == (4, 128, 128) and s["input"].dtype == np.float32
    # NIR (842 nm) sees through haze better than blue (490 nm).
    change = np.abs(s["input"] - s["target"]).mean(axis=(1, 2))
    assert change[2] > change[3]
    again = regenerate_sample(out, 0)
    assert all(np.array_equal(again[k], s[k]) for k in s)


@pytest.mark.parametrize("kind", ["haze", "dust"])
def test_realistic_group_writes_and_regenerates(rgb_folder: Path, tmp_path: Path, kind: str):
    out = synthesize_dataset(rgb_folder, tmp_path / kind, kind, preset="realistic", n=6, size=32, seed=1,
                             progress=False)
    m = load_manifest(out)
    assert m["preset"] == "realistic"
    assert {rec["preset"] for rec in m["samples"]} <= set(PRESET_GROUPS[kind]["realistic"])
    for rec in m["samples"][:2]:
        stored = read_sample(out, rec["index"])
        again = regenerate_sample(out, rec["index"])
        assert all(np.array_equal(again[k], stored[k]) for k in stored)
    with pytest.raises(ValueError, match="realistic"):
        synthesize_dataset(rgb_folder, tmp_path / "bad", "cloud", preset="realistic", n=1, progress=False)


def test_sensor_effects_in_written_datasets(rgb_folder: Path, tmp_path: Path):
    setting = {"probability": 1.0, "jpeg_probability": 1.0, "jpeg_quality_range": [70, 80]}
    out = synthesize_dataset(rgb_folder, tmp_path / "s", "dust", n=3, size=32, seed=2, progress=False, sensor=setting)
    plain = synthesize_dataset(rgb_folder, tmp_path / "p", "dust", n=3, size=32, seed=2, progress=False)
    m = load_manifest(out)
    assert m["sensor"] == setting and "sensor" not in load_manifest(plain)["samples"][0]
    for rec in m["samples"]:
        assert 70 <= rec["sensor"]["jpeg_quality"] <= 80
        stored, before = read_sample(out, rec["index"]), read_sample(plain, rec["index"])
        assert np.array_equal(stored["target"], before["target"])
        assert not np.array_equal(stored["input"], before["input"])
        again = regenerate_sample(out, rec["index"])
        assert all(np.array_equal(again[k], stored[k]) for k in stored)
        i_u = torch.from_numpy(stored["input"].astype(np.float32) / 255)  # Eq. 5 holds for the input as stored
        j_u = torch.from_numpy(stored["target"].astype(np.float32) / 255)
        assert (restore_from_phi(i_u, torch.from_numpy(stored["phi"])) - j_u).abs().max() < 1e-6
    with pytest.raises(ValueError, match="jpeg_strength"):
        synthesize_dataset(rgb_folder, tmp_path / "bad", "haze", n=1, progress=False, sensor={"jpeg_strength": 1})


def test_dark_object_references_keep_the_inputs_and_regenerate(tmp_path: Path):
    for seed in range(2):  # scenes under a veil: nothing darker than 50 / 255 in any band
        path = write_png(tmp_path / "veiled" / f"{seed}.png", 48, 48, seed)
        Image.fromarray((50 + np.asarray(Image.open(path)) * 0.7).astype(np.uint8)).save(path)
    src = tmp_path / "veiled"
    plain = synthesize_dataset(src, tmp_path / "p", "haze", n=4, size=32, seed=5, progress=False)
    dark = synthesize_dataset(src, tmp_path / "d", "haze", n=4, size=32, seed=5, progress=False, dark_object=True)
    m = load_manifest(dark)
    assert m["dark_object"] is True and load_manifest(plain)["dark_object"] is False
    for rec in m["samples"]:
        stored, before = read_sample(dark, rec["index"]), read_sample(plain, rec["index"])
        assert np.array_equal(stored["input"], before["input"])
        veil = rec["dark_object"]
        assert 49 / 255 <= veil < 60 / 255
        want = np.clip((before["target"].astype(np.float64) / 255 - veil) / (1 - veil), 0, 1)
        assert np.abs(stored["target"].astype(np.float64) / 255 - want).max() <= 0.5 / 255 + 1e-9
        again = regenerate_sample(dark, rec["index"])
        assert all(np.array_equal(again[k], stored[k]) for k in stored)


def test_cli_dark_object_flag(rgb_folder: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from rsrestore.cli import app

    r = CliRunner().invoke(app, ["synthesize", str(rgb_folder), "-o", str(tmp_path / "d"), "--kind", "haze", "--n",
                                 "2", "--size", "32", "-q", "--dark-object"])
    assert r.exit_code == 0, r.output
    m = load_manifest(tmp_path / "d")
    assert m["dark_object"] is True and all(0 <= s["dark_object"] < 1 for s in m["samples"])
