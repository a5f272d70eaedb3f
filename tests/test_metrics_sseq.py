"""Tests for the SSEQ no-reference metric (rsrestore.metrics.sseq)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage, stats
from scipy.fft import dctn

from rsrestore.metrics.sseq import (
    _blocks_zero_padded,
    _ovo_coefficients,
    _svr_predict,
    load_sseq_model,
    pairwise_coupling,
    pool_entropies,
    scale_features,
    spatial_entropy,
    spectral_entropy,
    sseq,
    sseq_class_probabilities,
    sseq_features,
    sseq_from_features,
)

from _degraded_images import SSEQ_EXAMPLE, neon_plots
from _degraded_images import blurred as _blurred
from _degraded_images import load_rgb as _load_rgb
from _degraded_images import noisy as _noisy

NEON = neon_plots(("HARV", "037"), ("SJER", "007"), ("TEAK", "062"))


# ---------------------------------------------------------------------------------------------------- entropies


def test_spatial_entropy_matches_scikit_image():
    from skimage.measure import shannon_entropy

    rng = np.random.default_rng(0)
    blocks = np.concatenate(
        [
            rng.integers(0, 256, (20, 8, 8)),  # nearly all distinct
            rng.integers(100, 104, (20, 8, 8)),  # four levels
            np.full((1, 8, 8), 37),  # constant
        ]
    ).astype(np.float64)
    ours = spatial_entropy(torch.from_numpy(blocks)).numpy()
    ref = np.array([shannon_entropy(b) for b in blocks])
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    assert ours[-1] == 0.0
    assert spatial_entropy(torch.arange(64.0).reshape(1, 8, 8)).item() == pytest.approx(6.0)  # log2(64)


def _fecal_reference(block: np.ndarray) -> float:
    """The release's fecal.m, written out with SciPy's orthonormal DCT (MATLAB dct2).

    Coefficients that are zero in exact arithmetic (SciPy returns some as +-1e-15) are snapped to zero first, so
    that the "== 0" rule means what it says.
    """
    rf = dctn(block, type=2, norm="ortho")
    rf[np.abs(rf) < 1e-9] = 0.0
    rf[0, 0] = 1e-8
    nrf = rf**2 / np.sum(rf**2)
    nrf[nrf == 0] = 1e-8
    return float(-np.sum(nrf * np.log2(nrf)))


def test_spectral_entropy_matches_scipy_dct_reference():
    rng = np.random.default_rng(1)
    blocks = [rng.random((8, 8)) * 255, np.round(rng.random((8, 8)) * 255), np.tile(np.arange(8.0), (8, 1))]
    ours = spectral_entropy(torch.from_numpy(np.stack(blocks))).numpy()
    ref = np.array([_fecal_reference(b) for b in blocks])
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9)
    # A horizontal ramp puts its AC energy in the first row only, so it is far more predictable than noise.
    assert ours[2] < 1.0 < ours[0]


def test_constant_block_has_near_zero_spectral_entropy():
    # All energy sits in the excluded DC term; only the 1e-8 placeholders remain.
    val = spectral_entropy(torch.full((1, 8, 8), 200.0, dtype=torch.float64)).item()
    assert 0.0 <= val < 1e-4


def test_blocks_are_zero_padded_like_blkproc():
    # A 20x20 constant image: 2x2 full blocks, 4 half blocks (32 pixels of the value, 32 zeros: 1 bit) and a
    # corner block with 16 pixels of the value and 48 zeros.
    blocks = _blocks_zero_padded(torch.full((1, 20, 20), 200.0, dtype=torch.float64))
    assert blocks.shape == (1, 9, 8, 8)
    ent = spatial_entropy(blocks)[0].numpy().reshape(3, 3)
    corner = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    np.testing.assert_allclose(ent, [[0, 0, 1], [0, 0, 1], [1, 1, corner]], atol=1e-12)


def test_pooling_uses_matlab_percentile_indices_and_biased_skewness():
    rng = np.random.default_rng(2)
    for n in (5, 37, 4096):
        v = rng.gamma(2.0, size=(2, n))
        ours = pool_entropies(torch.from_numpy(v)).numpy()
        s = np.sort(v, axis=1)
        lo, hi = math.ceil(n * 0.2), math.ceil(n * 0.8)  # MATLAB's 1-based inclusive range
        np.testing.assert_allclose(ours[:, 0], s[:, lo - 1 : hi].mean(axis=1), rtol=1e-12)
        np.testing.assert_allclose(ours[:, 1], stats.skew(v, axis=1, bias=True), rtol=1e-10)
    # All-equal values: skewness is defined as 0 rather than MATLAB's NaN.
    assert pool_entropies(torch.ones(1, 10, dtype=torch.float64))[0, 1].item() == 0.0


# ---------------------------------------------------------------------------------------------------- LIBSVM parts


def _closed_form_coupling(r: np.ndarray) -> np.ndarray:
    """Exact minimiser of Wu-Lin-Weng method 2: min p'Qp subject to sum p = 1 (a linear KKT system)."""
    k = r.shape[0]
    q = np.zeros((k, k))
    for t in range(k):
        for j in range(k):
            q[t, j] = sum(r[s, t] ** 2 for s in range(k) if s != t) if t == j else -r[j, t] * r[t, j]
    kkt = np.block([[2 * q, np.ones((k, 1))], [np.ones((1, k)), np.zeros((1, 1))]])
    return np.linalg.solve(kkt, np.r_[np.zeros(k), 1.0])[:k]


