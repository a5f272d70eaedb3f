"""The cloud removers' clear-pixel detector (rsrestore.models.clear_pixels.cloud_mask): clouds and their faint edges
go to the network, bright ground alone and the dark ground of a cloud-free scene do not, and a cloud-free scene comes
out of the bundled cloud models unchanged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from typer.testing import CliRunner

from rsrestore.cli import app
from rsrestore.losses.carl import pixel_cloud_score, shadow_mask, shadow_thresholds
from rsrestore.models.clear_pixels import (FLOOR_BANDS, MIN_CLOUD_SHARE, MIN_FLOOR_PIXELS, clear_statistics,
                                          cloud_and_shadow, cloud_mask, cloud_weight, compose)
from rsrestore.models.registry import load_model
from rsrestore.raster import sar_to_unit
from rsrestore.tiling import restore_array

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sen12mscr"
CLEAN = DATA / "ROIs1970_fall_s2" / "s2_139" / "ROIs1970_fall_s2_139_p839.tif"
S1 = DATA / "ROIs1970_fall_s1" / "s1_139" / "ROIs1970_fall_s1_139_p839.tif"


def ground(size: int = 64) -> torch.Tensor:
    """A 13-band scene of vegetation (B2 0.04, NIR 0.35) with a dark lake in one corner (which the shadow test, with
    thresholds from the image, flags)."""
    spectrum = torch.tensor([0.12, 0.04, 0.07, 0.04, 0.2, 0.3, 0.35, 0.35, 0.35, 0.1, 0.002, 0.18, 0.09])
    x = spectrum.view(1, 13, 1, 1).repeat(1, 1, size, size)
    x[:, :, :12, :12] = torch.tensor([0.1, 0.03, 0.05, 0.03, 0.03, 0.03, 0.03, 0.02, 0.02, 0.01, 0.002, 0.01,
                                      0.005]).view(1, 13, 1, 1)
    return x


def whiten(x: torch.Tensor, ys: slice, xs: slice, opacity: float) -> None:
    """Blend a flat white cloud (reflectance 0.8) over a region, in place."""
    x[:, :, ys, xs] = (1 - opacity) * x[:, :, ys, xs] + opacity * 0.8


def test_faint_cloud_counts_beside_a_cloud_and_not_alone():
    x = ground()
    whiten(x, slice(30, 50), slice(20, 36), 0.6)   # a cloud
    whiten(x, slice(30, 50), slice(36, 40), 0.16)  # its faint edge
    whiten(x, slice(2, 6), slice(50, 62), 0.16)    # the same faintness far from any cloud
    m = cloud_mask(x)[0, 0]
    assert m[30:50, 20:36].all() and m[32:48, 36:40].all()
    assert not m[2:6, 50:62].any()
    # Alone, that faint patch passes the lower threshold: only the hysteresis keeps it out.
    own = pixel_cloud_score(x)[0, 0, 2:6, 50:62]
    assert (own >= 0.1).all() and (own < 0.2).all()


def test_shadow_test_applies_only_to_scenes_with_cloud():
    x = ground()
    assert shadow_mask(x)[0, 0, 3:9, 3:9].all()  # the lake reads as shadow by the test alone
    assert not cloud_mask(x).any()  # but there is no cloud to cast it
    assert float(clear_statistics(x)["cloud_share"]) < MIN_CLOUD_SHARE
    cloudy = x.clone()
    whiten(cloudy, slice(30, 50), slice(30, 50), 0.7)
    assert cloud_mask(cloudy)[0, 0, 3:9, 3:9].all()
    # A tile restored with its scene's statistics follows the scene: a clear tile of a cloudy scene keeps the test.
    tile = x[..., :32, :32]
    assert not cloud_mask(tile).any()
    assert cloud_mask(tile, stats=clear_statistics(cloudy))[0, 0, 3:9, 3:9].all()


def test_shadow_levels_come_from_the_clear_ground_not_the_clouds():
    x = ground()
    x[:, :, 40:52, 4:16] *= 0.4                      # a cast shadow on the vegetation
    whiten(x, slice(0, 64), slice(24, 64), 0.7)      # a cloud over most of the scene
    # Premise: levels from the whole image are lifted by the cloud until the clear vegetation reads as shadow.
    whole = shadow_mask(x, shadow_thresholds(x))[0, 0]
    assert whole[20:36, 4:20].all()
    m = cloud_mask(x)[0, 0]
    assert not m[20:36, 4:20].any()                  # the clear vegetation stays clear
    assert m[42:50, 6:14].all()                      # the shadow is still found
    assert m[:, 26:].all()                           # and the cloud


def test_shadow_levels_fall_back_to_the_whole_image_when_little_is_clear():
    x = ground()
    exclude = torch.ones(1, 1, 64, 64, dtype=torch.bool)
    exclude[..., :4, :4] = False                     # 16 pixels left: too few to measure levels on
    assert torch.equal(shadow_thresholds(x, exclude), shadow_thresholds(x))
    exclude[..., :, :32] = False
    assert not torch.equal(shadow_thresholds(x, exclude), shadow_thresholds(x))


def test_training_on_detected_pixels_hands_them_to_the_network_too():
    x = ground()
    whiten(x, slice(30, 50), slice(30, 50), 0.7)     # a cloud the detector finds, missing from the known mask
    known = torch.zeros(1, 1, 64, 64)
    known[..., 2:10, 40:60] = 1                      # a known cloud the detector does not see
    pred = torch.full_like(x, 0.5)
    only_known = compose(pred, x, enabled=True, mask=known, stats=None)
    both = compose(pred, x, enabled=True, mask=known, stats=None, with_detected=True)
    assert torch.equal(only_known[..., 35:45, 35:45], x[..., 35:45, 35:45])
    assert (both[..., 35:45, 35:45] == 0.5).all()
    assert (both[..., 2:10, 40:60] == 0.5).all() and (only_known[..., 2:10, 40:60] == 0.5).all()
    assert torch.equal(both[..., 54:, 4:20], x[..., 54:, 4:20])   # clear vegetation stays the input's


def test_restored_visible_and_cirrus_bands_are_no_darker_than_the_clear_ground():
    x = ground()
    x[:, 10] = torch.linspace(0.0005, 0.0015, 64).view(1, 64, 1)   # a cirrus band varying over the clear ground
    whiten(x, slice(20, 60), slice(20, 60), 0.8)
    clear = cloud_mask(x)[0, 0] == 0
    pred = torch.zeros_like(x)                       # a network that answers black everywhere
    out = compose(pred, x, enabled=True, mask=None, stats=None)
    inside = out[0, :, 30:50, 30:50]
    for band in range(13):
        values = inside[band]
        if band in FLOOR_BANDS:
            level = torch.quantile(x[0, band][clear], 0.01)
            assert torch.allclose(values, level.expand_as(values)), band
            assert float(level) > 0
        else:
            assert (values == 0).all(), band   # no floor in the infrared, where dark water reads near 0
    untouched = cloud_weight(x)[0, 0] == 0
    assert untouched.sum() > 1000 and torch.equal(out[0][:, untouched], x[0][:, untouched])   # clear ground kept
    # A brighter prediction passes as it is.
    bright = torch.full_like(x, 0.5)
    assert (compose(bright, x, enabled=True, mask=None, stats=None)[0, :, 30:50, 30:50] == 0.5).all()


def test_the_floor_is_the_scenes_for_every_tile_and_needs_enough_clear_ground():
    x = ground()
    whiten(x, slice(0, 64), slice(16, 64), 0.8)
    stats = clear_statistics(x)
    assert torch.isfinite(stats["floor"][0, list(FLOOR_BANDS)]).all()
    tile = x[..., 8:40, 24:56]                       # all cloud: no clear ground of its own
    pred = torch.zeros_like(tile)
    alone = compose(pred, tile, enabled=True, mask=None, stats=None)
    assert (alone == 0).all()
    assert float(clear_statistics(tile)["floor"].max()) == -float("inf")
    in_scene = compose(pred, tile, enabled=True, mask=None, stats=stats)
    for band in FLOOR_BANDS:
        assert torch.allclose(in_scene[0, band], stats["floor"][0, band].expand(32, 32))
    # A scene with fewer clear pixels than MIN_FLOOR_PIXELS has no floor.
    few = ground()
    whiten(few, slice(0, 64), slice(0, 64), 0.8)
    few[..., :8, :8] = ground()[..., :8, :8]
    assert int((cloud_mask(few) == 0).sum()) < MIN_FLOOR_PIXELS
    assert float(clear_statistics(few)["floor"].max()) == -float("inf")


def shadowed_scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vegetation (96 x 96) with a cloud in one corner and a shadow across the other, deeper in the infrared than in
    the blue (as the path light leaves it); returns the scene, the lit ground and the shadow's per-band depth."""
    spectrum = torch.tensor([0.15, 0.08, 0.09, 0.06, 0.12, 0.25, 0.3, 0.3, 0.32, 0.05, 0.002, 0.2, 0.1])
    lit = spectrum.view(1, 13, 1, 1).repeat(1, 1, 96, 96)
    lit = lit * (1 + 0.05 * torch.sin(torch.arange(96.0) / 3).view(1, 1, 1, 96))   # some texture
    depth = torch.tensor([0.97, 0.92, 0.88, 0.85, 0.8, 0.7, 0.68, 0.66, 0.66, 0.7, 0.95, 0.6, 0.6])
    x = lit.clone()
    x[..., 50:80, 50:80] *= depth.view(1, 13, 1, 1)
    whiten(x, slice(4, 24), slice(4, 24), 0.8)
    return x, lit, depth


