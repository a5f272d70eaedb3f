"""The Sentinel-1 stand-in (rsrestore.physics.sar_standin) and the cloud removers' clear-pixel composite.

The stand-in must carry what C-band backscatter carries (land cover, structure, speckle) and no optical colour; a cloud
remover's output must equal its input, bit for bit, on the pixels a cloud left clear.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from scipy.ndimage import uniform_filter

from rsrestore.models.clear_pixels import cloud_weight, keep_clear
from rsrestore.models.registry import load_model
from rsrestore.physics.sar_standin import land_cover, sar_standin, speckle

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sen12mscr"
S1 = DATA / "ROIs1970_fall_s1" / "s1_139" / "ROIs1970_fall_s1_139_p839.tif"
S2 = DATA / "ROIs1970_fall_s2" / "s2_139" / "ROIs1970_fall_s2_139_p839.tif"

# Reflectance of B2, B3, B4, B8, B11, B12 per land cover (typical Sentinel-2 L1C values).
COVERS = {
    "water": (0.08, 0.07, 0.05, 0.03, 0.012, 0.008),
    "vegetation": (0.04, 0.07, 0.04, 0.35, 0.18, 0.09),
    "soil": (0.12, 0.14, 0.17, 0.22, 0.30, 0.25),
    "roof": (0.24, 0.25, 0.26, 0.27, 0.28, 0.24),
    "yard": (0.06, 0.07, 0.07, 0.12, 0.14, 0.11),
}


def _bands13(b2, b3, b4, b8, b11, b12):
    """13 bands in SEN12MS-CR order from the six that matter, the others interpolated as spectra roughly are."""
    rededge = (b4 + b8) / 2
    return np.stack([b2, b2, b3, b4, rededge, (rededge + b8) / 2, b8, b8, b8, 0.5 * b8, 0.01 + 0 * b2, b11, b12])


def scene(size: int = 96) -> tuple[np.ndarray, dict[str, tuple[slice, slice]]]:
    """Four quadrants: water, vegetation, bare soil, and a village (a 3-pixel chequer of roofs and yards)."""
    h = size // 2
    regions = {"water": (slice(0, h), slice(0, h)), "vegetation": (slice(0, h), slice(h, size)),
               "soil": (slice(h, size), slice(0, h)), "built": (slice(h, size), slice(h, size))}
    six = np.zeros((6, size, size))
    for name in ("water", "vegetation", "soil"):
        ys, xs = regions[name]
        six[:, ys, xs] = np.array(COVERS[name])[:, None, None]
    yy, xx = np.mgrid[0:h, 0:h]
    roof = ((yy // 3 + xx // 3) % 2 == 0)[None]
    ys, xs = regions["built"]
    six[:, ys, xs] = np.where(roof, np.array(COVERS["roof"])[:, None, None], np.array(COVERS["yard"])[:, None, None])
    # Multiples of 2**-10, so that sums of the visible bands are exact in any order (the colour test compares bits).
    return (np.round(_bands13(*six) * 1024) / 1024).astype(np.float32), regions


def inner(region: tuple[slice, slice], margin: int = 6) -> tuple[slice, slice]:
    return tuple(slice(s.start + margin, s.stop - margin) for s in region)


def test_shape_dtype_range_and_seeded():
    clean, _ = scene()
    a = sar_standin(clean, np.random.default_rng(3))
    assert a.shape == (2, 96, 96) and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a, sar_standin(clean, np.random.default_rng(3)))
    assert not np.array_equal(a, sar_standin(clean, np.random.default_rng(4)))
    # within what Sentinel-1 shows over land and water (dB as stored; the loader clips VV to [-25, 0], VH to -32.5)
    assert -26.0 < np.median(a[0]) < -5.0 and -33.0 < np.median(a[1]) < -11.0
    assert np.percentile(a, 99.5) < 8.0 and a.min() >= -40.0


def test_land_cover_classes_and_their_backscatter():
    clean, regions = scene()
    cover = land_cover(clean)
    for name, region in regions.items():
        assert cover[name][inner(region)].mean() > 0.8, name
    sar = np.mean([sar_standin(clean, np.random.default_rng(s)) for s in range(4)], axis=0)
    mean = {k: sar[(slice(None), *inner(r))].mean(axis=(1, 2)) for k, r in regions.items()}
    # calm water is specular (dark), vegetation scatters in volume (VH relatively high), built-up double-bounces
    assert mean["vegetation"][0] - mean["water"][0] > 6.0 and mean["vegetation"][1] - mean["water"][1] > 6.0
    assert mean["built"][0] > mean["soil"][0] + 2.0 and mean["built"][0] > mean["vegetation"][0]
    assert 4.0 < mean["vegetation"][0] - mean["vegetation"][1] < 8.0


def test_no_optical_colour():
    """Only the visible mean enters: permuting B2, B3, B4 or recolouring them at the same mean changes nothing."""
    clean, _ = scene()
    ref = sar_standin(clean, np.random.default_rng(0))
    permuted = clean.copy()
    permuted[[1, 2, 3]] = clean[[3, 1, 2]]
    assert np.array_equal(sar_standin(permuted, np.random.default_rng(0)), ref)
    recoloured = clean.copy()
    # a colour gradient across the scene (blue up, red down by up to 0.03), no change in visible brightness
    shift = (np.round(30 * np.sin(np.arange(96) / 5.0)) / 1024)[None, :].astype(np.float32)
    recoloured[1] += shift
    recoloured[3] -= shift
    assert np.abs(recoloured - clean).max() > 0.02
    assert np.array_equal(sar_standin(recoloured, np.random.default_rng(0)), ref)


def test_speckle_looks_and_correlation():
    rng = np.random.default_rng(0)
    white = speckle((256, 256), rng, looks=4.4, sigma_px=0.0)
    assert white.mean() == pytest.approx(1.0, abs=0.02) and 1.0 / white.var() == pytest.approx(4.4, rel=0.06)
    corr = speckle((256, 256), rng, looks=7.0, sigma_px=0.9)
    assert corr.mean() == pytest.approx(1.0, abs=0.02) and 1.0 / corr.var() == pytest.approx(7.0, rel=0.12)
    r = corr - corr.mean()
    lag1 = (r[:, 1:] * r[:, :-1]).mean() / r.var()
    assert 0.6 < lag1 < 0.85  # real SEN12MS-CR speckle: 0.73-0.81
    with pytest.raises(ValueError, match="looks"):
        speckle((4, 4), rng, looks=0.0, sigma_px=0.0)


def test_bad_inputs():
    clean, _ = scene(32)
    with pytest.raises(ValueError, match="13-band"):
        sar_standin(clean[:4], np.random.default_rng(0))
    clean[5, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sar_standin(clean, np.random.default_rng(0))


def _corr_with_optical(sar: np.ndarray, opt: np.ndarray) -> float:
    s = [uniform_filter(x, 5).ravel() for x in sar]
    o = [uniform_filter(b, 5).ravel() for b in opt]
    return max(abs(np.corrcoef(a, b)[0, 1]) for a in s for b in o)


def test_real_patch_statistics_and_no_more_optical_link_than_real_s1():
    if not (S1.exists() and S2.exists()):
        pytest.skip(f"SEN12MS-CR patch 139_p839 not found under {DATA}")
    with rasterio.open(S1) as ds:
        real = ds.read().astype(np.float64)
    with rasterio.open(S2) as ds:
        clean = np.clip(ds.read().astype(np.float64) / 10000.0, 0, 1)
    new = sar_standin(clean, np.random.default_rng(0)).astype(np.float64)
    for i in range(2):
        assert abs(new[i].mean() - real[i].mean()) < 1.5 and abs(new[i].std() - real[i].std()) < 0.8
    assert abs((new[0] - new[1]).mean() - (real[0] - real[1]).mean()) < 1.0
    assert _corr_with_optical(new, clean) <= _corr_with_optical(real, clean)


# --------------------------------------------------------------------------------------------------------------------
# Clear pixels


TINY = {"sarcr": {"optical_bands": 13, "sar_bands": 2, "width": 8, "heads": 2, "patch": 4, "stride": 2,
                  "embed_dim": 16, "base_blocks": 1, "expand": 2, "ca_reduction": 4},
        "dsen2cr": {"optical_bands": 13, "sar_bands": 2, "features": 8, "blocks": 2}}


@pytest.mark.parametrize("name", ["sarcr", "dsen2cr"])
def test_clear_pixels_equal_the_input_with_a_known_mask(name):
    torch.manual_seed(0)
    model = load_model(name, weights=None, config=TINY[name]).eval()
    x, sar = torch.rand(2, 13, 32, 32), torch.rand(2, 2, 32, 32)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:20, 4:30] = 1.0
    with torch.no_grad():
        y = model(x, sar, mask=mask)
        free = load_model(name, weights=None, config={**TINY[name], "keep_clear": False})
        free.load_state_dict(model.state_dict())
        raw = free.eval()(x, sar)
    clear = mask.expand_as(x) == 0
    assert torch.equal(y[clear], x[clear])
    assert torch.equal(y[~clear], raw[~clear])
    assert set(model.state_dict()) == set(free.state_dict())  # no parameter added: shipped weights load


def test_detected_mask_keeps_clear_pixels_of_a_synthetic_cloud():
    from dataclasses import replace

    from rsrestore.physics.clouds import CLOUD_PRESETS, synthesize_clouds

    clean, _ = scene(64)
    # A bright thick cloud (cores 0.85-1), in the same place in every band (no parallax): the detector's sensitivity
    # to dim ones and to the displaced and blurred fringes of the 20 m and 60 m bands is measured by
    # benchmarks/bench_cloud_clean_scenes.py; this test is about what happens to the pixels it leaves clear.
    bright = replace(CLOUD_PRESETS["thick"], brightness_range=(0.85, 1.0), parallax_range=(0.0, 0.0))
    x = synthesize_clouds(torch.from_numpy(clean)[None], torch.Generator().manual_seed(1), kind=bright,
                          shadow=False)
    cloudy, opacity = x["input"], x["opacity"][:, [1, 2, 3, 7]].amax(1, keepdim=True)  # the 10 m bands
    w = cloud_weight(cloudy)
    # All but a few synthetic cloud pixels go to the network (18 of 505 do not: edge pixels whose 60 m bands, blurred
    # as the sensor blurs them, fall below the cloud score's B1 test).
    assert (w[opacity > 0.02] > 0.5).float().mean() > 0.95
    assert 0.05 < float((w == 0).float().mean()) < 0.95
    torch.manual_seed(0)
    model = load_model("dsen2cr", weights=None, config=TINY["dsen2cr"]).eval()
    with torch.no_grad():
        y = model(cloudy, torch.rand(1, 2, 64, 64))
    clear = (w == 0).expand_as(cloudy)
    assert torch.equal(y[clear], cloudy[clear]) and not torch.equal(y, cloudy)
    assert torch.equal(keep_clear(torch.full_like(cloudy, float("nan")), cloudy, w)[clear], cloudy[clear])


def test_training_step_passes_the_known_mask():
    from rsrestore.losses import build_loss
    from rsrestore.train.objectives import ObjectiveContext, supervised

    torch.manual_seed(0)
    model = load_model("dsen2cr", weights=None, config=TINY["dsen2cr"])
    batch = {"input": torch.rand(2, 13, 16, 16), "target": torch.rand(2, 13, 16, 16), "sar": torch.rand(2, 2, 16, 16),
             "mask": torch.zeros(2, 1, 16, 16)}
    batch["mask"][:, :, :8] = 1.0
    out = supervised(model, batch, ObjectiveContext(build_loss("l1"), {}, needs_sar=True))
    assert torch.equal(out.prediction[:, :, 8:], batch["input"][:, :, 8:])
    assert not torch.equal(out.prediction[:, :, :8], batch["input"][:, :, :8])
    out.loss.backward()
    assert model.head[0].weight.grad.abs().sum() > 0