def test_pairwise_coupling_sums_to_one_and_matches_the_exact_minimiser():
    rng = np.random.default_rng(3)
    k = 5
    # Consistent pairwise probabilities r_ij = p_i / (p_i + p_j) must give back p.
    p_true = rng.dirichlet(np.ones(k))
    r = p_true[:, None] / (p_true[:, None] + p_true[None, :])
    batch = [r]
    for _ in range(4):  # and inconsistent ones, as a real classifier produces
        u = rng.uniform(0.02, 0.98, (k, k))
        batch.append(np.triu(u, 1) + np.tril(1 - u.T, -1))
    p = pairwise_coupling(torch.from_numpy(np.stack(batch))).numpy()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    assert (p >= 0).all()
    np.testing.assert_allclose(p[0], p_true, atol=2e-3)
    for b in range(1, len(batch)):
        # LIBSVM stops once max |Qp - p'Qp| < 0.005 / k, so it agrees with the exact solution to about 1e-3.
        np.testing.assert_allclose(p[b], _closed_form_coupling(batch[b]), atol=5e-3)


def test_model_file_structure():
    m = load_sseq_model()
    assert m.fmin.shape == m.fmax.shape == (12,) and np.all(m.fmax > m.fmin)
    clf = m.classifier
    assert clf.n_sv.tolist() == [134, 51, 18, 109, 133] and clf.support_vectors.shape == (445, 12)
    assert clf.rho.shape == clf.prob_a.shape == clf.prob_b.shape == (10,)
    assert clf.gamma == pytest.approx(1 / 12)
    assert len(m.regressors) == 5 and all(r.sv_coef.shape[1] == 1 for r in m.regressors)


def test_decision_values_match_libsvm_loop():
    """The (nSV, npairs) weight matrix reproduces LIBSVM's svm_predict_values loop written out plainly."""
    m = load_sseq_model()
    clf = m.classifier
    x = np.random.default_rng(4).uniform(-1, 1, (3, 12))
    kvals = np.exp(-clf.gamma * ((x[:, None, :] - clf.support_vectors[None]) ** 2).sum(-1))
    start = np.r_[0, np.cumsum(clf.n_sv)[:-1]]
    ref, p = np.zeros((3, 10)), 0
    for i in range(5):
        for j in range(i + 1, 5):
            si, sj, ci, cj = start[i], start[j], clf.n_sv[i], clf.n_sv[j]
            s = kvals[:, si : si + ci] @ clf.sv_coef[si : si + ci, j - 1]
            s += kvals[:, sj : sj + cj] @ clf.sv_coef[sj : sj + cj, i]
            ref[:, p] = s - clf.rho[p]
            p += 1
    w, _ = _ovo_coefficients(clf)
    np.testing.assert_allclose(kvals @ w - clf.rho, ref, rtol=0, atol=1e-10)
    # SVR: sum_k coef_k K(x, sv_k) - rho.
    reg = m.regressors[2]
    kr = np.exp(-reg.gamma * ((x[:, None, :] - reg.support_vectors[None]) ** 2).sum(-1))
    np.testing.assert_allclose(
        _svr_predict(torch.from_numpy(x), reg).numpy(), kr @ reg.sv_coef[:, 0] - reg.rho[0], rtol=1e-12
    )


