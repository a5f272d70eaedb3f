"""Generic paired folders (input/target matched by stem, optional split, phi and mask) and build_dataset."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning
from torch.utils.data import DataLoader

from rsrestore.data import DATASETS, PairedDataset, build_dataset, dataset_options
from rsrestore.data.paired import INPUT_DIR_NAMES

DRIVERS = {".png": "PNG", ".tif": "GTiff", ".jpg": "JPEG", ".bmp": "BMP"}
RNG = np.random.default_rng(1)


def write(path: Path, array: np.ndarray) -> Path:
    array = array if array.ndim == 3 else array[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            path, "w", driver=DRIVERS[path.suffix], height=array.shape[1], width=array.shape[2],
            count=array.shape[0], dtype=array.dtype,
        ) as dst:
            dst.write(array)
    return path


def make_tree(base: Path, stems=("a", "b", "c"), input_dir="input", target_dir="target", size=(9, 11), bands=3,
              phi=False, mask=False, suffix=".png") -> dict[str, dict[str, np.ndarray]]:
    """A small paired tree; returns the raw arrays written, per stem."""
    arrays = {}
    for stem in stems:
        x = RNG.integers(0, 256, size=(bands, *size), dtype=np.uint8)
        y = RNG.integers(0, 256, size=(bands, *size), dtype=np.uint8)
        write(base / input_dir / f"{stem}{suffix}", x)
        write(base / target_dir / f"{stem}{suffix}", y)
        arrays[stem] = {"input": x, "target": y}
        if phi:
            p = RNG.normal(size=(bands, *size)).astype(np.float32)
            if stem == stems[0]:  # phi may come as .npy or as a float GeoTIFF
                (base / "phi").mkdir(parents=True, exist_ok=True)
                np.save(base / "phi" / f"{stem}.npy", p)
            else:
                write(base / "phi" / f"{stem}.tif", p)
            arrays[stem]["phi"] = p
        if mask:
            m = (RNG.random(size) > 0.5).astype(np.uint8) * 255
            write(base / "mask" / f"{stem}.png", m)
            arrays[stem]["mask"] = m
    return arrays


def test_pairs_values_and_meta(tmp_path):
    arrays = make_tree(tmp_path, input_dir="hazy", target_dir="GT")
    ds = PairedDataset(tmp_path)
    assert len(ds) == 3
    for i, stem in enumerate(("a", "b", "c")):
        s = ds[i]
        assert s["meta"]["name"] == stem
        assert s["meta"]["path"] == str(tmp_path / "hazy" / f"{stem}.png")
        assert s["meta"]["target_path"] == str(tmp_path / "GT" / f"{stem}.png")
        assert s["input"].dtype == torch.float32 and s["input"].shape == (3, 9, 11)
        np.testing.assert_allclose(s["input"].numpy(), arrays[stem]["input"] / 255.0, rtol=1e-6)
        np.testing.assert_allclose(s["target"].numpy(), arrays[stem]["target"] / 255.0, rtol=1e-6)
        assert "phi" not in s and "mask" not in s


@pytest.mark.parametrize("input_dir", INPUT_DIR_NAMES)
def test_every_accepted_input_folder_name(tmp_path, input_dir):
    make_tree(tmp_path, stems=("x",), input_dir=input_dir, target_dir="clear")
    assert len(PairedDataset(tmp_path)) == 1


def test_split_subfolder_phi_mask_and_bands(tmp_path):
    # four bands go in GeoTIFFs: a 4-band PNG is RGBA and its alpha is dropped on reading
    arrays = make_tree(tmp_path / "train", bands=4, phi=True, mask=True, suffix=".tif")
    make_tree(tmp_path / "test", stems=("z",))
    ds = PairedDataset(tmp_path, split="train", bands=[3, 1])  # 1-based, as restore --bands
    assert len(ds) == 3 and len(PairedDataset(tmp_path, "test")) == 1
    for i, stem in enumerate(("a", "b", "c")):
        s = ds[i]
        np.testing.assert_allclose(s["input"].numpy(), arrays[stem]["input"][[2, 0]] / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(s["phi"].numpy(), arrays[stem]["phi"][[2, 0]])
        np.testing.assert_array_equal(s["mask"].numpy(), arrays[stem]["mask"][None] / 255.0)
    no_extras = PairedDataset(tmp_path, "train", load_phi=False, load_mask=False)[0]
    assert "phi" not in no_extras and "mask" not in no_extras


def test_crop_flip_applies_to_all_tensors_and_collates(tmp_path):
    make_tree(tmp_path, stems=("a", "b", "c", "d"), size=(12, 12), phi=True, mask=True)
    ds = build_dataset("paired", tmp_path, crop=8, flip=True, seed=5)
    full = PairedDataset(tmp_path)
    for i in range(len(ds)):
        s, f = ds[i], full[i]
        top, left, h, w = s["meta"]["window"]
        for key in ("input", "target", "phi", "mask"):
            ref = f[key][:, top : top + h, left : left + w]
            if s["meta"]["hflip"]:
                ref = torch.flip(ref, dims=(-1,))
            ref = torch.rot90(ref, s["meta"]["rot90"], dims=(-2, -1))
            torch.testing.assert_close(s[key], ref)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["input"].shape == (4, 3, 8, 8) and batch["mask"].shape == (4, 1, 8, 8)
    assert batch["meta"]["name"] == ["a", "b", "c", "d"]


def test_partial_match_warns_with_counts(tmp_path):
    make_tree(tmp_path, stems=("a", "b"))
    write(tmp_path / "input" / "only_in.png", np.zeros((3, 9, 11), np.uint8))
    write(tmp_path / "target" / "only_gt1.png", np.zeros((3, 9, 11), np.uint8))
    write(tmp_path / "target" / "only_gt2.png", np.zeros((3, 9, 11), np.uint8))
    with pytest.warns(UserWarning, match=r"2 pairs matched; skipped 1 input .* and 2 target"):
        ds = PairedDataset(tmp_path)
    assert [ds[i]["meta"]["name"] for i in range(len(ds))] == ["a", "b"]


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PairedDataset(tmp_path / "nope")
    (tmp_path / "images").mkdir()
    (tmp_path / "target").mkdir()
    with pytest.raises(FileNotFoundError, match=r"input\|hazy\|cloudy\|dusty\|cloud.*found folders: images, target"):
        PairedDataset(tmp_path)

    other = tmp_path / "nomatch"
    write(other / "input" / "a.png", np.zeros((3, 4, 4), np.uint8))
    write(other / "input" / "b.png", np.zeros((3, 4, 4), np.uint8))
    write(other / "gt" / "x.png", np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(FileNotFoundError, match=r"no input/target pairs matched.*2 input and 1 target"):
        PairedDataset(other)

    both = tmp_path / "ambiguous"
    make_tree(both, stems=("a",))
    (both / "hazy").mkdir()
    with pytest.raises(ValueError, match="ambiguous input folder"):
        PairedDataset(both)

    split_root = tmp_path / "splits"
    make_tree(split_root / "train", stems=("a",))
    with pytest.raises(FileNotFoundError, match="pass split= one of them"):
        PairedDataset(split_root)
    with pytest.raises(FileNotFoundError, match="splits found under .*: train"):
        PairedDataset(split_root, split="val")

    incomplete = tmp_path / "incomplete"
    make_tree(incomplete, stems=("a", "b"), mask=True)
    (incomplete / "mask" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks a mask file for 1 of 2"):
        PairedDataset(incomplete)


def test_build_dataset_errors_and_table(tmp_path):
    make_tree(tmp_path, stems=("a",))
    assert set(DATASETS) >= {"paired", "satehaze1k", "rice", "rsid", "sen12mscr"}
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'crop_size' for dataset 'paired'; accepted: crop"):
        build_dataset("paired", tmp_path, crop_size=8)
    with pytest.raises(ValueError, match="unknown dataset kind 'nope'; known kinds: paired"):
        build_dataset("nope", tmp_path)
    assert isinstance(build_dataset("PAIRED", tmp_path), PairedDataset)
    assert "missing_target" in dataset_options("sen12mscr")
