"""SyntheticDataset options for training that transfers: realistic presets, clean-to-clean items, sensor effects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsrestore.data import build_dataset
from rsrestore.data.synthetic import SyntheticDataset
from rsrestore.physics.haze import REALISTIC_HAZE
from rsrestore.physics.sanddust import restore_from_phi

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 52), (36, 36)]):
        # smooth pictures with some texture, so JPEG and blur behave as on imagery
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([120 + 60 * np.sin(xx / (5 + c) + i) * np.cos(yy / 7) for c in range(3)], -1)
        img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / f"img{i}.png")
    return tmp_path


def test_realistic_group_and_lists_choose_presets(folder: Path):
    ds = SyntheticDataset(folder, kind="haze", preset="realistic", size=32, length=24, seed=0)
    seen = {ds[i]["meta"]["preset"] for i in range(24)}
    assert seen <= set(REALISTIC_HAZE) and len(seen) >= 3
    ds = SyntheticDataset(folder, kind="haze", preset=["dense", "thin"], size=32, length=12, seed=0)
    assert {ds[i]["meta"]["preset"] for i in range(12)} == {"dense", "thin"}
    with pytest.raises(ValueError, match="realistic"):
        SyntheticDataset(folder, kind="haze", preset="smog")


@pytest.mark.parametrize("kind", ["haze", "dust", "cloud"])
def test_clean_fraction_items_are_exactly_the_clean_crop(folder: Path, kind: str):
    ds = SyntheticDataset(folder, kind=kind, size=32, length=40, seed=1, clean_fraction=0.3)
    items = [ds[i] for i in range(40)]
    clean = [it for it in items if it["meta"]["preset"] == "clean"]
    assert 4 <= len(clean) <= 22  # about 30 % of 40
    for it in clean:
        assert torch.equal(it["input"], it["target"]) and it["meta"]["params"] == {}
        if kind == "dust":
            assert (restore_from_phi(it["input"], it["phi"]) - it["target"]).abs().max() < 1e-5
        if kind == "cloud":
            assert not it["mask"].any()
    assert all(not torch.equal(it["input"], it["target"]) for it in items if it["meta"]["preset"] != "clean")
    everything = SyntheticDataset(folder, kind=kind, size=32, length=5, seed=1, clean_fraction=1)
    assert all(torch.equal(everything[i]["input"], everything[i]["target"]) for i in range(5))


def test_sensor_changes_only_the_input(folder: Path):
    plain = SyntheticDataset(folder, kind="dust", size=32, length=12, seed=2)
    noisy = SyntheticDataset(folder, kind="dust", size=32, length=12, seed=2, sensor=True)
    changed = 0
    for i in range(12):
        a, b = plain[i], noisy[i]
        assert torch.equal(a["target"], b["target"]) and a["meta"]["params"] == b["meta"]["params"]
        assert b["input"].shape == a["input"].shape and 0 <= b["input"].min() and b["input"].max() <= 1
        effects = b["meta"]["sensor"]
        applied = effects["blur_sigma"] or effects["read_noise"] or effects["jpeg_quality"] or effects["band_shifts"]
        assert torch.equal(a["input"], b["input"]) == (not applied)
        changed += bool(applied)
        # phi follows the input the model sees, so Eq. 5 stays exact
        assert (restore_from_phi(b["input"], b["phi"]) - b["target"]).abs().max() < 1e-5
    assert changed >= 6
    off = SyntheticDataset(folder, kind="haze", size=32, length=4, seed=2, sensor=0)
    assert "sensor" not in off[0]["meta"]
    with pytest.raises(ValueError, match="sensor"):
        SyntheticDataset(folder, sensor=1.5)
    with pytest.raises(ValueError, match="clean_fraction"):
        SyntheticDataset(folder, clean_fraction=-0.1)


def test_options_come_from_a_training_config(folder: Path):
    ds = build_dataset("synthetic", str(folder), kind="haze", preset="realistic", size=32, length=8,
                       clean_fraction=0.25, sensor=0.5, seed=3)
    again = build_dataset("synthetic", str(folder), kind="haze", preset="realistic", size=32, length=8,
                          clean_fraction=0.25, sensor=0.5, seed=3)
    for i in range(8):
        assert torch.equal(ds[i]["input"], again[i]["input"]) and ds[i]["meta"] == again[i]["meta"]


def test_sensor_mapping_sets_the_effects(folder: Path):
    ds = SyntheticDataset(folder, kind="haze", size=32, length=6, seed=4,
                          sensor={"probability": 1, "jpeg_probability": 1, "noise_probability": 0,
                                  "blur_probability": 0, "misregistration_probability": 0,
                                  "jpeg_quality_range": [61, 62]})
    for i in range(6):
        effects = ds[i]["meta"]["sensor"]
        assert effects["jpeg_quality"] in (61, 62) and effects["read_noise"] == 0 and effects["blur_sigma"] == 0
    with pytest.raises(ValueError, match="accepted"):
        SyntheticDataset(folder, sensor={"probability": 0.5, "gamma": 2})
