"""Rank-one prior (ROP) sand-dust restorer: closed forms, references, tiling and statistics contracts, real scenes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsrestore.classical.rop import (
    ROPConfig,
    RankOnePrior,
    luma_gamma,
    scattering_coefficient,
    unified_spectrum,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Sand-dust casts (yellow, orange, brownish). Under the AOSR-Net model I = A + (J - (1 - A)) t an output stays inside
# [0, 1] for every J only when t / (1 + t) <= A <= 1 / (1 + t); these values keep most pixels unclipped for t around
# 0.3 to 0.8 while giving the blue-starved cast typical of sand-dust imagery.
CASTS = [(0.70, 0.55, 0.35), (0.72, 0.50, 0.30), (0.65, 0.50, 0.38)]


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _smooth_field(h: int, w: int, g: torch.Generator) -> torch.Tensor:
    coarse = torch.rand(1, 1, max(2, h // 32), max(2, w // 32), generator=g)
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).clamp(0.0, 1.0)


def synth_dust(clean: torch.Tensor, cast, g: torch.Generator) -> torch.Tensor:
    """I = A + (J - (1 - A)) t with t = exp(-beta d), beta ~ U[0.3, 0.6], d a smooth field in [0.5, 2.5]."""
    _, _, h, w = clean.shape
    beta = 0.3 + 0.3 * float(torch.rand(1, generator=g))
    t = torch.exp(-beta * (0.5 + 2.0 * _smooth_field(h, w, g)))
    a = torch.tensor(cast, dtype=clean.dtype)[None, :, None, None]
    return (a + (clean - (1.0 - a)) * t).clamp(0.0, 1.0)


def _load_rgb(path: Path) -> torch.Tensor:
    from PIL import Image

    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def _require_data(sub: str) -> Path:
    p = DATA / sub
    if not p.is_dir():
        pytest.skip(f"real test data not found at {p} (expected the shared data folder beside the repository)")
    return p


def _synthetic_scene(h: int = 120, w: int = 150, seed: int = 0) -> torch.Tensor:
    """A textured clean scene (smooth fields + fine noise) under dust; for contracts that need no real data."""
    g = _rng(seed)
    clean = torch.cat([0.2 + 0.6 * _smooth_field(h, w, g) for _ in range(3)], 1)
    clean = (clean + 0.05 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1)
    return synth_dust(clean, CASTS[0], g)


# ---------------------------------------------------------------------------------------------------------------
# closed forms and references


def test_unified_spectrum_is_l1_normalised_masked_mean():
    x = torch.rand(2, 4, 9, 11, generator=_rng(1))
    mask = torch.rand(2, 9, 11, generator=_rng(2)) > 0.3
    s = unified_spectrum(x, mask)
    xn, mn = x.numpy(), mask.numpy()
    for b in range(2):
        mean = xn[b][:, mn[b]].mean(axis=1)
        np.testing.assert_allclose(s[b].numpy(), mean / mean.sum(), rtol=1e-5)
    np.testing.assert_allclose(s.sum(1).numpy(), 1.0, rtol=1e-6)


def test_refined_spectrum_follows_the_dominant_direction():
    """ROP+ (Eqs. 12-14): with 90 % of pixels along u and 10 % along a distant v, the plain mean is pulled towards v
    while the refined spectrum is u itself."""
    u = torch.tensor([0.6, 0.3, 0.1])
    v = torch.tensor([0.1, 0.3, 0.6])
    scale = 0.3 + 0.7 * torch.rand(1, 1, 10, 10, generator=_rng(3))
    x = u[None, :, None, None] * scale
    x[..., 9:, :] = v[None, :, None, None] * scale[..., 9:, :]  # 10 % of pixels: within zeta = 0.99 of the mean
    plain = unified_spectrum(x)[0]
    refined = unified_spectrum(x, refine=True)[0]
    torch.testing.assert_close(refined, u, rtol=0, atol=1e-6)
    assert (plain - u).abs().max() > 0.03


def test_scattering_coefficient_matches_numpy_and_reproduces_aligned_pixels():
    x = torch.rand(1, 3, 5, 7, generator=_rng(4))
    s = torch.tensor([[0.5, 0.3, 0.2]])
    c = scattering_coefficient(x, s)[0, 0].numpy()
    xn = x[0].numpy()
    sn = s[0].numpy()
    cos = (xn * sn[:, None, None]).sum(0) / (np.linalg.norm(xn, axis=0) * np.linalg.norm(sn))
    np.testing.assert_allclose(c, cos * xn.sum(0), rtol=1e-5)
    # A pixel lying along the unified direction is entirely scattering light: C s_nu == I.
    aligned = torch.tensor([0.5, 0.3, 0.2])[None, :, None, None] * torch.tensor([0.4, 0.9])[None, None, :, None]
    t0 = scattering_coefficient(aligned, s) * s[:, :, None, None]
    torch.testing.assert_close(t0, aligned, rtol=1e-5, atol=1e-6)


def test_scattering_map_is_rank_one():
    """Eq. 4: the mode-3 unfolding of the (smoothed) scattering map has rank one."""
    m = RankOnePrior(ROPConfig(smooth_radius=3))
    x = torch.rand(1, 3, 30, 40, generator=_rng(5))
    st = m.scene_statistics(x)
    t = m.scattering_map(x, st["spectrum"], st["threshold"])[0].reshape(3, -1).double().numpy()
    sv = np.linalg.svd(t, compute_uv=False)
    assert sv[1] / sv[0] < 1e-6


def test_uniform_image_is_a_fixed_point_of_eq11():
    """Constant I = v: s_nu = v / |v|_1, C = |v|_1, t~ = v, A = v, so Eq. 11 gives (v - w v v) / (1 - w v) = v."""
    v = torch.tensor([0.7, 0.5, 0.3])
    x = v[None, :, None, None].expand(1, 3, 17, 23).contiguous()
    m = RankOnePrior(ROPConfig(stretch_percentiles=None, gamma=None, smooth_radius=4))
    torch.testing.assert_close(m(x), x, rtol=0, atol=1e-6)
    st = m.scene_statistics(x)
    torch.testing.assert_close(st["airlight"][0], v, rtol=0, atol=1e-6)


def test_luma_gamma_matches_skimage_ycbcr_round_trip():
    from skimage.color import rgb2ycbcr, ycbcr2rgb

    x = torch.rand(1, 3, 6, 8, generator=_rng(6)) * 0.8 + 0.1
    gamma = 5.0 / 6.0
    ycc = rgb2ycbcr(x[0].permute(1, 2, 0).double().numpy())  # Y in [16, 235]
    ycc[..., 0] = 256.0 * ((ycc[..., 0] + 0.5) / 256.0) ** gamma - 0.5
    ref = np.clip(ycbcr2rgb(ycc), 0.0, 1.0)
    out = luma_gamma(x.double(), gamma)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_stretch_percentiles_match_numpy():
    x = torch.rand(1, 3, 25, 31, generator=_rng(7))
    mask = torch.rand(1, 1, 25, 31, generator=_rng(8)) > 0.2
    m = RankOnePrior(ROPConfig(smooth_radius=2, stretch_percentiles=(2.0, 97.0)))
    st = m.scene_statistics(x, mask)
    j = m._recover(x, st["spectrum"], st["airlight"], st["threshold"], valid=mask)[0].numpy()
    valid = mask[0, 0].numpy()
    for ch in range(3):
        lo, hi = np.percentile(j[ch][valid], [2.0, 97.0])
        assert abs(st["low"][0, ch].item() - lo) < 1e-5
        assert abs(st["high"][0, ch].item() - hi) < 1e-5


def test_max_stretch_caps_the_gain_about_the_midpoint_and_leaves_wide_ranges_alone():
    # A flat scene: a narrow range, stretched ~20x without the cap.
    flat = 0.4 + 0.05 * torch.rand(1, 3, 40, 40, generator=_rng(9))
    plain = RankOnePrior(ROPConfig(smooth_radius=3))
    capped = RankOnePrior(ROPConfig(smooth_radius=3, max_stretch=4.0))
    st, st_cap = plain.scene_statistics(flat), capped.scene_statistics(flat)
    assert float((1 / (st["high"] - st["low"])).min()) > 8.0
    torch.testing.assert_close(st_cap["high"] - st_cap["low"], torch.full_like(st["low"], 0.25), rtol=0, atol=1e-6)
    torch.testing.assert_close(st_cap["high"] + st_cap["low"], st["high"] + st["low"], rtol=0, atol=1e-6)
    assert float(capped(flat).std()) < 0.5 * float(plain(flat).std())
    # A scene with contrast: a gain under the cap, so the same statistics and output.
    wide = torch.rand(1, 3, 40, 40, generator=_rng(10))
    assert float((1 / (plain.scene_statistics(wide)["high"] - plain.scene_statistics(wide)["low"])).max()) < 4.0
    torch.testing.assert_close(capped(wide), plain(wide), rtol=0, atol=0)
    with pytest.raises(ValueError, match="max_stretch"):
        RankOnePrior(ROPConfig(max_stretch=0.5))


# ---------------------------------------------------------------------------------------------------------------
# interface contracts: statistics, masks, tiles, bands


def test_no_trainable_parameters_and_output_shape_at_odd_sizes():
    m = RankOnePrior()
    assert len(list(m.parameters())) == 0
    for shape in [(1, 3, 37, 53), (2, 3, 5, 7), (1, 4, 41, 19), (1, 13, 16, 33), (1, 1, 9, 9)]:
        x = torch.rand(*shape, generator=_rng(9))
        y = m(x)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert m.halo == 50


def test_tile_equals_whole_image_region_with_scene_stats():
    x = _synthetic_scene(160, 200, seed=10)
    m = RankOnePrior()
    st = m.scene_statistics(x)
    full = m(x, stats=st)
    h = m.halo
    # one tile inside the image, one against the right/bottom border, restored as a batch with stats of batch 1
    windows = [(55, 100, 70, 125), (110, 160, 150, 200)]
    for r0, r1, c0, c1 in windows:
        rr0, rr1, cc0, cc1 = max(0, r0 - h), min(160, r1 + h), max(0, c0 - h), min(200, c1 + h)
        tile = m(x[..., rr0:rr1, cc0:cc1], stats=st)
        core = tile[..., r0 - rr0 : r1 - rr0, c0 - cc0 : c1 - cc0]
        torch.testing.assert_close(core, full[..., r0:r1, c0:c1], rtol=0, atol=2e-5)
    # batch of equal-size tiles with one scene's statistics
    tiles = torch.cat([x[..., 0:100, 0:100], x[..., 60:160, 100:200]])
    out = m(tiles, stats=st)
    # the second tile's top and left edges are inside the scene: its core starts one halo in from them
    torch.testing.assert_close(out[1:2, :, h:, h:], full[..., 60 + h :, 100 + h :], rtol=0, atol=2e-5)
    torch.testing.assert_close(out[0:1, :, : 100 - h, : 100 - h], full[..., : 100 - h, : 100 - h], rtol=0, atol=2e-5)


def test_streaming_tiler_matches_whole_image():
    """Through the project's tiling engine (scene statistics once, halo-extended tiles, blended overlaps)."""
    from rsrestore.tiling import restore_array

    x = _synthetic_scene(200, 230, seed=15)
    m = RankOnePrior()
    tiled = restore_array(m, x[0], tile=96, overlap=16, batch_size=3)
    np.testing.assert_allclose(tiled, m(x)[0].numpy(), rtol=0, atol=1e-5)


