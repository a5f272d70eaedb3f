"""SyntheticDataset: on-the-fly degraded/clean pairs, reproducible per (seed, epoch, index)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from torch.utils.data import DataLoader

from rsrestore.data.synthetic import SyntheticDataset
from rsrestore.physics.sanddust import restore_from_phi
from rsrestore.raster import RasterError
from rsrestore.synthesize import PRESETS, read_crop

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def write_png(path: Path, h: int, w: int, seed: int) -> Path:
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def write_tif(path: Path, c: int, h: int, w: int, seed: int) -> Path:
    data = np.random.default_rng(seed).integers(0, 256, (c, h, w)).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c, dtype="uint8") as dst:
        dst.write(data)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for i, (h, w) in enumerate([(40, 52), (36, 36), (64, 48)]):
        write_png(tmp_path / "clean" / f"img{i}.png", h, w, i)
    return tmp_path / "clean"


@pytest.mark.parametrize("kind", ["haze", "dust", "cloud"])
def test_items_have_the_right_keys_and_shapes(folder: Path, kind: str):
    ds = SyntheticDataset(folder, kind=kind, size=32, seed=1)
    assert len(ds) == 3
    for i in range(len(ds)):
        item = ds[i]
        assert item["input"].shape == (3, 32, 32) and item["input"].dtype == torch.float32
        assert item["target"].shape == (3, 32, 32)
        assert 0 <= item["input"].min() and item["input"].max() <= 1
        assert ("phi" in item) == (kind == "dust")
        assert ("mask" in item) == (kind == "cloud")
        meta = item["meta"]
        assert meta["kind"] == kind and meta["preset"] in PRESETS[kind] and meta["index"] == i
        if kind == "dust":
            assert (restore_from_phi(item["input"], item["phi"]) - item["target"]).abs().max() < 1e-5
        if kind == "cloud":
            assert item["mask"].shape == (1, 32, 32)
            changed = (item["input"] != item["target"]).any(0, keepdim=True)
            if not meta["params"]["shadow"]:  # without a cast shadow only the cloud changes the image
                assert not (changed & ~item["mask"].bool()).any()


def test_epoch_is_reproducible_and_epochs_differ(folder: Path):
    ds = SyntheticDataset(folder, kind="mixed", size=24, length=6, seed=3)
    first = [ds[i] for i in range(6)]
    again = [ds[i] for i in reversed(range(6))][::-1]  # order of visits does not matter
    for a, b in zip(first, again):
        assert torch.equal(a["input"], b["input"]) and torch.equal(a["target"], b["target"])
        assert a["meta"] == b["meta"]
    ds.set_epoch(1)
    second = [ds[i] for i in range(6)]
    assert any(not torch.equal(a["input"], b["input"]) for a, b in zip(first, second))
    other = SyntheticDataset(folder, kind="mixed", size=24, length=6, seed=4)
    assert any(not torch.equal(a["input"], other[i]["input"]) for i, a in enumerate(first))
    assert len({m["meta"]["kind"] for m in [ds[i] for i in range(6)] + first}) >= 2


def test_target_is_the_crop_without_flips(folder: Path):
    ds = SyntheticDataset(folder, kind="haze", size=32, flip=False, seed=0)
    for i in range(3):
        item = ds[i]
        meta = item["meta"]
        assert meta["rot90"] == 0 and meta["hflip"] is False
        crop, pad = read_crop(meta["path"], meta["window"], 32)
        assert pad == meta["pad"]
        assert torch.equal(item["target"], torch.from_numpy(crop))


def test_flips_are_dihedral_moves_of_the_crop(folder: Path):
    ds = SyntheticDataset(folder, kind="cloud", preset="thin", size=32, length=12, flip=True, seed=2)
    moves = set()
    for i in range(12):
        item = ds[i]
        meta = item["meta"]
        crop = torch.from_numpy(read_crop(meta["path"], meta["window"], 32)[0])
        if meta["hflip"]:
            crop = crop.flip(-1)
        crop = torch.rot90(crop, meta["rot90"], dims=(-2, -1))
        assert torch.equal(item["target"], crop)
        moves.add((meta["rot90"], meta["hflip"]))
    assert len(moves) > 2


def test_small_images_are_padded(tmp_path: Path):
    src = write_png(tmp_path / "tiny.png", 12, 20, 0)
    item = SyntheticDataset(src, kind="dust", size=32, flip=False)[0]
    assert item["input"].shape == (3, 32, 32)
    assert item["meta"]["window"] == (0, 0, 12, 20) and item["meta"]["pad"] == [[10, 10], [6, 6]]


def test_band_counts_and_selection(tmp_path: Path):
    write_tif(tmp_path / "ms" / "a.tif", 13, 40, 40, 0)
    ds = SyntheticDataset(tmp_path / "ms", kind="haze", size=24)
    assert ds[0]["input"].shape == (13, 24, 24)
    write_tif(tmp_path / "rgbn" / "a.tif", 4, 40, 40, 1)
    ds = SyntheticDataset(tmp_path / "rgbn", kind="cloud", size=24, bands=[3, 2, 1], flip=False)
    item = ds[0]
    assert item["input"].shape == (3, 24, 24) and item["mask"].shape == (1, 24, 24)
    # bands are 1-based, as restore --bands and the other datasets count them
    row, col, h, w = item["meta"]["window"]
    with rasterio.open(tmp_path / "rgbn" / "a.tif") as src:
        raw = src.read([3, 2, 1], window=rasterio.windows.Window(col, row, w, h))
    np.testing.assert_array_equal(item["target"].numpy(), raw / np.float32(255))
    with pytest.raises(RasterError, match="start at 1"):
        SyntheticDataset(tmp_path / "rgbn", kind="cloud", size=24, bands=[0, 1, 2])
    write_tif(tmp_path / "five" / "a.tif", 5, 30, 30, 2)
    with pytest.raises(ValueError, match="wavelengths_nm"):
        SyntheticDataset(tmp_path / "five", kind="haze", size=16)[0]
    item = SyntheticDataset(tmp_path / "five", kind="haze", size=16, wavelengths_nm=[490, 560, 665, 705, 842])[0]
    assert item["input"].shape == (5, 16, 16)


def test_dataloader_batches(folder: Path):
    ds = SyntheticDataset(folder, kind="cloud", size=32, length=8, seed=0)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["input"].shape == (4, 3, 32, 32) and batch["mask"].shape == (4, 1, 32, 32)
    mixed = SyntheticDataset(folder, kind="mixed", size=32, length=8, seed=0)
    batch = next(iter(DataLoader(mixed, batch_size=8, collate_fn=SyntheticDataset.collate)))
    assert batch["input"].shape == (8, 3, 32, 32) and len(batch["meta"]) == 8
    kinds = [m["kind"] for m in batch["meta"]]
    assert ("mask" in batch) == all(k == "cloud" for k in kinds)


def test_bad_options(folder: Path):
    with pytest.raises(ValueError, match="kind"):
        SyntheticDataset(folder, kind="snow")
    with pytest.raises(ValueError, match="mixed"):
        SyntheticDataset(folder, kind="mixed", preset="thin")
    with pytest.raises(ValueError, match="preset"):
        SyntheticDataset(folder, kind="dust", preset="thin")
    with pytest.raises(ValueError, match="size"):
        SyntheticDataset(folder, size=4)
    assert SyntheticDataset(folder, crop=16)[0]["input"].shape == (3, 16, 16)
    with pytest.raises(FileNotFoundError):
        SyntheticDataset(folder / "missing")
    ds = SyntheticDataset(folder)
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(ValueError, match="epoch"):
        ds.set_epoch(-1)


def test_real_eurosat_tiles():
    folder = SHARED_DATA / "eurosat_rgb" / "River"
    if not folder.is_dir():
        pytest.skip(f"real data folder {folder} is absent")
    ds = SyntheticDataset(folder, kind="mixed", size=64, length=6, seed=0)
    assert len(ds.files) == 1000
    for i in range(6):
        item = ds[i]
        assert item["input"].shape == (3, 64, 64)
        assert item["meta"]["pad"] == [[0, 0], [0, 0]]
        assert (item["input"] - item["target"]).abs().mean() > 0.005
