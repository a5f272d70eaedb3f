"""Fused selective-scan kernels for the CPU, compiled by numba (used by :func:`.scan.selective_scan_numba`).

The O(L x D x N) part of the scan -- discretisation ``a = exp(dt A)``, the recurrence ``h_t = a h_{t-1} + dt u B_t``
and the read-out ``C_t . h_t`` -- runs here in one pass over time, with the state of a block of ``LANES`` channels
in a small local array; no (L, D, N) tensor is ever made. The O(L x D) element-wise parts (softplus, the D skip,
the gate) stay in PyTorch, which vectorises them already.

Layout: one parallel task per (batch, group, block of ``LANES`` channels of that group), over both cores. Each time
step gathers the block's ``dt`` and ``u`` and the group's ``B_t``, ``C_t`` into local vectors (any input strides
work, so time-major views cost no copy) and updates the (N, LANES) state with loops over the channel lanes of
constant length, which LLVM vectorises. Blocks narrower than ``LANES`` (channel counts that ``LANES`` does not
divide) are padded with lanes of ``dt = u = A = 0``, whose state stays 0.

Backward: the forward keeps the state every ``CHECKPOINT`` steps. The backward walks the segments in reverse; for
each it recomputes the segment's states and decays from its checkpoint into a local (CHECKPOINT, N, LANES) buffer
and runs the transposed recurrence ``dh_{t-1} = a_t (dh_t + C_t gy_t)`` through it. Memory: the checkpoints,
L / CHECKPOINT states, plus per-block buffers of a few hundred kB, whatever L.

float32 uses :func:`_exp32`, a polynomial exponential written here because numba's LLVM (without Intel's SVML)
calls the scalar libm ``expf`` for ``math.exp``, which does not vectorise; float64 (for gradient checks) uses
``math.exp``. Numba is imported only when this module is, which :mod:`.scan` does on first use.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic, overload

__all__ = ["LANES", "CHECKPOINT", "forward", "backward", "set_threads"]

#: Channels per task and per state row: the vector width of the inner loops. 24 divides RSDehamba's channel counts
#: (4 directions x 48, 72, 144, 288) and beat 8 and 16 on a 2-core Xeon (benchmarks/bench_scan.py).
LANES = 24
#: Steps between the states kept for the backward pass.
CHECKPOINT = 64


# ---------------------------------------------------------------------------------------------------------------------
# a vectorisable exp for float32


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32 (what C's memcpy or a union would do)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth != 32:
            value = builder.trunc(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)  # Cody-Waite split of ln 2: x - k ln2 stays exact for |k| < 2^8
_LN2_LO = np.float32(-2.12194440e-4)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
_EXP_MAX = np.float32(88.72283)  # above: exp overflows float32
_EXP_MIN = np.float32(-87.33654)  # below: 2^k would be subnormal; exp < 1.2e-38 is returned as 0
_INF = np.float32(np.inf)
# Cephes' expf minimax polynomial for exp(r) - 1 - r on |r| <= ln2 / 2 (relative error < 2e-7)
_P0, _P1, _P2 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3)
_P3, _P4, _P5 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1)


@njit(cache=True)
def _exp32(x):
    """exp(x) for float32 x, within 2 ulp of libm, as branch-free arithmetic that LLVM vectorises."""
    xc = min(max(x, _EXP_MIN), _EXP_MAX)
    k = math.floor(xc * _LOG2E + _HALF)
    kf = np.float32(k)
    r = xc - kf * _LN2_HI
    r = r - kf * _LN2_LO
    p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    y = (p * r * r + r + _ONE) * _float32_from_bits((k + 127) << 23)
    y = _ZERO if x < _EXP_MIN else y
    return _INF if x > _EXP_MAX else y


def _exp(x):  # typed by the overload below
    raise NotImplementedError


@overload(_exp)
def _exp_overload(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    return lambda x: math.exp(x)


# ---------------------------------------------------------------------------------------------------------------------
# kernels
#
# Every loop over the lanes runs to ``lanes``, an argument equal to LANES: with a trip count known at compile time
# LLVM unrolls these short loops before its loop vectoriser sees them and leaves them scalar; with a runtime count
# it vectorises them, checking at run time that the arrays do not overlap.


def _signatures(fn_types):
    return [fn_types(types.float32), fn_types(types.float64)]


def _arr(ft, nd):
    return types.Array(ft, nd, "A")  # any strides: one compiled kernel per dtype, views pass without copies


@njit(cache=True)
def _task(i, groups, blocks, dg):
    """(batch, group, first channel, width) of parallel task i."""
    per_batch = groups * blocks
    bi, r = i // per_batch, i % per_batch
    g = r // blocks
    d0 = g * dg + (r % blocks) * LANES
    return bi, g, d0, min(LANES, (g + 1) * dg - d0)


@njit(cache=True)
def _load_step(src, bi, d0, w, t, dst, row):
    """dst[row, :w] = src[bi, d0:d0 + w, t]; padded lanes stay 0. (Indexing rather than slicing: a view made in a
    hot loop costs two atomic reference-count updates.)"""
    for j in range(w):
        dst[row, j] = src[bi, d0 + j, t]


@njit(cache=True)
def _load_block(src, d0, w, n_state, dst):
    """dst[n, :w] = src[d0:d0 + w, n] ((D, N) -> (N, lanes)); padded lanes stay 0."""
    for n in range(n_state):
        for j in range(w):
            dst[n, j] = src[d0 + j, n]


@njit(
    _signatures(lambda ft: types.void(_arr(ft, 3), _arr(ft, 3), _arr(ft, 2), _arr(ft, 4), _arr(ft, 4), _arr(ft, 1),
                                      _arr(ft, 3), _arr(ft, 4), _arr(ft, 3), types.intp)),
    parallel=True, fastmath=False, cache=True,
)
def _forward_kernel(dt, u, A, B, C, D, y, checkpoints, last, lanes):
    """y[b, d, t] = sum_n C[b, g, n, t] h_t[d, n] + D[d] u[b, d, t]; checkpoints[b, s, n, d] = state entering step
    s * CHECKPOINT; last[b, d, n] = final state. dt, u: (batch, D, L); A: (D, N); B, C: (batch, G, N, L)."""
    bsz, dim, length = dt.shape
    groups, n_state = B.shape[1], B.shape[2]
    dg = dim // groups
    blocks = (dg + LANES - 1) // LANES
    for i in prange(bsz * groups * blocks):
        bi, g, d0, w = _task(i, groups, blocks, dg)
        ft = dt.dtype
        a_t = np.zeros((n_state, LANES), ft)  # A transposed, padded lanes 0
        _load_block(A, d0, w, n_state, a_t)
        d_skip = np.zeros(LANES, ft)
        for j in range(w):
            d_skip[j] = D[d0 + j]
        h = np.zeros((n_state, LANES), ft)
        dtv = np.zeros((1, LANES), ft)
        uv = np.zeros((1, LANES), ft)
        duv = np.zeros(LANES, ft)
        yv = np.zeros(LANES, ft)
        for t in range(length):
            if t % CHECKPOINT == 0:
                s = t // CHECKPOINT
                for n in range(n_state):
                    for j in range(w):
                        checkpoints[bi, s, n, d0 + j] = h[n, j]
            _load_step(dt, bi, d0, w, t, dtv, 0)
            _load_step(u, bi, d0, w, t, uv, 0)
            for j in range(lanes):
                duv[j] = dtv[0, j] * uv[0, j]
                yv[j] = d_skip[j] * uv[0, j]
            for n in range(n_state):
                bn, cn = B[bi, g, n, t], C[bi, g, n, t]
                for j in range(lanes):
                    hv = _exp(dtv[0, j] * a_t[n, j]) * h[n, j] + duv[j] * bn
                    h[n, j] = hv
                    yv[j] += cn * hv
            for j in range(w):
                y[bi, d0 + j, t] = yv[j]
        for n in range(n_state):
            for j in range(w):
                last[bi, d0 + j, n] = h[n, j]


@njit(fastmath={"reassoc"}, cache=True)
def _sum_lanes(work, n, row, lanes):
    """sum(work[n, row, :lanes]) in any order, so that LLVM vectorises it (only this sum is reassociated)."""
    total = work[n, row, 0]
    for j in range(1, lanes):
        total += work[n, row, j]
    return total


# rows of the backward's per-state work array: what its inner loop writes lives in one array at fixed offsets, so
# LLVM needs no run-time overlap checks among them (it gives up vectorising beyond a few such checks)
_DH, _GA, _GX, _GDU, _PB, _PC = range(6)


@njit(
    _signatures(lambda ft: types.void(
        _arr(ft, 3), _arr(ft, 1), _arr(ft, 3), _arr(ft, 3), _arr(ft, 2), _arr(ft, 4), _arr(ft, 4), _arr(ft, 1),
        types.boolean, _arr(ft, 3), _arr(ft, 4), _arr(ft, 3),
        _arr(ft, 3), _arr(ft, 3), _arr(ft, 3), _arr(ft, 5), _arr(ft, 5), _arr(ft, 2), _arr(ft, 2), types.intp)),
    parallel=True, fastmath=False, cache=True,
)
def _backward_kernel(delta, bias, dt, u, A, B, C, D, softplus, gy, checkpoints, g_last,
                     g_u, g_delta, g_A, g_B, g_C, g_D, g_bias, lanes):
    """Gradients of sum(gy * y) + sum(g_last * last) for y, last of :func:`_forward_kernel` with
    dt = softplus(delta + bias) (or delta + bias when not softplus).

    Writes g_u, g_delta: (batch, D, L); per batch item (summed by the caller) g_A: (batch, D, N), g_D, g_bias:
    (batch, D); per channel block (summed by the caller) g_B, g_C: (batch, L, G, blocks, N).
    """
    bsz, dim, length = dt.shape
    groups, n_state = B.shape[1], B.shape[2]
    dg = dim // groups
    blocks = (dg + LANES - 1) // LANES
    n_seg = (length + CHECKPOINT - 1) // CHECKPOINT
    for i in prange(bsz * groups * blocks):
        bi, g, d0, w = _task(i, groups, blocks, dg)
        blk = (d0 - g * dg) // LANES
        ft = dt.dtype
        a_t = np.zeros((n_state, LANES), ft)
        _load_block(A, d0, w, n_state, a_t)
        d_skip = np.zeros(LANES, ft)
        bias_v = np.zeros(LANES, ft)
        for j in range(w):
            d_skip[j] = D[d0 + j]
            bias_v[j] = bias[d0 + j]
        # work[n, _DH]: gradient reaching state n after the current step; work[n, _GA]: gradient of A; the other
        # rows hold the current step's terms of g_dt, g_du = g(dt u), g_B and g_C for state n
        work = np.zeros((n_state, 6, LANES), ft)
        for n in range(n_state):
            for j in range(w):
                work[n, _DH, j] = g_last[bi, d0 + j, n]
        # one segment: its states (hs[k + 1] after step k, hs[0] the checkpoint), decays and inputs
        hs = np.zeros((CHECKPOINT + 1, n_state, LANES), ft)
        decay = np.zeros((CHECKPOINT, n_state, LANES), ft)
        dts = np.zeros((CHECKPOINT, LANES), ft)
        us = np.zeros((CHECKPOINT, LANES), ft)
        dus = np.zeros((CHECKPOINT, LANES), ft)
        gys = np.zeros((CHECKPOINT, LANES), ft)
        slope = np.ones((CHECKPOINT, LANES), ft)  # d dt / d delta: sigmoid(delta + bias) under softplus
        g_x = np.zeros(LANES, ft)  # d loss / d(dt) through a = exp(dt A)
        g_du = np.zeros(LANES, ft)
        acc_d = np.zeros(LANES, ft)
        acc_bias = np.zeros(LANES, ft)
        for s in range(n_seg - 1, -1, -1):
            t0 = s * CHECKPOINT
            steps = min(CHECKPOINT, length - t0)
            for n in range(n_state):
                for j in range(w):
                    hs[0, n, j] = checkpoints[bi, s, n, d0 + j]
            for k in range(steps):
                _load_step(dt, bi, d0, w, t0 + k, dts, k)
                _load_step(u, bi, d0, w, t0 + k, us, k)
                _load_step(gy, bi, d0, w, t0 + k, gys, k)
                if softplus:
                    _load_step(delta, bi, d0, w, t0 + k, slope, k)
                    for j in range(lanes):
                        slope[k, j] = 1.0 / (1.0 + _exp(-(slope[k, j] + bias_v[j])))
                for j in range(lanes):
                    dus[k, j] = dts[k, j] * us[k, j]
                for n in range(n_state):
                    bn = B[bi, g, n, t0 + k]
                    for j in range(lanes):
                        a = _exp(dts[k, j] * a_t[n, j])
                        decay[k, n, j] = a
                        hs[k + 1, n, j] = a * hs[k, n, j] + dus[k, j] * bn
            for k in range(steps - 1, -1, -1):
                t = t0 + k
                for n in range(n_state):
                    bn, cn = B[bi, g, n, t], C[bi, g, n, t]
                    for j in range(lanes):
                        dhv = work[n, _DH, j] + gys[k, j] * cn  # total gradient of h_t
                        q = dhv * decay[k, n, j] * hs[k, n, j]  # gradient of x = dt A, since da/dx = a
                        work[n, _GA, j] += q * dts[k, j]
                        work[n, _GX, j] = q * a_t[n, j]
                        work[n, _GDU, j] = dhv * bn
                        work[n, _PB, j] = dhv * dus[k, j]
                        work[n, _PC, j] = gys[k, j] * hs[k + 1, n, j]
                        work[n, _DH, j] = decay[k, n, j] * dhv
                    g_B[bi, t, g, blk, n] = _sum_lanes(work, n, _PB, lanes)
                    g_C[bi, t, g, blk, n] = _sum_lanes(work, n, _PC, lanes)
                for j in range(lanes):
                    g_x[j] = 0
                    g_du[j] = 0
                for n in range(n_state):
                    for j in range(lanes):
                        g_x[j] += work[n, _GX, j]
                        g_du[j] += work[n, _GDU, j]
                for j in range(lanes):
                    g_x[j] = (g_x[j] + g_du[j] * us[k, j]) * slope[k, j]  # now the gradient of delta
                    g_du[j] = g_du[j] * dts[k, j] + d_skip[j] * gys[k, j]  # now the gradient of u
                    acc_d[j] += gys[k, j] * us[k, j]
                    acc_bias[j] += g_x[j]
                for j in range(w):
                    g_u[bi, d0 + j, t] = g_du[j]
                    g_delta[bi, d0 + j, t] = g_x[j]
        for j in range(w):
            g_D[bi, d0 + j] = acc_d[j]
            g_bias[bi, d0 + j] = acc_bias[j]
        for n in range(n_state):
            for j in range(w):
                g_A[bi, d0 + j, n] = work[n, _GA, j]


# ---------------------------------------------------------------------------------------------------------------------
# entry points on NumPy arrays (the torch wrapper passes tensors' memory through .numpy(), no copies)


#: Below this many (step x channel x state) updates a scan runs on one thread: waking the others costs more (from
#: tens of microseconds on an idle machine to milliseconds on a loaded one) than the work.
PARALLEL_MIN_WORK = 1 << 20


def set_threads(count: int, work: int) -> None:
    """Threads of the kernels' parallel loops for a scan of ``work`` updates: at most numba's pool size."""
    count = count if work >= PARALLEL_MIN_WORK else 1
    numba.set_num_threads(max(1, min(count, numba.config.NUMBA_NUM_THREADS)))


def blocks_per_group(dim: int, groups: int) -> int:
    return -(-(dim // groups) // LANES)


def forward(dt, u, A, B, C, D, y, checkpoints, last) -> None:
    """See :func:`_forward_kernel`; checkpoints: (batch, ceil(L / CHECKPOINT), N, D)."""
    _forward_kernel(dt, u, A, B, C, D, y, checkpoints, last, LANES)


def backward(delta, bias, dt, u, A, B, C, D, softplus, gy, checkpoints, g_last,
             g_u, g_delta, g_A, g_B, g_C, g_D, g_bias) -> None:
    """See :func:`_backward_kernel`."""
    _backward_kernel(delta, bias, dt, u, A, B, C, D, softplus, gy, checkpoints, g_last,
                     g_u, g_delta, g_A, g_B, g_C, g_D, g_bias, LANES)
