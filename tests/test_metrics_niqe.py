"""Tests for the NIQE no-reference metric (rsrestore.metrics.niqe)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from rsrestore.metrics.niqe import (
    _block_features,
    _blocks,
    _mvg_distance,
    _nearest_on_grid,
    _shape_table,
    estimate_aggd_param,
    estimate_ggd_param,
    imresize_matlab,
    load_niqe_params,
    mscn,
    niqe,
    niqe_features,
    to_luma_8bit,
)

from _degraded_images import SSEQ_EXAMPLE, neon_plots
from _degraded_images import blurred as _blurred
from _degraded_images import load_rgb as _load_rgb
from _degraded_images import noisy as _noisy

# One plot per NEON site: forest, savanna and mixed scenes, all 400 x 400.
NEON = neon_plots(("HARV", "001"), ("SJER", "007"), ("TEAK", "049"))


def _sample_aggd(alpha: float, beta_l: float, beta_r: float, n: int, rng: np.random.Generator) -> np.ndarray:
    # |x| / beta ~ Gamma(1/alpha)^(1/alpha) on each side; the left side carries mass beta_l / (beta_l + beta_r).
    g = rng.gamma(1.0 / alpha, 1.0, n) ** (1.0 / alpha)
    left = rng.random(n) < beta_l / (beta_l + beta_r)
    return np.where(left, -beta_l * g, beta_r * g)


# ---------------------------------------------------------------------------------------------------- resize


def test_imresize_matches_pillow_bicubic_away_from_borders():
    # Pillow's BICUBIC is the same a = -0.5 kernel, widened the same way when shrinking, with the same pixel-centre
    # alignment; only its border handling (truncation) differs from MATLAB's mirroring.
    from PIL import Image

    a = np.random.default_rng(0).random((64, 80)).astype(np.float32)
    ours = imresize_matlab(torch.from_numpy(a.astype(np.float64)), 0.5).numpy()
    ref = np.asarray(Image.fromarray(a, mode="F").resize((40, 32), Image.BICUBIC), dtype=np.float64)
    assert ours.shape == (32, 40)
    np.testing.assert_allclose(ours[3:-3, 3:-3], ref[3:-3, 3:-3], atol=1e-6)
    # The borders do differ (mirror vs truncate), so the comparison above is not vacuous.
    assert np.abs(ours - ref).max() > 1e-3


@pytest.mark.parametrize("shape", [(33, 47), (96, 96), (5, 2)])
def test_imresize_size_is_ceil_and_constants_survive(shape):
    x = torch.full((2, *shape), 117.0, dtype=torch.float64)
    y = imresize_matlab(x, 0.5)
    assert y.shape == (2, math.ceil(shape[0] / 2), math.ceil(shape[1] / 2))
    torch.testing.assert_close(y, torch.full_like(y, 117.0), rtol=0, atol=1e-9)


def test_imresize_uint8_mode_rounds_and_saturates():
    x = torch.zeros(1, 16, 16, dtype=torch.float64)
    x[:, :, 8:] = 255.0  # a hard edge: bicubic overshoots above 255 and below 0
    free = imresize_matlab(x, 0.5)
    assert free.max() > 255.0 and free.min() < 0.0
    y = imresize_matlab(x, 0.5, uint8=True)
    assert torch.equal(y, torch.round(y)) and y.min() >= 0 and y.max() <= 255


def test_imresize_linear_ramp_is_reproduced_inside():
    # Cubic convolution reproduces linear functions; the antialiased kernel is still normalised and symmetric.
    ramp = torch.arange(64, dtype=torch.float64).repeat(8, 1)  # (8, 64): value = column index
    y = imresize_matlab(ramp, 0.5)
    expected = 2 * torch.arange(32, dtype=torch.float64) + 0.5  # output pixel j sits at input 2j + 0.5
    torch.testing.assert_close(y[0, 4:-4], expected[4:-4], rtol=0, atol=1e-9)


def test_imresize_rejects_bad_input():
    with pytest.raises(ValueError):
        imresize_matlab(torch.zeros(4, 4), 0.0)
    with pytest.raises(ValueError):
        imresize_matlab(torch.zeros(4, 4, dtype=torch.int64), 0.5)


# ---------------------------------------------------------------------------------------------------- parts


def test_luma_conventions_by_hand():
    rgb = torch.tensor([200.0, 100.0, 50.0]).reshape(1, 3, 1, 1) / 255.0
    gray = to_luma_8bit(rgb, "gray").item()
    y = to_luma_8bit(rgb, "y").item()
    assert gray == round(0.298936021293775 * 200 + 0.587043074451121 * 100 + 0.114020904255103 * 50)  # 124
    assert y == round(16 + (65.481 * 200 + 128.553 * 100 + 24.966 * 50) / 255)  # 123
    # A single band is taken as grey as it is (after 8-bit quantisation).
    g1 = to_luma_8bit(torch.full((1, 1, 2, 2), 0.5))
    assert torch.all(g1 == 128)


def test_mscn_of_constant_image_is_zero():
    out = mscn(torch.full((2, 40, 50), 173.0, dtype=torch.float64))
    assert torch.equal(out, torch.zeros_like(out))


def test_mscn_matches_scipy_reference():
    rng = np.random.default_rng(1)
    img = np.round(rng.random((45, 61)) * 255)
    w = load_niqe_params()["gaussian_window"]
    mu = ndimage.correlate(img, w, mode="nearest")
    sigma = np.sqrt(np.abs(ndimage.correlate(img * img, w, mode="nearest") - mu * mu))
    ref = (img - mu) / (sigma + 1)
    ours = mscn(torch.from_numpy(img)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-10)


def test_flat_areas_do_not_depend_on_rounding_noise():
    # Two-thirds saturated: in exact arithmetic the MSCN there is 0; a window perturbed at 1e-13 (as a different
    # filter implementation or device would round) must not change the features, although it flips the sign of
    # the rounding noise left in those areas.
    rng = np.random.default_rng(8)
    img = np.clip(ndimage.gaussian_filter(rng.standard_normal((192, 192)), 3) * 3000 + 128, 0, 255).round()
    assert np.mean((img == 0) | (img == 255)) > 0.5
    w = load_niqe_params()["gaussian_window"]
    w2 = w * (1 + 1e-13 * rng.standard_normal(w.shape))
    x = torch.from_numpy(img)[None]
    f1 = _block_features(_blocks(mscn(x, w), 96, 96))
    f2 = _block_features(_blocks(mscn(x, w2), 96, 96))
    torch.testing.assert_close(f1, f2, rtol=0, atol=1e-9)


@pytest.mark.parametrize("alpha,beta_l,beta_r", [(0.8, 0.5, 1.2), (2.0, 1.0, 1.0), (1.5, 2.0, 0.7), (0.5, 1.0, 1.0)])
def test_aggd_fit_recovers_known_parameters(alpha, beta_l, beta_r):
    x = torch.from_numpy(_sample_aggd(alpha, beta_l, beta_r, 200_000, np.random.default_rng(2)))
    a, bl, br = estimate_aggd_param(x)
    # Scales rest on second moments, which converge slowly for heavy tails (alpha 0.5): 4 % at n = 200k.
    assert abs(a.item() - alpha) / alpha < 0.03
    assert abs(bl.item() - beta_l) / beta_l < 0.04
    assert abs(br.item() - beta_r) / beta_r < 0.04


@pytest.mark.parametrize("alpha", [0.6, 1.0, 2.0, 3.0])
def test_ggd_fit_recovers_shape_and_std(alpha):
    beta = 1.3
    x = torch.from_numpy(_sample_aggd(alpha, beta, beta, 200_000, np.random.default_rng(3)))
    a, sigma = estimate_ggd_param(x)
    std = beta * math.sqrt(math.gamma(3 / alpha) / math.gamma(1 / alpha))  # standard deviation of a GGD
    assert abs(a.item() - alpha) / alpha < 0.03
    assert abs(sigma.item() - std) / std < 0.01


def test_aggd_fit_is_batched_and_handles_one_sided_samples():
    rng = np.random.default_rng(4)
    two = torch.from_numpy(np.stack([_sample_aggd(1.0, 1, 1, 5000, rng), _sample_aggd(2.0, 1, 2, 5000, rng)]))
    a, _, _ = estimate_aggd_param(two)
    assert a.shape == (2,) and a[0] < a[1]
    # No negative samples: the left scale is undefined (NaN), and alpha takes the grid's first value, as the
    # release's min() over an all-NaN vector does.
    a1, bl1, br1 = estimate_aggd_param(torch.rand(100, dtype=torch.float64))
    assert torch.isnan(bl1) and a1.item() == pytest.approx(0.2) and torch.isfinite(br1)


def test_nearest_grid_lookup_equals_bruteforce_argmin():
    grid, table = _shape_table("aggd", "cpu")
    v = torch.cat([torch.rand(3000, dtype=torch.float64) * 0.9, table[::97], torch.tensor([-1.0, 5.0])])
    brute = grid[torch.argmin((table[None, :] - v[:, None]) ** 2, dim=1)]
    assert torch.equal(_nearest_on_grid(v, grid, table), brute)


def test_feature_vector_has_36_entries_per_block():
    lum = torch.from_numpy(np.round(np.random.default_rng(5).random((2, 200, 300)) * 255))
    f = niqe_features(lum)
    assert f.shape == (2, 2 * 3, 36)  # 200x300 holds 2x3 whole 96-pixel blocks
    assert torch.isfinite(f).all()


def test_mvg_distance_matches_numpy_formula():
    rng = np.random.default_rng(6)
    p = load_niqe_params()
    feat = p["mu_pris_param"] + rng.normal(0, 0.3, (20, 36))
    feat[3, 7] = np.nan  # a NaN feature: kept for the mean of the other columns, row dropped from the covariance
    mu_d = np.nanmean(feat, axis=0)
    cov_d = np.cov(feat[~np.isnan(feat).any(axis=1)], rowvar=False)
    d = p["mu_pris_param"] - mu_d
    ref = math.sqrt(d @ np.linalg.pinv((p["cov_pris_param"] + cov_d) / 2) @ d)
    ours = _mvg_distance(
        torch.from_numpy(feat)[None], torch.from_numpy(p["mu_pris_param"]), torch.from_numpy(p["cov_pris_param"])
    )
    assert ours.item() == pytest.approx(ref, rel=1e-8)


# ---------------------------------------------------------------------------------------------------- NIQE


def test_niqe_shapes_dtype_and_batch_consistency():
    rng = np.random.default_rng(7)
    a = ndimage.gaussian_filter(rng.random((2, 3, 131, 205)), (0, 0, 1.5, 1.5))  # odd sizes
    x = torch.from_numpy(a).float()
    batch = niqe(x)
    assert batch.shape == (2,) and batch.dtype == torch.float32 and torch.isfinite(batch).all()
    single = niqe(x[1])  # (3, H, W) is accepted
    assert single.item() == pytest.approx(batch[1].item(), rel=1e-6)
    # A grey band replicated to RGB scores as the band itself.
    g = x[:1, :1]
    assert niqe(g).item() == pytest.approx(niqe(g.expand(1, 3, -1, -1)).item(), rel=1e-9)


def test_niqe_of_flat_image_is_nan_and_bad_inputs_raise():
    assert torch.isnan(niqe(torch.full((1, 3, 100, 100), 0.4)))
    with pytest.raises(ValueError, match="96x96"):
        niqe(torch.rand(1, 3, 95, 200))
    with pytest.raises(ValueError, match="96x96"):
        niqe(torch.rand(1, 3, 100, 100), crop_border=4)
    with pytest.raises(ValueError, match="bands"):
        niqe(torch.rand(1, 4, 128, 128))
    with pytest.raises(ValueError, match="NaN"):
        niqe(torch.full((1, 3, 128, 128), float("nan")))
    with pytest.raises(ValueError, match="color"):
        niqe(torch.rand(1, 3, 128, 128), color="lab")


@pytest.mark.parametrize("path", NEON, ids=lambda p: p.stem)
def test_niqe_rises_with_blur_and_noise_on_aerial_images(path):
    a = _load_rgb(path)
    blur = niqe(_blurred(a, (0, 1, 2, 3))).numpy()
    noise = niqe(_noisy(a, (0.0, 0.05, 0.1, 0.15))).numpy()
    assert np.all(np.diff(blur) > 0), blur
    assert np.all(np.diff(noise) > 0), noise
    assert 1.5 < blur[0] < 6.0  # clean 10 cm aerial imagery reads as natural


def test_niqe_on_release_example_image():
    a = _load_rgb(SSEQ_EXAMPLE)
    # The example is a JPEG-compressed LIVE image: a sigma-1 blur hides its 8x8 blocking about as much as it
    # softens the scene, so the blur series starts at sigma 1; noise only adds damage.
    blur = niqe(_blurred(a, (1, 2, 3, 4))).numpy()
    noise = niqe(_noisy(a, (0.0, 0.05, 0.1, 0.15))).numpy()
    assert np.all(np.diff(blur) > 0), blur
    assert np.all(np.diff(noise) > 0), noise
    assert 4.0 < noise[0] < 9.0
