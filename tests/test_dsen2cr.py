"""Tests for the DSen2-CR baseline (models/dsen2cr.py), the CARL loss and the cloud/shadow mask (losses/carl.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rsrestore.losses.carl import carl_loss, cloud_score, cloud_shadow_mask, shadow_mask
from rsrestore.models.dsen2cr import DSen2CR, DSen2CRConfig

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sen12mscr"
FALL = "ROIs1970_fall_{kind}/{sub}_139/ROIs1970_fall_{sub}_139_p839.tif"
SUMMER_CLOUDY = "ROIs1868_summer_s2_cloudy/s2_cloudy_19/ROIs1868_summer_s2_cloudy_19_p30.tif"


def _need_data():
    if not DATA.is_dir():
        pytest.skip(f"SEN12MS-CR sample not found at {DATA} (the shared data folder is absent)")
    return pytest.importorskip("rasterio")


def read_s2(rel: str, window=None) -> np.ndarray:
    rasterio = _need_data()
    with rasterio.open(DATA / rel) as src:
        return np.clip(src.read(window=window).astype(np.float32), 0, 10000) / 10000


def load_fall_crop(y0: int = 64, x0: int = 64, size: int = 64):
    rasterio = _need_data()
    win = ((y0, y0 + size), (x0, x0 + size))
    cloudy = read_s2(FALL.format(kind="s2_cloudy", sub="s2_cloudy"), win)
    clear = read_s2(FALL.format(kind="s2", sub="s2"), win)
    with rasterio.open(DATA / FALL.format(kind="s1", sub="s1")) as src:
        s1 = src.read(window=win).astype(np.float32)
    sar = np.stack([(np.clip(s1[0], -25.0, 0.0) + 25.0) / 25.0, (np.clip(s1[1], -32.5, 0.0) + 32.5) / 32.5])
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None]  # noqa: E731
    return t(cloudy), t(clear), t(sar)


# ----------------------------------------------------------------------------------------------- DSen2-CR


@pytest.mark.parametrize("bands,h,w", [(13, 37, 45), (4, 23, 51)])
def test_forward_shapes_odd_sizes_and_band_counts(bands, h, w):
    torch.manual_seed(0)
    model = DSen2CR(DSen2CRConfig(optical_bands=bands, features=16, blocks=2)).eval()
    x, sar = torch.rand(2, bands, h, w), torch.rand(2, 2, h, w)
    with torch.no_grad():
        y = model(x, sar)
        y_cl = model.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last), sar.contiguous(memory_format=torch.channels_last)
        )
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert torch.allclose(y, y_cl, atol=1e-5)


def test_paper_config_parameter_count_closed_form():
    cfg = DSen2CRConfig()
    assert (cfg.optical_bands, cfg.sar_bands, cfg.features, cfg.blocks, cfg.res_scale) == (13, 2, 256, 16, 0.1)
    f, b = cfg.features, cfg.blocks
    head = 15 * f * 9 + f
    body = b * 2 * (f * f * 9 + f)
    tail = f * 13 * 9 + 13
    assert sum(p.numel() for p in DSen2CR(cfg).parameters()) == head + body + tail


def test_long_skip_returns_input_when_tail_is_zero():
    torch.manual_seed(0)
    model = DSen2CR(DSen2CRConfig(features=8, blocks=1))
    torch.nn.init.zeros_(model.tail.weight)
    torch.nn.init.zeros_(model.tail.bias)
    x = torch.rand(1, 13, 9, 10)
    assert torch.allclose(model(x, torch.rand(1, 2, 9, 10)), x, atol=1e-7)


def test_residual_block_scaling():
    torch.manual_seed(0)
    model = DSen2CR(DSen2CRConfig(features=8, blocks=1, res_scale=0.1))
    block = model.body[0]
    z = torch.randn(1, 8, 6, 7)
    inner = block.conv2(torch.relu(block.conv1(z)))
    assert torch.allclose(block(z), z + 0.1 * inner, atol=1e-6)


def test_init_matches_he_uniform_bounds():
    torch.manual_seed(0)
    model = DSen2CR(DSen2CRConfig(features=32, blocks=1))
    w = model.body[0].conv1.weight.detach()
    bound = np.sqrt(6.0 / (32 * 9))
    assert float(w.abs().max()) <= bound + 1e-7
    assert float(w.abs().max()) > 0.9 * bound
    assert float(model.body[0].conv1.bias.detach().abs().max()) == 0.0


def test_dsen2cr_sar_checks():
    model = DSen2CR(DSen2CRConfig(features=8, blocks=1))
    x = torch.rand(1, 13, 8, 8)
    with pytest.raises(ValueError, match="SAR"):
        model(x)
    with pytest.raises(ValueError):
        model(x, torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError):
        model(x, torch.rand(1, 2, 8, 9))
    with pytest.raises(ValueError):
        model(torch.rand(1, 12, 8, 8), torch.rand(1, 2, 8, 8))
    optical_only = DSen2CR(DSen2CRConfig(sar_bands=0, features=8, blocks=1))
    assert optical_only(x).shape == x.shape
    with pytest.raises(ValueError):
        optical_only(x, torch.rand(1, 2, 8, 8))


def test_sar_changes_output():
    torch.manual_seed(0)
    model = DSen2CR(DSen2CRConfig(features=8, blocks=1)).eval()
    x = torch.rand(1, 13, 8, 8)
    with torch.no_grad():
        assert (model(x, torch.zeros(1, 2, 8, 8)) - model(x, torch.ones(1, 2, 8, 8))).abs().max() > 1e-4


# ----------------------------------------------------------------------------------------------- CARL


def test_carl_closed_form():
    # P = [1, 2], I = [0, 0], T = [1, 1], CSM = [1, 0]:
    # covered pixel 0 -> |P - T| = 0; clear pixel 1 -> |P - I| = 2; mean 1. Global |P - T| = [0, 1], mean 0.5.
    p = torch.tensor([[[[1.0, 2.0]]]])
    i = torch.zeros_like(p)
    t = torch.ones_like(p)
    m = torch.tensor([[[[1.0, 0.0]]]])
    assert carl_loss(p, i, t, m).item() == pytest.approx(1.5)
    assert carl_loss(p, i, t, m, lam=2.0).item() == pytest.approx(2.0)
    assert carl_loss(p, i, t, m, lam=0.0).item() == pytest.approx(1.0)


def test_carl_limits_and_broadcast():
    torch.manual_seed(0)
    p, i, t = torch.rand(2, 3, 5, 6), torch.rand(2, 3, 5, 6), torch.rand(2, 3, 5, 6)
    l1_pt, l1_pi = (p - t).abs().mean(), (p - i).abs().mean()
    ones, zeros = torch.ones(2, 1, 5, 6), torch.zeros(2, 1, 5, 6)
    # Fully covered: both terms pull toward the target. Fully clear: the adaptive term pulls toward the input.
    assert torch.allclose(carl_loss(p, i, t, ones), 2 * l1_pt)
    assert torch.allclose(carl_loss(p, i, t, zeros), l1_pi + l1_pt)
    m = (torch.rand(2, 1, 5, 6) > 0.5).float()
    assert torch.allclose(carl_loss(p, i, t, m), carl_loss(p, i, t, m.expand(2, 3, 5, 6)))
    # The paper's form: L1 norm of the masked sum (binary mask) / N_tot.
    paper = (m * (p - t) + (1 - m) * (p - i)).abs().sum() / p.numel() + l1_pt
    assert torch.allclose(carl_loss(p, i, t, m), paper)


def test_carl_bad_inputs():
    p = torch.rand(1, 3, 4, 4)
    with pytest.raises(ValueError):
        carl_loss(p, p, p[:, :2], torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError):
        carl_loss(p, p, p, torch.ones(1, 2, 4, 4))
    with pytest.raises(ValueError):
        carl_loss(p, p, p, torch.ones(1, 1, 4, 5))
    with pytest.raises(ValueError):
        carl_loss(p[0], p[0], p[0], torch.ones(1, 4, 4))


# ----------------------------------------------------------------------------------------------- cloud / shadow mask


def reference_mask(img: np.ndarray, threshold: float = 0.2):
    """SciPy version of DSen2-CR's feature detectors on one (13, H, W) reflectance image in [0, 1]."""
    import scipy.ndimage as ndi
    import scipy.signal as sig

    d = img.astype(np.float64)

    def ramp(a, lo, hi):
        return (a - lo) / (hi - lo)

    def ndiff(a, b):
        s = a + b
        return (a - b) / np.where(s == 0, 1e-3, s)

    score = np.ones(d.shape[1:])
    for test in (
        ramp(d[1], 0.1, 0.5),
        ramp(d[0], 0.1, 0.3),
        ramp(d[0] + d[10], 0.15, 0.2),
        ramp(d[3] + d[2] + d[1], 0.2, 0.8),
        ramp(ndiff(d[2], d[11]), 0.8, 0.6),
    ):
        score = np.minimum(score, test)
    score = ndi.grey_closing(score, size=(5, 5))
    score = np.clip(sig.convolve2d(score, np.ones((7, 7)) / 49.0, mode="same"), 1e-5, 1.0)
    csi, blue = (d[7] + d[11]) / 2, d[1]
    t3 = csi.min() + 0.75 * (csi.mean() - csi.min())
    t4 = blue.min() + 5 / 6 * (blue.mean() - blue.min())
    shadow = sig.medfilt2d(np.where((csi < t3) & (blue < t4), -1.0, 0.0), 5) < 0
    return score, shadow, (score >= threshold) | shadow