def test_stats_from_a_decimated_read_match_full_resolution():
    x = _synthetic_scene(240, 240, seed=11)
    m = RankOnePrior()
    full_stats = m.scene_statistics(x)
    ref = m(x, stats=full_stats)
    for k in (2, 4):
        dec_stats = m.scene_statistics(x[..., ::k, ::k], decimation=k)
        torch.testing.assert_close(dec_stats["spectrum"], full_stats["spectrum"], rtol=0, atol=2e-3)
        torch.testing.assert_close(dec_stats["airlight"], full_stats["airlight"], rtol=0, atol=0.03)
        out = m(x, stats=dec_stats)
        assert float((out - ref).abs().mean()) < 0.01
        assert float((out - ref).abs().max()) < 0.05


def test_masked_pixels_do_not_change_the_stats():
    x = _synthetic_scene(90, 110, seed=12)
    mask = torch.ones(1, 1, 90, 110, dtype=torch.bool)
    mask[..., :, :30] = False  # a nodata strip
    mask[..., 70:, 80:] = False
    a = x.clone()
    b = x.clone()
    a[~mask.expand_as(a)] = 0.0
    b[~mask.expand_as(b)] = torch.rand(int((~mask).sum()) * 3, generator=_rng(13))
    m = RankOnePrior()
    sa, sb = m.scene_statistics(a, mask), m.scene_statistics(b, mask)
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6)
    # and they differ from statistics that let the nodata values in
    unmasked = m.scene_statistics(b)
    assert float((unmasked["spectrum"] - sa["spectrum"]).abs().max()) > 1e-3
    # masked forward: valid output pixels are independent of nodata values too
    ya, yb = m(a, mask=mask, stats=sa), m(b, mask=mask, stats=sa)
    keep = mask.expand_as(ya)
    torch.testing.assert_close(ya[keep], yb[keep], rtol=0, atol=1e-5)


