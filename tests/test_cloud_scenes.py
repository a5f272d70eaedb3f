"""Synthetic cloud triplets in the SEN12MS-CR layout keep their known cloud/shadow masks, and the loader reads them."""

from __future__ import annotations

import numpy as np
import torch

from rsrestore.data.sen12mscr import SEN12MSCRDataset
from rsrestore.train.cloud_scenes import ROI, _clouds, write_triplet


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