def test_cloud_shadow_mask_matches_scipy_reference_on_real_scenes():
    fall = read_s2(FALL.format(kind="s2_cloudy", sub="s2_cloudy"))
    summer = read_s2(SUMMER_CLOUDY)
    batch = torch.from_numpy(np.stack([fall, summer])).double()
    score, shadow, mask = cloud_score(batch), shadow_mask(batch), cloud_shadow_mask(batch)
    assert mask.shape == (2, 1, 256, 256)
    for k, img in enumerate((fall, summer)):
        ref_score, ref_shadow, ref_mask = reference_mask(img)
        np.testing.assert_allclose(score[k, 0].numpy(), ref_score, atol=1e-12)
        assert np.array_equal(shadow[k, 0].numpy() > 0, ref_shadow)
        assert np.array_equal(mask[k, 0].numpy() > 0, ref_mask)
        # float32 may flip a pixel sitting exactly on the threshold, no more.
        m32 = cloud_shadow_mask(torch.from_numpy(img)[None])[0, 0].numpy() > 0
        assert (m32 != ref_mask).mean() < 1e-3
    # The scenes are really different: mostly covered vs about half covered.
    assert float(mask[0].mean()) > 0.8 and 0.2 < float(mask[1].mean()) < 0.8


def test_cloud_and_shadow_tests_on_synthetic_scenes():
    x = torch.full((1, 13, 32, 32), 0.05)
    x[:, :, 8:24, 8:24] = 0.6  # bright in every band, NDSI(B3, B11) = 0: cloud
    cloud = cloud_score(x) >= 0.2
    assert cloud[0, 0, 16, 16] and not cloud[0, 0, 0, 0]
    assert cloud_shadow_mask(x)[0, 0, 16, 16] == 1
    snow = x.clone()
    snow[:, 11, 8:24, 8:24] = 0.05  # SWIR dark under bright visible: NDSI 0.85, snow, not cloud
    assert (cloud_score(snow) < 0.2).all()
    # A dark block (low NIR + SWIR and low blue) in a bright scene is shadow; the scene around it is not.
    dark = torch.full((1, 13, 32, 32), 0.2)
    dark[:, :, 10:22, 10:22] = 0.02
    sh = shadow_mask(dark)
    assert sh[0, 0, 16, 16] == 1 and sh[0, 0, 2, 2] == 0 and sh[0, 0, 16, 2] == 0
    # A uniform scene has no pixel below its own mean: no shadow.
    assert shadow_mask(torch.full((1, 13, 16, 16), 0.1)).sum() == 0
    with pytest.raises(ValueError):
        cloud_shadow_mask(torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError):
        cloud_shadow_mask(torch.rand(1, 13, 8, 8), threshold=0.0)


# ----------------------------------------------------------------------------------------------- overfit on real data


def test_overfit_with_carl_on_sen12mscr_crop():
    cloudy, clear, sar = load_fall_crop()
    mask = cloud_shadow_mask(cloudy)
    assert 0.0 < float(mask.mean()) <= 1.0
    torch.manual_seed(0)
    model = DSen2CR(DSen2CRConfig(features=32, blocks=2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = carl_loss(model(cloudy, sar), cloudy, clear, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert min(losses[-5:]) < 0.3 * losses[0], losses
    with torch.no_grad():
        pred = model(cloudy, sar)
    # Trained toward the target under the mask: closer to the cloud-free image than the cloudy input is.
    assert float((pred - clear).abs().mean()) < float((cloudy - clear).abs().mean())