def test_band_permutation_equivariance_for_multispectral_input():
    """The method is not RGB-specific: permuting the bands (and naming the RGB bands accordingly) permutes the
    output."""
    x = torch.rand(1, 5, 40, 30, generator=_rng(14)) * 0.7 + 0.15
    perm = [3, 0, 4, 1, 2]
    inv = [perm.index(i) for i in range(5)]
    m = RankOnePrior(ROPConfig(rgb_bands=(0, 1, 2)))
    m_perm = RankOnePrior(ROPConfig(rgb_bands=(inv[0], inv[1], inv[2])))
    y = m(x)
    y_perm = m_perm(x[:, perm])
    torch.testing.assert_close(y_perm, y[:, perm], rtol=0, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    m = RankOnePrior()
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="B, C, H, W"):
        m(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="floating-point"):
        m((x * 255).to(torch.uint8))
    st = m.scene_statistics(x)
    with pytest.raises(ValueError, match="bands"):
        m(torch.rand(1, 4, 8, 8), stats=st)
    with pytest.raises(ValueError, match="lack"):
        m(x, stats={"spectrum": st["spectrum"]})
    with pytest.raises(ValueError, match="batch"):
        m(torch.rand(3, 3, 8, 8), stats={k: v.expand(2, *v.shape[1:]) for k, v in st.items()})
    with pytest.raises(ValueError, match="mask"):
        m.scene_statistics(x, torch.ones(1, 1, 7, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="no valid pixel"):
        m.scene_statistics(x, torch.zeros(1, 1, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="decimation"):
        m.scene_statistics(x, decimation=0.5)
    with pytest.raises(ValueError, match="rgb_bands"):
        RankOnePrior(ROPConfig(rgb_bands=(0, 1, 5)))(torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match="omega"):
        RankOnePrior(ROPConfig(omega=0.0))
    with pytest.raises(ValueError, match="stretch_percentiles"):
        RankOnePrior(ROPConfig(stretch_percentiles=(99.0, 1.0)))
    # an all-nodata tile restored with scene statistics is not an error
    y = m(x, stats=st, mask=torch.zeros(1, 1, 8, 8, dtype=torch.bool))
    assert y.shape == x.shape


# ---------------------------------------------------------------------------------------------------------------
# quality on real clean scenes under synthetic sand dust


def _real_pairs():
    neon = sorted(_require_data("neon").glob("*/*.png"))
    euro_root = _require_data("eurosat_rgb")
    classes = ("AnnualCrop", "Highway", "Industrial", "Residential")
    euro = [sorted((euro_root / cls).glob("*.jpg"))[7] for cls in classes]
    if len(neon) < 40:
        pytest.skip("NEON folder has fewer images than expected")
    g = _rng(20)
    pairs = []
    for i, p in enumerate(neon[::40][:4] + euro):
        clean = _load_rgb(p)[..., :192, :192]
        pairs.append((clean, synth_dust(clean, CASTS[i % len(CASTS)], g)))
    return pairs


def _lab_and_de(out: torch.Tensor, clean: torch.Tensor) -> tuple[float, float]:
    from skimage.color import deltaE_ciede2000, rgb2lab

    lab_o = rgb2lab(out[0].permute(1, 2, 0).double().numpy())
    lab_c = rgb2lab(clean[0].permute(1, 2, 0).double().numpy())
    return float(lab_o[..., 2].mean()), float(deltaE_ciede2000(lab_c, lab_o).mean())


def _cast_and_error(model: RankOnePrior, pairs) -> dict[str, np.ndarray]:
    rows = []
    for clean, dusty in pairs:
        b_clean, _ = _lab_and_de(clean, clean)
        b_in, d_in = _lab_and_de(dusty, clean)
        b_out, d_out = _lab_and_de(model(dusty), clean)
        rows.append((abs(b_in - b_clean), abs(b_out - b_clean), d_in, d_out))
    r = np.array(rows)
    return {"gap_in": r[:, 0], "gap_out": r[:, 1], "de_in": r[:, 2], "de_out": r[:, 3]}


def test_rop_removes_the_dust_cast_and_improves_ciede2000_on_real_scenes():
    r = _cast_and_error(RankOnePrior(), _real_pairs())
    # mean b* moves towards the clean scene's in every scene, and the cast is mostly gone on average (the global
    # per-band stretch can overshoot into blue on scenes that are yellowish themselves)
    assert np.all(r["gap_out"] < r["gap_in"]), r
    assert r["gap_out"].mean() < 0.4 * r["gap_in"].mean(), r
    # and the colour error to the clean scene falls
    assert r["de_out"].mean() < r["de_in"].mean() - 3.0, r


def test_rop_plus_spectrum_removes_the_cast_on_real_scenes():
    r = _cast_and_error(RankOnePrior(ROPConfig(refine_spectrum=True)), _real_pairs())
    assert r["gap_out"].mean() < 0.4 * r["gap_in"].mean(), r
    assert r["de_out"].mean() < r["de_in"].mean() - 3.0, r