def test_restored_shadows_are_no_brighter_than_the_scenes_own_gain_lifts_them():
    x, lit, depth = shadowed_scene()
    cloud, shadow = cloud_and_shadow(x)
    assert shadow[0, 0, 52:78, 52:78].all() and not cloud[0, 0, 40:, 40:].any()
    stats = clear_statistics(x)
    assert torch.allclose(stats["shadow_gain"][0], 1 / depth, rtol=0.02)
    pale = torch.full_like(x, 0.5)                   # a network that lifts the shadow into a pale veil
    out = compose(pale, x, enabled=True, mask=None, stats=stats)
    assert torch.allclose(out[..., 55:75, 55:75], lit[..., 55:75, 55:75], rtol=0.02)   # the ground, its texture kept
    assert (out[0, :, 8:20, 8:20] == 0.5).all()                                     # clouds are the network's
    untouched = (cloud_weight(x)[0, 0] == 0)
    assert torch.equal(out[0][:, untouched], x[0][:, untouched])
    # A network that leaves a shadow darker (or a dark field the detector took for shadow as it is) is not changed
    # (in the bands without a floor).
    dim, infrared = x * 0.9, [4, 5, 6, 7, 8, 9, 11, 12]
    assert torch.equal(compose(dim, x, enabled=True, mask=None, stats=stats)[:, infrared, 55:75, 55:75],
                       dim[:, infrared, 55:75, 55:75])
    # Without the cap, the veil stays.
    plain = compose(pale, x, enabled=True, mask=None, stats=stats, bound_shadows=False)
    assert (plain[0, :, 55:75, 55:75] == 0.5).all()