def test_scaling_maps_feature_range_to_unit_interval():
    m = load_sseq_model()
    lo = scale_features(torch.from_numpy(m.fmin)[None])
    hi = scale_features(torch.from_numpy(m.fmax)[None])
    torch.testing.assert_close(lo, -torch.ones_like(lo))
    torch.testing.assert_close(hi, torch.ones_like(hi))


# ---------------------------------------------------------------------------------------------------- SSEQ


def test_release_example_gives_a_finite_published_range_score():
    x = torch.from_numpy(_load_rgb(SSEQ_EXAMPLE)).permute(2, 0, 1).float()
    f = sseq_features(x)
    assert f.shape == (1, 12) and torch.isfinite(f).all()
    scaled = scale_features(f)
    # The example comes from LIVE, the training set, so its features fall inside the model's feature ranges.
    assert scaled.abs().max() <= 1.0
    probs = sseq_class_probabilities(scaled)
    assert probs.shape == (1, 5) and (probs >= 0).all()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-12)
    score = sseq(x)
    assert score.shape == (1,) and torch.isfinite(score).all()
    assert 0.0 <= score.item() <= 100.0
    assert score.item() == pytest.approx(sseq_from_features(f).item(), rel=1e-6)


@pytest.mark.parametrize("path", NEON, ids=lambda p: p.stem)
def test_sseq_worsens_with_blur_and_noise_on_aerial_images(path):
    a = _load_rgb(path)
    blur = sseq(_blurred(a, (0, 1, 2, 3))).numpy()
    noise = sseq(_noisy(a, (0.0, 0.1, 0.15, 0.2))).numpy()
    assert np.all(np.diff(blur) > 0), blur
    assert np.all(np.diff(noise) > 0), noise


def test_sseq_worsens_with_blur_and_noise_on_release_example():
    a = _load_rgb(SSEQ_EXAMPLE)
    # The example is JPEG-compressed: light blur or noise hides its 8x8 blocking, which SSEQ sees strongly, so the
    # series start at sigma 1 and noise 0.05.
    blur = sseq(_blurred(a, (1, 2, 3, 4))).numpy()
    noise = sseq(_noisy(a, (0.05, 0.1, 0.15))).numpy()
    assert np.all(np.diff(blur) > 0), blur
    assert np.all(np.diff(noise) > 0), noise


def test_sseq_shapes_odd_sizes_and_batch_consistency():
    rng = np.random.default_rng(5)
    a = ndimage.gaussian_filter(rng.random((2, 3, 77, 101)), (0, 0, 1, 1))
    x = torch.from_numpy(a).float()
    batch = sseq(x)
    assert batch.shape == (2,) and batch.dtype == torch.float32 and torch.isfinite(batch).all()
    assert sseq(x[0]).item() == pytest.approx(batch[0].item(), rel=1e-6)
    g = x[:1, :1]
    assert sseq(g).item() == pytest.approx(sseq(g.expand(1, 3, -1, -1)).item(), rel=1e-9)
    assert torch.isfinite(sseq(torch.full((1, 3, 64, 64), 0.3))).all()  # flat image: skewness taken as 0


def test_sseq_rejects_bad_input():
    with pytest.raises(ValueError, match="32x32"):
        sseq(torch.rand(1, 3, 31, 64))
    with pytest.raises(ValueError, match="bands"):
        sseq(torch.rand(1, 13, 64, 64))
    with pytest.raises(ValueError, match="float"):
        sseq(torch.randint(0, 255, (1, 3, 64, 64)))
    with pytest.raises(ValueError, match=r"\(B, 12\)"):
        sseq_from_features(torch.zeros(2, 11))
