"""Synthetic cloud triplets in the SEN12MS-CR layout keep their known cloud/shadow masks, and the loader reads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rsrestore.data.sen12mscr import SEN12MSCRDataset
from rsrestore.train.cloud_scenes import (
    BLOCK_FACTORS,
    ROI,
    _clouds,
    as_sen12mscr_blocks,
    block_phase,
    pair_in_blocks,
    write_triplet,
)


def clear_scene(seed: int = 0, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.05 + 0.25 * rng.random((13, size, size))).astype(np.float32)


def test_the_mask_covers_every_pixel_the_clouds_changed():
    clear = clear_scene()
    for kind, seed in (("thin", 3), ("thick", 4)):
        cloudy, mask, info = _clouds(clear, kind, seed)
        assert mask.shape == (1, 64, 64) and set(np.unique(mask)) <= {0.0, 1.0}
        changed = np.abs(cloudy - clear).max(0) > 0
        assert changed.any() and (mask[0][changed] == 1).all()  # nothing changed outside the mask
        assert 0 < mask.mean() < 1, kind
        assert info["kind"] == kind and info["cloud_fraction"] <= mask.mean() + 1e-9


def in_blocks(band: np.ndarray, factor: int, phase: tuple[int, int]) -> bool:
    """Whether ``band`` is constant over every ``factor``-pixel block with edges at ``phase + k * factor``."""
    rows = np.arange(band.shape[0]) - phase[0]
    cols = np.arange(band.shape[1]) - phase[1]
    labels = (rows // factor)[:, None] * 10_000 + (cols // factor)[None]
    return all(np.ptp(band[labels == v]) == 0 for v in np.unique(labels))


def test_coarse_bands_are_held_in_blocks_of_their_native_pixels_as_sen12mscr_holds_them():
    assert BLOCK_FACTORS == {0: 6, 4: 2, 5: 2, 6: 2, 8: 2, 9: 6, 10: 6, 11: 2, 12: 2}  # B1, B9, B10 at 60 m; 20 m
    image = clear_scene(5, 40)
    phase = (4, 1)
    out = as_sen12mscr_blocks(image, phase)
    for i in range(13):
        if i in BLOCK_FACTORS:
            f = BLOCK_FACTORS[i]
            assert in_blocks(out[i], f, phase) and not in_blocks(image[i], f, phase)
            assert not in_blocks(out[i], f, (phase[0] + 1, phase[1]))  # the grid is where it was asked
            # a whole block keeps its mean
            block = (slice(4 + f, 4 + 2 * f), slice(7, 7 + f))
            assert np.isclose(out[i][block].mean(), image[i][block].mean())
        else:
            assert np.array_equal(out[i], image[i])  # the 10 m bands as they are
    assert np.array_equal(as_sen12mscr_blocks(out, phase), out)  # what is in blocks stays as it is
    assert block_phase(out[0]) == phase and block_phase(out[9]) == phase


def test_a_pair_in_blocks_keeps_clear_pixels_equal_and_masks_every_change():
    clear = clear_scene(6, 48)
    cloudy, mask, _ = _clouds(clear, "thick", 9)
    phase = (2, 5)
    c, k, m = pair_in_blocks(cloudy, clear, mask, phase)
    assert np.array_equal(k, as_sen12mscr_blocks(clear, phase))
    changed = (c != k).any(0)
    assert changed.any() and (m[0][changed] == 1).all() and (m >= mask).all()
    assert np.array_equal(c[:, m[0] == 0], k[:, m[0] == 0])
    assert in_blocks(c[0] - k[0], 6, phase) and in_blocks(c[4] - k[4], 2, phase)
    assert np.array_equal(c[[1, 2, 3, 7]], cloudy[[1, 2, 3, 7]])  # the 10 m bands' clouds as drawn
    # A clear image already in blocks (a SEN12MS-CR patch) is kept bit for bit.
    blocky = as_sen12mscr_blocks(clear, phase)
    c2, k2, _ = pair_in_blocks(cloudy - clear + blocky, blocky, mask, phase, clear_in_blocks=True)
    assert k2 is blocky and in_blocks(c2[9], 6, phase)


def test_loader_returns_the_mask_cropped_and_flipped_with_the_images(tmp_path):
    clear = clear_scene(1)
    cloudy, mask, _ = _clouds(clear, "thick", 7)
    sar = np.full((2, 64, 64), -12.0, dtype=np.float32)
    write_triplet(tmp_path, 1, 0, cloudy, clear, sar, mask)
    write_triplet(tmp_path, 1, 1, cloudy, clear, sar)  # no mask file: no "mask" in the item
    assert (tmp_path / f"{ROI}_mask" / "mask_1" / f"{ROI}_mask_1_p0.tif").is_file()

    plain = SEN12MSCRDataset(tmp_path)
    with_mask, without = plain[0], plain[1]
    assert "mask" not in without and "mask_path" not in without["meta"]
    torch.testing.assert_close(with_mask["mask"], torch.from_numpy(mask))
    assert with_mask["meta"]["mask_path"].endswith(f"{ROI}_mask_1_p0.tif")

    cropped = SEN12MSCRDataset(tmp_path, crop=32, flip=True, seed=5)
    for i in range(4):
        item = cropped[0]
        assert item["mask"].shape == (1, 32, 32)
        # The same window and flip as the images: where the mask is 0 the cloudy input is the clear target.
        changed = (item["input"] - item["target"]).abs().amax(0) > 1e-4  # beyond the uint16 rounding
        assert changed.any() and (item["mask"][0][changed] == 1).all()


def test_known_mask_reaches_a_sar_model_in_training(tmp_path):
    """With the mask, the SAR-guided model keeps the clear pixels of its input bit for bit."""
    from rsrestore.models.registry import load_model
    from rsrestore.train.objectives import ObjectiveContext, call_model

    clear = clear_scene(2, 32)
    cloudy, mask, _ = _clouds(clear, "thick", 11)
    write_triplet(tmp_path, 1, 0, cloudy, clear, np.full((2, 32, 32), -12.0, np.float32), mask)
    item = SEN12MSCRDataset(tmp_path)[0]
    batch = {k: v[None] for k, v in item.items() if k != "meta"}
    torch.manual_seed(0)
    model = load_model("sarcr", weights=None, config={"width": 8, "heads": 2, "embed_dim": 16, "base_blocks": 1})
    out = call_model(model, batch["input"], batch, ObjectiveContext(loss=None, model_kwargs={}, needs_sar=True))
    clear_px = batch["mask"][0, 0] == 0
    assert clear_px.any() and (~clear_px).any()
    assert torch.equal(out[0][:, clear_px], batch["input"][0][:, clear_px])
    assert not torch.equal(out[0][:, ~clear_px], batch["input"][0][:, ~clear_px])


def test_real_sar_set_puts_synthetic_clouds_over_the_real_triplets_with_their_own_sentinel1(tmp_path):
    """The cross-source cloud set: each window of each cloud-free SEN12MS-CR patch (here a made-up one in the
    official layout) under thin and thick clouds, with the patch's own Sentinel-1 window, its clean window as the
    target and the known mask; the loader reads it as SEN12MS-CR."""
    import rasterio

    from rsrestore.train.cloud_scenes import REAL_SAR_DRAWS, REAL_SAR_ROI, build_real_sar_set, real_sar_record

    root = tmp_path / "sen12mscr"
    phase = (3, 1)  # the patch's 60 m grid
    clean = np.rint(as_sen12mscr_blocks(clear_scene(2, 256), phase) * 10000).astype(np.uint16)
    sar = np.stack([np.linspace(-20, -5, 256 * 256), np.linspace(-28, -12, 256 * 256)]).reshape(2, 256, 256)
    for folder, name, data in (("ROIs1970_fall_s2/s2_7", "ROIs1970_fall_s2_7_p3.tif", clean),
                               ("ROIs1970_fall_s1/s1_7", "ROIs1970_fall_s1_7_p3.tif", sar.astype(np.float32))):
        (root / folder).mkdir(parents=True)
        with rasterio.open(root / folder / name, "w", driver="GTiff", count=data.shape[0], height=256, width=256,
                           dtype=str(data.dtype)) as ds:
            ds.write(data)
    (root / "ROIs1970_fall_s2/s2_8").mkdir(parents=True)  # a patch without its Sentinel-1 is left out
    out = tmp_path / "test_real_sar"
    manifest = build_real_sar_set(root, out, seed=0)
    assert manifest["record"] == real_sar_record(root, 0)
    assert manifest["record"]["patches"] == ["ROIs1970_fall_s2_7_p3.tif"]
    assert manifest["patches"][0]["block_phase"] == list(phase)
    assert len(manifest["test"]) == 4 * 2 * REAL_SAR_DRAWS  # four 128-px windows, thin and thick draws
    ds = SEN12MSCRDataset(out, split="all")
    assert len(ds) == len(manifest["test"])
    by_patch = {int(Path(ds[i]["meta"]["path"]).stem.rsplit("_p", 1)[1]): ds[i] for i in range(len(ds))}
    for entry in manifest["test"]:
        item, y, x = by_patch[entry["patch"]], entry["row"], entry["col"]
        np.testing.assert_allclose(item["target"].numpy(), clean[:, y:y + 128, x:x + 128] / 10000.0, atol=1e-6)
        expected_sar = (np.clip(sar[:, y:y + 128, x:x + 128], [[[-25.0]], [[-32.5]]], 0) - [[[-25.0]], [[-32.5]]]) \
            / [[[25.0]], [[32.5]]]
        np.testing.assert_allclose(item["sar"].numpy(), expected_sar, atol=1e-5)
        changed = (item["input"] - item["target"]).abs().amax(0) > 1e-4
        assert changed.any() and (item["mask"][0][changed] == 1).all()
        # the clouds in the 60 m bands follow the patch's own block grid
        window_phase = ((phase[0] - y) % 6, (phase[1] - x) % 6)
        assert in_blocks(np.rint(item["input"][0].numpy() * 10000), 6, window_phase)
    assert (out / f"{REAL_SAR_ROI}_mask").is_dir()
