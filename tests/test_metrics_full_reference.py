"""Full-reference metrics against scikit-image, NumPy closed forms and published CIEDE2000 test data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from rsrestore.metrics.color import delta_e_ciede2000, srgb_to_lab
from rsrestore.metrics.full_reference import (
    CONVENTIONS,
    ciede2000,
    compute_metrics,
    mae,
    mean_metrics,
    psnr,
    sam,
    ssim,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# --------------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------------


def _pair(b: int, c: int, h: int, w: int, noise: float = 0.08, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth-ish target and a noisy, biased prediction, both float32 in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(b, c, h // 4 + 2, w // 4 + 2, generator=g)
    target = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    target = (0.1 + 0.8 * target + 0.05 * torch.rand(b, c, h, w, generator=g)).clamp(0, 1)
    pred = (0.9 * target + 0.05 + noise * torch.randn(b, c, h, w, generator=g)).clamp(0, 1)
    return pred.float(), target.float()


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float64).numpy()


def _sk_ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """scikit-image SSIM for one (C, H, W) image under the project's convention."""
    return structural_similarity(
        target, pred, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=0
    )


def _sk_ciede(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """scikit-image CIEDE2000 map for one (3, H, W) sRGB image."""
    lab_t = rgb2lab(np.moveaxis(target, 0, -1))
    lab_p = rgb2lab(np.moveaxis(pred, 0, -1))
    return deltaE_ciede2000(lab_t, lab_p)


def _np_sam_deg(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-pixel spectral angle in degrees by the arccos closed form, for (C, N) arrays."""
    cos = (pred * target).sum(0) / (np.linalg.norm(pred, axis=0) * np.linalg.norm(target, axis=0))
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def _read(path: Path) -> np.ndarray:
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(path) as src:
        return src.read()


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real test data not found at {path} (expected the shared data folder beside the project root)")
    return path


# --------------------------------------------------------------------------------------------------------------------
# against scikit-image on synthetic pairs
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("c", "h", "w"), [(1, 11, 11), (3, 37, 41), (4, 23, 50), (13, 19, 17)])
def test_psnr_ssim_match_skimage(c: int, h: int, w: int) -> None:
    pred, target = _pair(2, c, h, w, seed=c)
    ours_psnr = psnr(pred, target)
    ours_ssim = ssim(pred, target)
    assert ours_psnr.shape == (2,) and ours_ssim.shape == (2,)
    for i in range(2):
        p, t = _np(pred[i]), _np(target[i])
        assert abs(ours_psnr[i].item() - peak_signal_noise_ratio(t, p, data_range=1)) < 1e-4
        assert abs(ours_ssim[i].item() - _sk_ssim(p, t)) < 1e-4


@pytest.mark.parametrize(("h", "w"), [(1, 1), (13, 29), (40, 33)])
def test_ciede2000_matches_skimage(h: int, w: int) -> None:
    pred, target = _pair(3, 3, h, w, noise=0.1, seed=h)
    ours = ciede2000(pred, target)
    for i in range(3):
        ref = _sk_ciede(_np(pred[i]), _np(target[i])).mean()
        assert abs(ours[i].item() - ref) < 1e-4


def test_srgb_to_lab_matches_skimage() -> None:
    g = torch.Generator().manual_seed(5)
    rgb = torch.rand(2, 3, 9, 7, generator=g, dtype=torch.float64)
    rgb[0, :, 0, 0] = 0.0  # black and a value below the sRGB linear-segment threshold
    rgb[0, :, 0, 1] = 0.02
    rgb[1, :, 0, 0] = 1.0  # the white point
    lab = srgb_to_lab(rgb)
    for i in range(2):
        np.testing.assert_allclose(_np(lab[i]), np.moveaxis(rgb2lab(np.moveaxis(_np(rgb[i]), 0, -1)), -1, 0), atol=1e-8)
    np.testing.assert_allclose(_np(lab[1, :, 0, 0]), [100.0, 0.0, 0.0], atol=1e-2)
    np.testing.assert_allclose(_np(lab[0, :, 0, 0]), [0.0, 0.0, 0.0], atol=1e-12)


# Sharma, Wu & Dalal (2005), Table 1: L1, a1, b1, L2, a2, b2, Delta E00 (rounded to 4 decimals).
SHARMA_TABLE = [
    (50.0000, 2.6772, -79.7751, 50.0000, 0.0000, -82.7485, 2.0425),
    (50.0000, 3.1571, -77.2803, 50.0000, 0.0000, -82.7485, 2.8615),
    (50.0000, 2.8361, -74.0200, 50.0000, 0.0000, -82.7485, 3.4412),
    (50.0000, -1.3802, -84.2814, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, -1.1848, -84.8006, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, -0.9009, -85.5211, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, 0.0000, 0.0000, 50.0000, -1.0000, 2.0000, 2.3669),
    (50.0000, -1.0000, 2.0000, 50.0000, 0.0000, 0.0000, 2.3669),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0009, 7.1792),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0010, 7.1792),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0011, 7.2195),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0012, 7.2195),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0009, -2.4900, 4.8045),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0010, -2.4900, 4.8045),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0011, -2.4900, 4.7461),
    (50.0000, 2.5000, 0.0000, 50.0000, 0.0000, -2.5000, 4.3065),
    (50.0000, 2.5000, 0.0000, 73.0000, 25.0000, -18.0000, 27.1492),
    (50.0000, 2.5000, 0.0000, 61.0000, -5.0000, 29.0000, 22.8977),
    (50.0000, 2.5000, 0.0000, 56.0000, -27.0000, -3.0000, 31.9030),
    (50.0000, 2.5000, 0.0000, 58.0000, 24.0000, 15.0000, 19.4535),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.1736, 0.5854, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.2972, 0.0000, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 1.8634, 0.5757, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.2592, 0.3350, 1.0000),
    (60.2574, -34.0099, 36.2677, 60.4626, -34.1751, 39.4387, 1.2644),
    (63.0109, -31.0961, -5.8663, 62.8187, -29.7946, -4.0864, 1.2630),
    (61.2901, 3.7196, -5.3901, 61.4292, 2.2480, -4.9620, 1.8731),
    (35.0831, -44.1164, 3.7933, 35.0232, -40.0716, 1.5901, 1.8645),
    (22.7233, 20.0904, -46.6940, 23.0331, 14.9730, -42.5619, 2.0373),
    (36.4612, 47.8580, 18.3852, 36.2715, 50.5065, 21.2231, 1.4146),
    (90.8027, -2.0831, 1.4410, 91.1528, -1.6435, 0.0447, 1.4441),
    (90.9257, -0.5406, -0.9208, 88.6381, -0.8985, -0.7239, 1.5381),
    (6.7747, -0.2908, -2.4247, 5.8714, -0.0985, -2.2286, 0.6377),
    (2.0776, 0.0795, -1.1350, 0.9033, -0.0636, -0.5514, 0.9082),
]


def test_delta_e_ciede2000_published_table_and_symmetry() -> None:
    table = torch.tensor(SHARMA_TABLE, dtype=torch.float64)
    # Lab at dim -3: the 34 pairs laid out as a 34x1 image.
    lab1 = table[:, 0:3].T.reshape(1, 3, 34, 1)
    lab2 = table[:, 3:6].T.reshape(1, 3, 34, 1)
    expected = table[:, 6]
    forward = delta_e_ciede2000(lab1, lab2).reshape(-1)
    backward = delta_e_ciede2000(lab2, lab1).reshape(-1)
    # The published values are rounded to 4 decimals.
    assert (forward - expected).abs().max().item() < 6e-5
    assert (backward - expected).abs().max().item() < 6e-5
    ref = deltaE_ciede2000(table[:, 0:3].numpy(), table[:, 3:6].numpy())
    np.testing.assert_allclose(forward.numpy(), ref, atol=1e-10)


# --------------------------------------------------------------------------------------------------------------------
# closed forms
# --------------------------------------------------------------------------------------------------------------------


def test_psnr_and_mae_closed_forms() -> None:
    target = torch.full((2, 4, 15, 13), 0.5)
    pred = target.clone()
    pred[0] += 0.1
    pred[1, :2] -= 0.2  # half the bands off by 0.2: MSE = 0.02, MAE = 0.1
    assert psnr(pred, target).tolist() == pytest.approx([20.0, -10 * math.log10(0.02)], abs=1e-5)
    assert mae(pred, target).tolist() == pytest.approx([0.1, 0.1], abs=1e-6)
    same = psnr(target, target)
    assert torch.isinf(same).all() and (same > 0).all()
    assert mae(target, target).tolist() == [0.0, 0.0]
    assert ssim(target, target).tolist() == pytest.approx([1.0, 1.0], abs=1e-12)


def test_sam_constant_images_known_angles() -> None:
    # Image 0: (1, 0) against (1, 1) -> 45 deg. Image 1: (1, 0) against (0, 0.3) -> 90 deg.
    # Image 2: a vector against a scaled copy -> 0 deg (SAM ignores brightness).
    target = torch.zeros(3, 2, 5, 7)
    pred = torch.zeros(3, 2, 5, 7)
    pred[0, 0], target[0, 0], target[0, 1] = 1.0, 0.7, 0.7
    pred[1, 0], target[1, 1] = 1.0, 0.3
    pred[2, 0], pred[2, 1] = 0.2, 0.4
    target[2] = 2.5 * pred[2]
    assert sam(pred, target).tolist() == pytest.approx([45.0, 90.0, 0.0], abs=1e-9)


def test_sam_13_bands_matches_numpy_and_skips_zero_vectors() -> None:
    pred, target = _pair(2, 13, 12, 14, noise=0.2, seed=13)
    pred[0, :, 0, :5] = 0.0  # zero pred vectors
    target[1, :, 3, 3] = 0.0  # a zero target vector
    ours = sam(pred, target)
    for i in range(2):
        p = _np(pred[i]).reshape(13, -1)
        t = _np(target[i]).reshape(13, -1)
        keep = (np.linalg.norm(p, axis=0) > 0) & (np.linalg.norm(t, axis=0) > 0)
        assert keep.sum() < p.shape[1]
        assert abs(ours[i].item() - _np_sam_deg(p[:, keep], t[:, keep]).mean()) < 1e-8
    assert torch.isnan(sam(torch.zeros(1, 3, 4, 4), torch.rand(1, 3, 4, 4))).all()


# --------------------------------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------------------------------


ALL = ("psnr", "ssim", "ciede2000", "mae", "sam")


def test_masked_pixels_change_nothing() -> None:
    pred, target = _pair(2, 3, 31, 27, seed=7)
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(2, 1, 31, 27, generator=g) > 0.05
    mask[:, :, 8:25, 6:22] = True  # leave some 11x11 windows fully valid for SSIM
    base = compute_metrics(pred, target, mask, names=ALL)
    pred2, target2 = pred.clone(), target.clone()
    invalid = (~mask).expand_as(pred)
    # Nodata may hold anything at all: values far outside [0, 1], NaN.
    pred2[invalid] = 3.0 + torch.rand(int(invalid.sum()), generator=g)
    target2[invalid] = float("nan")
    changed = compute_metrics(pred2, target2, mask, names=ALL)
    for name in ALL:
        assert changed[name] == pytest.approx(base[name], abs=1e-12), name
    unmasked = compute_metrics(pred2.clamp(0, 1), target2.nan_to_num(0.5), names=ALL)
    assert all(abs(unmasked["psnr"][i] - base["psnr"][i]) > 1e-3 for i in range(2))


def test_rectangular_mask_equals_crop() -> None:
    pred, target = _pair(2, 4, 30, 35, seed=3)
    mask = torch.zeros(2, 30, 35, dtype=torch.bool)  # (B, H, W) form
    mask[:, 4:27, 7:31] = True
    crop = (slice(None), slice(None), slice(4, 27), slice(7, 31))
    for fn in (psnr, ssim, mae, sam):
        np.testing.assert_allclose(_np(fn(pred, target, mask)), _np(fn(pred[crop], target[crop])), atol=1e-12)
    rgb_masked = ciede2000(pred[:, :3], target[:, :3], mask)
    rgb_cropped = ciede2000(pred[crop][:, :3], target[crop][:, :3])
    np.testing.assert_allclose(_np(rgb_masked), _np(rgb_cropped), atol=1e-12)


def test_mask_forms_and_degenerate_masks() -> None:
    pred, target = _pair(3, 3, 16, 18, seed=11)
    g = torch.Generator().manual_seed(2)
    mask = torch.rand(1, 1, 16, 18, generator=g) > 0.3
    a = compute_metrics(pred, target, mask.expand(3, 1, 16, 18), names=("psnr", "mae", "sam", "ciede2000"))
    b = compute_metrics(pred, target, mask, names=("psnr", "mae", "sam", "ciede2000"))  # batch 1 broadcasts
    c = compute_metrics(pred, target, mask[:, 0].expand(3, 16, 18), names=("psnr", "mae", "sam", "ciede2000"))
    assert a == b == c
    full = torch.ones(3, 1, 16, 18, dtype=torch.bool)
    assert compute_metrics(pred, target, full) == compute_metrics(pred, target)
    none = torch.zeros(3, 16, 18, dtype=torch.bool)
    for fn in (psnr, ssim, ciede2000, mae, sam):
        assert torch.isnan(fn(pred, target, none)).all()
    # Scattered nodata leaves no fully valid 11x11 window: SSIM is undefined, the pixel metrics are not.
    sparse = torch.ones(3, 16, 18, dtype=torch.bool)
    sparse[:, ::6, ::6] = False
    assert torch.isnan(ssim(pred, target, sparse)).all()
    assert torch.isfinite(psnr(pred, target, sparse)).all()


# --------------------------------------------------------------------------------------------------------------------
# compute_metrics / mean_metrics
# --------------------------------------------------------------------------------------------------------------------


def test_compute_metrics_bands_and_rgb_selection() -> None:
    pred, target = _pair(2, 4, 21, 19, seed=4)
    four = compute_metrics(pred, target)
    assert set(four) == {"psnr", "ssim", "mae", "sam"}  # no R, G, B named: no colour difference
    assert all(len(v) == 2 and all(isinstance(x, float) for x in v) for v in four.values())
    with_rgb = compute_metrics(pred, target, rgb_bands=(2, 1, 0))
    bgr = [2, 1, 0]
    assert with_rgb["ciede2000"] == pytest.approx(ciede2000(pred[:, bgr], target[:, bgr]).tolist(), abs=1e-12)
    assert with_rgb["psnr"] == four["psnr"]
    three = compute_metrics(pred[:, :3], target[:, :3], names=["ciede2000", "psnr"])
    assert list(three) == ["ciede2000", "psnr"]
    assert three["ciede2000"] == pytest.approx(ciede2000(pred[:, :3], target[:, :3]).tolist(), abs=1e-12)
    assert compute_metrics(pred, target, names="mae") == {"mae": mae(pred, target).tolist()}


def test_scores_do_not_depend_on_batch_layout_or_dtype() -> None:
    pred, target = _pair(3, 3, 24, 22, seed=9)
    batch = compute_metrics(pred, target)
    for i in range(3):
        alone = compute_metrics(pred[i : i + 1], target[i : i + 1])
        for name in ALL:
            assert alone[name][0] == pytest.approx(batch[name][i], abs=1e-12)
    cl = compute_metrics(pred.to(memory_format=torch.channels_last), target.to(memory_format=torch.channels_last))
    f64 = compute_metrics(pred.double(), target.double())
    for name in ALL:
        assert cl[name] == pytest.approx(batch[name], abs=1e-12)
        assert f64[name] == pytest.approx(batch[name], abs=1e-12)


def test_mean_metrics() -> None:
    batches = [{"psnr": [20.0, 30.0], "sam": [1.0, float("nan")]}, {"psnr": [40.0], "sam": [3.0], "ciede2000": [2.0]}]
    means = mean_metrics(batches)
    assert means["psnr"] == pytest.approx(30.0)
    assert means["sam"] == pytest.approx(2.0)  # the NaN image (nothing valid) is left out
    assert means["ciede2000"] == pytest.approx(2.0)
    assert mean_metrics([{"mae": 0.1}, {"mae": 0.3}]) == {"mae": pytest.approx(0.2)}
    assert math.isinf(mean_metrics([{"psnr": [float("inf"), 30.0]}])["psnr"])
    assert math.isnan(mean_metrics([{"ssim": [float("nan")]}])["ssim"])
    assert mean_metrics([]) == {}


def test_conventions_are_serialisable_and_state_the_parameters() -> None:
    text = json.dumps(CONVENTIONS)
    assert CONVENTIONS["data_range"] == 1.0
    for fragment in ("sigma 1.5", "K1 0.01", "K2 0.03", "valid", "degrees", "Y channel", "D65"):
        assert fragment in text


# --------------------------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------------------------


def test_clear_errors_for_bad_input() -> None:
    pred, target = _pair(2, 3, 16, 16)
    with pytest.raises(ValueError, match="same shape"):
        psnr(pred, target[:, :, :15])
    with pytest.raises(ValueError, match="same shape"):
        compute_metrics(pred, target[:1])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        ssim(pred[0], target[0])
    with pytest.raises(TypeError, match="torch.Tensor"):
        mae(_np(pred), target)
    with pytest.raises(ValueError, match="floating-point"):
        psnr((pred * 255).to(torch.uint8), (target * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        psnr(pred * 255, target)
    with pytest.raises(ValueError, match="NaN"):
        mae(pred.clone().fill_(float("nan")), target)
    with pytest.raises(ValueError, match="bool"):
        psnr(pred, target, torch.ones(2, 1, 16, 16))
    with pytest.raises(ValueError, match="mask must have shape"):
        psnr(pred, target, torch.ones(2, 3, 16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="exactly 3 bands"):
        ciede2000(torch.cat([pred, pred[:, :1]], 1), torch.cat([target, target[:, :1]], 1))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(pred[:, :, :10], target[:, :, :10])
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(pred, target, names=("psnr", "lpips"))
    with pytest.raises(ValueError, match="rgb_bands"):
        compute_metrics(pred, target, rgb_bands=(0, 1, 5))
    # Rounding a hair outside [0, 1] is not an error.
    assert torch.isfinite(psnr(pred * (1 + 1e-7), target)).all()


# --------------------------------------------------------------------------------------------------------------------
# real imagery
# --------------------------------------------------------------------------------------------------------------------


def test_sen12mscr_13_band_cloudy_vs_clear_matches_references() -> None:
    root = DATA / "sen12mscr"
    cloudy = _read(_need(root / "ROIs1970_fall_s2_cloudy/s2_cloudy_139/ROIs1970_fall_s2_cloudy_139_p839.tif"))
    clear = _read(_need(root / "ROIs1970_fall_s2/s2_139/ROIs1970_fall_s2_139_p839.tif"))
    # Sentinel-2 L1C reflectance x 10000; a 96x96 corner keeps the test fast.
    pred = np.clip(cloudy[:, :96, :96].astype(np.float64) / 10000, 0, 1)
    target = np.clip(clear[:, :96, :96].astype(np.float64) / 10000, 0, 1)
    tp, tt = torch.from_numpy(pred)[None], torch.from_numpy(target)[None]
    scores = compute_metrics(tp, tt, rgb_bands=(3, 2, 1))  # B4, B3, B2
    assert abs(scores["psnr"][0] - peak_signal_noise_ratio(target, pred, data_range=1)) < 1e-4
    assert abs(scores["ssim"][0] - _sk_ssim(pred, target)) < 1e-4
    assert abs(scores["mae"][0] - np.abs(pred - target).mean()) < 1e-10
    assert abs(scores["sam"][0] - _np_sam_deg(pred.reshape(13, -1), target.reshape(13, -1)).mean()) < 1e-6
    assert abs(scores["ciede2000"][0] - _sk_ciede(pred[[3, 2, 1]], target[[3, 2, 1]]).mean()) < 1e-4


def test_landsat_nodata_mask_matches_references_on_valid_pixels() -> None:
    scene = _read(_need(DATA / "landsat7" / "RGB.byte.tif"))
    # The top-left corner holds the scene's nodata=0 collar and real pixels.
    crop = scene[:, :80, :300].astype(np.float64) / 255
    valid = (scene[:, :80, :300] != 0).any(axis=0)
    assert 0.1 < valid.mean() < 0.9
    # A synthetic haze (Koschmieder: I = J t + A (1 - t)) quantised to 8 bits, with the collar kept as nodata.
    hazy = np.round((crop * 0.6 + 0.85 * 0.4) * 255) / 255
    hazy[:, ~valid] = 0.0
    tp, tt = torch.from_numpy(hazy)[None], torch.from_numpy(crop)[None]
    m = torch.from_numpy(valid)[None]
    scores = compute_metrics(tp, tt, m)
    p, t = hazy[:, valid], crop[:, valid]
    assert abs(scores["psnr"][0] - 10 * np.log10(1 / np.mean((p - t) ** 2))) < 1e-4
    assert abs(scores["mae"][0] - np.abs(p - t).mean()) < 1e-10
    keep = (np.linalg.norm(p, axis=0) > 0) & (np.linalg.norm(t, axis=0) > 0)
    assert abs(scores["sam"][0] - _np_sam_deg(p[:, keep], t[:, keep]).mean()) < 1e-6
    assert abs(scores["ciede2000"][0] - _sk_ciede(hazy, crop)[valid].mean()) < 1e-4
    # SSIM: scikit-image's full map, restricted to windows (5-pixel radius) that touch no nodata pixel.
    _, full = structural_similarity(
        crop, hazy, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=0,
        full=True,
    )
    inner = ndimage.minimum_filter(valid.astype(np.uint8), size=11, mode="constant", cval=0).astype(bool)
    assert abs(scores["ssim"][0] - full[:, inner].mean()) < 1e-4