def test_a_scene_without_enough_shadow_gives_its_shadows_to_the_network():
    x, _, depth = shadowed_scene()
    small = x.clone()
    small[..., 50:80, 50:80] /= depth.view(1, 13, 1, 1)   # lift the big shadow
    small[..., 60:66, 60:66] *= depth.view(1, 13, 1, 1)   # and cast a small one: too small to measure
    stats = clear_statistics(small)
    assert cloud_and_shadow(small)[1][0, 0, 61:65, 61:65].all()
    assert torch.isnan(stats["shadow_gain"]).all()
    out = compose(torch.full_like(x, 0.5), small, enabled=True, mask=None, stats=stats)
    assert (out[0, :, 61:65, 61:65] == 0.5).all()
    assert torch.equal(out, compose(torch.full_like(x, 0.5), small, enabled=True, mask=None, stats=stats,
                                    bound_shadows=False))   # as without the bound, to the bit


@pytest.mark.parametrize("name", ["sarcr", "dsen2cr"])
def test_train_on_detected_applies_in_training_only(name):
    cfg = {"optical_bands": 13, "sar_bands": 2, "keep_clear": True, "train_on_detected": True}
    if name == "sarcr":
        cfg |= {"width": 8, "heads": 2, "patch": 4, "embed_dim": 16, "base_blocks": 1, "expand": 2}
    else:
        cfg |= {"features": 8, "blocks": 1}
    model = load_model(name, weights=None, config=cfg)
    x = ground()
    whiten(x, slice(30, 50), slice(30, 50), 0.7)
    sar = torch.rand(1, 2, 64, 64)
    known = torch.zeros(1, 1, 64, 64)
    with torch.no_grad():
        model.train()
        trained = model(x, sar, mask=known)
        model.eval()
        restored = model(x, sar, mask=known)
    assert torch.equal(restored, x)                  # a known mask is obeyed as given when restoring
    assert not torch.equal(trained[..., 35:45, 35:45], x[..., 35:45, 35:45])


@pytest.mark.parametrize("name", ["sarcr", "dsen2cr"])
def test_cloud_free_scene_passes_through_the_bundled_cloud_models_unchanged(name, tmp_path):
    if not CLEAN.exists():
        pytest.skip(f"SEN12MS-CR patch 139_p839 not found under {DATA} (the shared data folder is absent)")
    out = tmp_path / "out.tif"
    result = CliRunner().invoke(app, ["restore", str(CLEAN), "--sar", str(S1), "--method", name, "-o", str(out),
                                      "--device", "cpu", "--tile", "128", "--overlap", "16"])
    assert result.exit_code == 0, result.output
    with rasterio.open(CLEAN) as a, rasterio.open(out) as b:
        assert np.array_equal(a.read(), b.read())
    # The network itself would change it: the detector is what keeps it.
    with rasterio.open(CLEAN) as ds:
        clean = np.clip(ds.read().astype(np.float32) / 10000.0, 0.0, 1.0)
    with rasterio.open(S1) as ds:
        sar = sar_to_unit(ds.read())
    model = load_model(name)
    free = load_model(name, config={**dataclasses.asdict(model.cfg), "keep_clear": False}).eval()
    free.load_state_dict(model.state_dict())
    assert np.abs(restore_array(free, clean, sar=sar, tile=128, overlap=16) - clean).max() > 0.01
