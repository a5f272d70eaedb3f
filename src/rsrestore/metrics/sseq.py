"""SSEQ: Spatial-Spectral Entropy-based Quality, a no-reference metric (0 best, 100 worst).

Liu, Liu, Huang and Bovik, "No-reference image quality assessment based on spatial and spectral entropies",
Signal Processing: Image Communication 29(8), 856-863, 2014. The computation follows the authors' release
(``SSEQ.m``, ``feature_extract.m``, ``secal.m``, ``fecal.m``, ``setscale.m``, ``SSQA_by_f.m``) and evaluates its
LIBSVM models (``data/sseq/model.mat``, trained on all of LIVE) the way LIBSVM's ``svm_predict`` does, without
MATLAB or LIBSVM:

1. The RGB image is quantised to 8 bits and converted with MATLAB ``rgb2gray`` (uint8, rounded).
2. At three scales (each a MATLAB ``imresize(., 0.5)`` of the previous uint8 image), the image is cut into 8 x 8
   blocks, zero-padded at the bottom/right like ``blkproc``. Per block: the spatial entropy (paper Eq. 1; the
   histogram entropy of the 8-bit values, MATLAB ``entropy``) and the spectral entropy (paper Eqs. 2-4; the
   entropy of the normalised squared 2-D DCT coefficients, DC excluded).
3. Each entropy map is pooled into the mean of its central 60 % (sorted values from index ceil(0.2 n) to
   ceil(0.8 n), 1-based, inclusive) and the skewness of all values: 4 features per scale, 12 in all, ordered
   (spatial mean, spatial skew, spectral mean, spectral skew) per scale.
4. Features are mapped to [-1, 1] with the release's ``fmin``/``fmax`` (no clipping, as ``setscale.m``).
5. A 5-class RBF C-SVC with Platt-scaled one-vs-one probabilities, coupled as LIBSVM does (Wu, Lin and Weng 2004,
   method 2), gives class probabilities ``p``; five RBF nu-SVRs give per-class qualities ``q`` in about
   [-1, 1]; the score is ``50 + 50 * sum_k p_k q_k`` (``SSQA_by_f.m``).

No MATLAB score of the release example is published, so the port is checked part by part instead: block
entropies against scikit-image and SciPy's DCT, pooling against SciPy's skewness, the one-vs-one decision values
and SVR outputs against LIBSVM's prediction loops written out, and the probability coupling against the exact
minimiser of its objective.

Everything is batched float64 torch on the input's device; images of a batch share one size.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
from torch import Tensor

from rsrestore.metrics.niqe import _check_image, imresize_matlab, to_luma_8bit

__all__ = [
    "sseq",
    "sseq_features",
    "sseq_from_features",
    "sseq_class_probabilities",
    "spatial_entropy",
    "spectral_entropy",
    "pool_entropies",
    "scale_features",
    "pairwise_coupling",
    "load_sseq_model",
    "SVMModel",
    "SSEQModel",
]

_BLOCK = 8
_SCALES = 3
# Smallest side for which the coarsest of the three scales still holds one whole 8 x 8 block.
_MIN_SIDE = _BLOCK * 2 ** (_SCALES - 1)
# Values fecal.m puts in place of the DC coefficient and of zero energies, so log2 stays finite.
_FECAL_EPS = 1e-8
# DCT coefficients below this (relative to the block's largest |value|) are rounding noise: for 8-bit blocks
# the noise is ~1e-15 relative, real coefficients are far above 1e-10.
_DCT_ZERO_TOL = 1e-10
# LIBSVM's svm_predict_probability clips pairwise probabilities to [min_prob, 1 - min_prob].
_MIN_PROB = 1e-7


# --------------------------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------------------------


def _blocks_zero_padded(img: Tensor, b: int = _BLOCK) -> Tensor:
    """(B, H, W) -> (B, nblocks, b, b), zero-padding bottom/right to whole blocks as ``blkproc`` does."""
    n, h, w = img.shape
    ph, pw = (-h) % b, (-w) % b
    if ph or pw:
        img = torch.nn.functional.pad(img, (0, pw, 0, ph))
    nh, nw = img.shape[-2] // b, img.shape[-1] // b
    return img.reshape(n, nh, b, nw, b).permute(0, 1, 3, 2, 4).reshape(n, nh * nw, b, b)


def spatial_entropy(blocks: Tensor) -> Tensor:
    """Shannon entropy in bits of the value histogram of each block (paper Eq. 1; MATLAB ``entropy`` on uint8).

    Args:
        blocks: (..., h, w) holding integer grey levels.

    Returns:
        (...) entropies, in [0, log2(h w)].
    """
    flat = blocks.flatten(-2)
    n = flat.shape[-1]
    s = flat.sort(dim=-1).values
    # Run-length counting on the sorted values: O(n) per block instead of a 256-bin histogram per block.
    new = torch.ones_like(s, dtype=torch.bool)
    new[..., 1:] = s[..., 1:] != s[..., :-1]
    group = new.cumsum(dim=-1) - 1
    counts = torch.zeros_like(s, dtype=torch.float64).scatter_add_(-1, group, torch.ones_like(s, dtype=torch.float64))
    p = counts / n
    return -torch.where(p > 0, p * torch.log2(p.clamp(min=1e-300)), torch.zeros_like(p)).sum(dim=-1)


@functools.lru_cache(maxsize=8)
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix C, so that ``C @ X @ C.T`` is MATLAB's ``dct2(X)``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    c[0] /= np.sqrt(2.0)
    return c


def spectral_entropy(blocks: Tensor) -> Tensor:
    """Entropy in bits of the normalised DCT power of each block, DC excluded (paper Eqs. 2-4; ``fecal.m``).

    As the release: the DC coefficient is replaced by 1e-8, the squared coefficients are normalised to sum 1, and
    zero probabilities are replaced by 1e-8 before ``-sum p log2 p``.

    Args:
        blocks: (..., n, n) float.
    """
    n = blocks.shape[-1]
    if blocks.shape[-2] != n:
        raise ValueError(f"blocks must be square, got {tuple(blocks.shape[-2:])}")
    c = torch.as_tensor(_dct_matrix(n), dtype=torch.float64, device=blocks.device)
    x = blocks.to(torch.float64)
    d = c @ x @ c.T
    # Coefficients that are 0 in exact arithmetic come out as ~1e-13 noise whose size depends on the transform
    # algorithm; the release's "== 0 -> 1e-8" rule then fires or not by accident. Snap them to exact zeros.
    tol = _DCT_ZERO_TOL * x.abs().amax(dim=(-2, -1), keepdim=True).clamp(min=1.0)
    d = torch.where(d.abs() <= tol, torch.zeros_like(d), d)
    d[..., 0, 0] = _FECAL_EPS
    e = d * d
    p = e / e.sum(dim=(-2, -1), keepdim=True)
    p = torch.where(p == 0, torch.full_like(p, _FECAL_EPS), p)
    return -(p * torch.log2(p)).sum(dim=(-2, -1))


def pool_entropies(values: Tensor) -> Tensor:
    """Pool each row of entropies into (mean of the central 60 %, skewness), as ``feature_extract.m``.

    The central part is sorted[ceil(0.2 n) - 1 : ceil(0.8 n)] (0-based, end exclusive); the skewness is MATLAB's
    default (biased) ``skewness`` of all values, m3 / m2^1.5, taken as 0 when all values are equal (MATLAB gives
    NaN there, which would make the score undefined for a flat image).

    Args:
        values: (B, n).

    Returns:
        (B, 2).
    """
    s = values.sort(dim=-1).values
    n = s.shape[-1]
    lo, hi = math.ceil(n * 0.2), math.ceil(n * 0.8)
    central = s[..., lo - 1 : hi].mean(dim=-1)
    d = s - s.mean(dim=-1, keepdim=True)
    m2 = (d * d).mean(dim=-1)
    m3 = (d * d * d).mean(dim=-1)
    skew = torch.where(m2 > 0, m3 / m2.clamp(min=1e-300) ** 1.5, torch.zeros_like(m2))
    return torch.stack([central, skew], dim=-1)


def sseq_features(img: Tensor) -> Tensor:
    """The 12 raw SSEQ features of each image (``feature_extract(im, 3)``).

    Args:
        img: (B, 3, H, W) or (3, H, W) RGB float in [0, 1] (or one grey band); H, W >= 32.

    Returns:
        (B, 12) float64: per scale (spatial-entropy mean, skew, spectral-entropy mean, skew).
    """
    img = _check_image(img)
    if min(img.shape[-2:]) < _MIN_SIDE:
        raise ValueError(
            f"SSEQ needs at least {_MIN_SIDE}x{_MIN_SIDE} pixels (one 8x8 block at the third scale), "
            f"got {tuple(img.shape[-2:])}"
        )
    gray = to_luma_8bit(img, "gray")
    feats = []
    for scale in range(_SCALES):
        blocks = _blocks_zero_padded(gray)
        feats.append(pool_entropies(spatial_entropy(blocks)))
        feats.append(pool_entropies(spectral_entropy(blocks)))
        if scale < _SCALES - 1:
            # The release resizes the uint8 image, so every scale is rounded back to 8 bits.
            gray = imresize_matlab(gray, 0.5, uint8=True)
    return torch.cat(feats, dim=-1)


# --------------------------------------------------------------------------------------------------------------------
# LIBSVM models
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SVMModel:
    """A LIBSVM RBF model as stored by its MATLAB interface (fields of ``svmtrain``'s struct)."""

    gamma: float
    support_vectors: np.ndarray  # (nSV, d)
    sv_coef: np.ndarray  # (nSV, nr_class - 1)
    rho: np.ndarray  # (nr_class (nr_class - 1) / 2,)
    n_sv: np.ndarray  # (nr_class,) support vectors per class, in label order; empty for regression
    prob_a: np.ndarray  # Platt sigmoid parameters per class pair; empty without probability training
    prob_b: np.ndarray


@dataclass(frozen=True, eq=False)
class SSEQModel:
    fmin: np.ndarray  # (12,)
    fmax: np.ndarray  # (12,)
    classifier: SVMModel  # 5-class C-SVC with probabilities
    regressors: tuple[SVMModel, ...]  # 5 nu-SVRs, in the classifier's label order


# LIBSVM svm_type codes: 0 C-SVC, 3 epsilon-SVR, 4 nu-SVR (both SVRs predict sum(coef K) - rho); kernel 2 is RBF.
_CLASSIFIERS, _REGRESSORS, _RBF = (0,), (3, 4), 2


def _svm_from_struct(s: np.void, allowed_types: tuple[int, ...]) -> SVMModel:
    params = np.asarray(s["Parameters"], dtype=np.float64).ravel()  # [svm_type, kernel_type, degree, gamma, coef0]
    if int(params[0]) not in allowed_types or int(params[1]) != _RBF:
        raise ValueError(f"unexpected LIBSVM model: svm_type {int(params[0])}, kernel_type {int(params[1])}")

    def arr(name: str) -> np.ndarray:
        v = s[name]
        # LIBSVM's MATLAB interface stores the support vectors as a sparse matrix.
        return np.asarray(v.toarray() if hasattr(v, "toarray") else v, dtype=np.float64)

    return SVMModel(
        gamma=float(params[3]),
        support_vectors=arr("SVs"),
        sv_coef=arr("sv_coef").reshape(arr("SVs").shape[0], -1),
        rho=arr("rho").ravel(),
        n_sv=np.asarray(s["nSV"], dtype=np.int64).ravel(),
        prob_a=arr("ProbA").ravel(),
        prob_b=arr("ProbB").ravel(),
    )


@functools.lru_cache(maxsize=1)
def load_sseq_model() -> SSEQModel:
    """Read the release's ``model.mat`` (shipped in ``rsrestore/metrics/data/sseq``)."""
    from scipy.io import loadmat

    path = resources.files("rsrestore.metrics").joinpath("data/sseq/model.mat")
    with resources.as_file(path) as p:
        m = loadmat(str(p))
    clf = _svm_from_struct(m["svmmodel"][0, 0], _CLASSIFIERS)
    regs = tuple(_svm_from_struct(m["svrmodel"][0, j][0, 0], _REGRESSORS) for j in range(m["svrmodel"].shape[1]))
    k = clf.n_sv.size
    if len(regs) != k or clf.prob_a.size != k * (k - 1) // 2:
        raise ValueError("model.mat does not hold one regressor per class and pairwise probability parameters")
    return SSEQModel(
        fmin=np.asarray(m["fmin"], dtype=np.float64).ravel(),
        fmax=np.asarray(m["fmax"], dtype=np.float64).ravel(),
        classifier=clf,
        regressors=regs,
    )


def scale_features(features: Tensor, model: SSEQModel | None = None) -> Tensor:
    """``setscale.m``: ``-1 + 2 (f - fmin) / (fmax - fmin)`` per feature, without clipping."""
    model = model or load_sseq_model()
    fmin = torch.as_tensor(model.fmin, dtype=torch.float64, device=features.device)
    fmax = torch.as_tensor(model.fmax, dtype=torch.float64, device=features.device)
    return -1.0 + 2.0 * (features.to(torch.float64) - fmin) / (fmax - fmin)


def _rbf(x: Tensor, svm: SVMModel) -> Tensor:
    """exp(-gamma |x - sv|^2) for (B, d) x: (B, nSV)."""
    sv = torch.as_tensor(svm.support_vectors, dtype=torch.float64, device=x.device)
    d2 = ((x[:, None, :] - sv[None, :, :]) ** 2).sum(dim=-1)
    return torch.exp(-svm.gamma * d2)


@functools.lru_cache(maxsize=4)
def _ovo_coefficients(svm: SVMModel) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(nSV, npairs) weights so that ``K @ W - rho`` gives LIBSVM's one-vs-one decision values.

    For the pair (i, j), i < j, LIBSVM sums ``sv_coef[:, j-1]`` over class i's support vectors and
    ``sv_coef[:, i]`` over class j's (``svm_predict_values``).
    """
    k = svm.n_sv.size
    start = np.concatenate([[0], np.cumsum(svm.n_sv)[:-1]])
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    w = np.zeros((svm.support_vectors.shape[0], len(pairs)))
    for p, (i, j) in enumerate(pairs):
        si, sj = start[i], start[j]
        w[si : si + svm.n_sv[i], p] = svm.sv_coef[si : si + svm.n_sv[i], j - 1]
        w[sj : sj + svm.n_sv[j], p] = svm.sv_coef[sj : sj + svm.n_sv[j], i]
    return w, pairs


def pairwise_coupling(r: Tensor, max_iter: int | None = None) -> Tensor:
    """Class probabilities from pairwise probabilities, LIBSVM's ``multiclass_probability``.

    Wu, Lin and Weng, "Probability estimates for multi-class classification by pairwise coupling", JMLR 5, 2004,
    method 2: minimise ``sum_i sum_{j != i} (r_ji p_i - r_ij p_j)^2`` subject to ``sum p = 1``, solved with
    LIBSVM's fixed-point iteration (same start, update order and stopping rule ``max |Qp - pQp| < 0.005 / k``), so
    results match LIBSVM's to its own tolerance and not only the exact minimiser.

    Args:
        r: (B, k, k) with ``r[b, i, j]`` = P(class i | class i or j); the diagonal is ignored.

    Returns:
        (B, k) probabilities summing to 1.
    """
    if r.ndim != 3 or r.shape[1] != r.shape[2]:
        raise ValueError(f"r must be (B, k, k), got {tuple(r.shape)}")
    r = r.to(torch.float64)
    bsz, k, _ = r.shape
    eye = torch.eye(k, dtype=torch.bool, device=r.device)
    off = r.masked_fill(eye, 0.0)
    # Q[t][t] = sum_{j != t} r[j][t]^2 ; Q[t][j] = -r[j][t] r[t][j]
    q = -(off.transpose(1, 2) * off)
    q = q.masked_fill(eye, 0.0) + torch.diag_embed((off**2).sum(dim=1))
    p = torch.full((bsz, k), 1.0 / k, dtype=torch.float64, device=r.device)
    eps = 0.005 / k
    active = torch.ones(bsz, dtype=torch.bool, device=r.device)
    for _ in range(max_iter if max_iter is not None else max(100, k)):
        qp = (q @ p.unsqueeze(-1)).squeeze(-1)
        pqp = (p * qp).sum(dim=-1)
        # Each sample stops on its own, as LIBSVM's per-sample loop would.
        active = active & ((qp - pqp.unsqueeze(-1)).abs().amax(dim=-1) >= eps)
        if not bool(active.any()):
            break
        a = active.to(torch.float64)
        for t in range(k):
            diff = a * (-qp[:, t] + pqp) / q[:, t, t]
            p[:, t] += diff
            qtt = q[:, t, t]
            pqp = (pqp + diff * (diff * qtt + 2 * qp[:, t])) / (1 + diff) / (1 + diff)
            qp = (qp + diff.unsqueeze(-1) * q[:, t, :]) / (1 + diff).unsqueeze(-1)
            p = p / (1 + diff).unsqueeze(-1)
    return p


def sseq_class_probabilities(scaled: Tensor, model: SSEQModel | None = None) -> Tensor:
    """LIBSVM ``svmpredict(..., '-b 1')`` probabilities of the 5 distortion classes, in label order.

    Args:
        scaled: (B, 12) features already mapped by :func:`scale_features`.
    """
    model = model or load_sseq_model()
    clf = model.classifier
    w_np, pairs = _ovo_coefficients(clf)
    w = torch.as_tensor(w_np, dtype=torch.float64, device=scaled.device)
    rho = torch.as_tensor(clf.rho, dtype=torch.float64, device=scaled.device)
    dec = _rbf(scaled.to(torch.float64), clf) @ w - rho  # (B, npairs)
    a = torch.as_tensor(clf.prob_a, dtype=torch.float64, device=scaled.device)
    b = torch.as_tensor(clf.prob_b, dtype=torch.float64, device=scaled.device)
    # Platt's sigmoid, LIBSVM sigmoid_predict: 1 / (1 + exp(A f + B)).
    pair_p = torch.sigmoid(-(dec * a + b)).clamp(_MIN_PROB, 1 - _MIN_PROB)
    k = clf.n_sv.size
    r = torch.zeros(scaled.shape[0], k, k, dtype=torch.float64, device=scaled.device)
    for p_idx, (i, j) in enumerate(pairs):
        r[:, i, j] = pair_p[:, p_idx]
        r[:, j, i] = 1 - pair_p[:, p_idx]
    return pairwise_coupling(r)


def _svr_predict(scaled: Tensor, svm: SVMModel) -> Tensor:
    coef = torch.as_tensor(svm.sv_coef[:, 0], dtype=torch.float64, device=scaled.device)
    return _rbf(scaled, svm) @ coef - float(svm.rho[0])


def sseq_from_features(features: Tensor, model: SSEQModel | None = None) -> Tensor:
    """SSEQ score from raw (unscaled) features (``SSQA_by_f.m``): ``50 + 50 * sum_k p_k q_k``.

    Args:
        features: (B, 12) or (12,) as returned by :func:`sseq_features`.

    Returns:
        (B,) float64.
    """
    if features.ndim == 1:
        features = features.unsqueeze(0)
    if features.ndim != 2 or features.shape[1] != 12:
        raise ValueError(f"features must be (B, 12), got {tuple(features.shape)}")
    model = model or load_sseq_model()
    x = scale_features(features, model)
    p = sseq_class_probabilities(x, model)
    q = torch.stack([_svr_predict(x, reg) for reg in model.regressors], dim=-1)
    return 50.0 + 50.0 * (p * q).sum(dim=-1)


def sseq(img: Tensor) -> Tensor:
    """SSEQ of each image of a batch (Liu et al. 2014); about 0 (best) to 100 (worst).

    Args:
        img: (B, 3, H, W) or (3, H, W) RGB float in [0, 1] (or one grey band), H, W >= 32. Quantised to 8 bits and
            converted to grey as MATLAB ``rgb2gray`` does, since the model was trained on 8-bit LIVE images.

    Returns:
        Tensor of shape (B,) in the input's float dtype and device.
    """
    img = _check_image(img)
    return sseq_from_features(sseq_features(img)).to(img.dtype)
