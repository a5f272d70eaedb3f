"""Fused selective-scan kernels for the CPU, compiled by numba (used by :func:`.scan.selective_scan_numba`).

The O(L x D x N) part of the scan -- discretisation ``a = exp(dt A)``, the recurrence ``h_t = a h_{t-1} + dt u B_t``
and the read-out ``C_t . h_t + D u_t`` -- runs here in one pass over time; ``a`` is computed on the fly and no
(L, D, N) tensor is ever made. The step size ``dt = softplus(delta + bias)`` is computed in the same pass (two
passes over (L, D) memory fewer than PyTorch's add and softplus), and made again by the backward, a segment at a time,
instead of being stored. delta itself may come as its low-rank factors (Mamba's dt_proj: a (L, G, R) factor and a (D, R)
projection, R = 3-9 in RSDehamba): the kernels then make each step's delta from R values instead of reading D, and the
backward returns the factors' gradients, so neither the (L, D) delta nor its gradient is ever stored and PyTorch's
batched matrix products for them (with their copies) go. The gate stays in PyTorch.

Layout. The kernels take time-major, channel-contiguous ``delta``, ``u``, ``y``: (batch, L, D), which is how the vision
models build their sequences (``scan.py`` hands their (batch, D, L) views over as they are). One parallel task
(``prange``) per (batch item, group, block of at most ``BLOCK`` channels of the group); a task keeps its (N, width)
state in a local array and, for each step and each state n, updates all its channels in one loop over contiguous
memory. That loop is long (the block width, 32..64 channels in RSDehamba) and unit-stride, so LLVM vectorises it;
the previous layout -- short loops of 24 lanes, one per state -- spent most of its time in the vectoriser's loop
set-up and ran at about 2 ns per state update against 0.3-0.5 ns now (``benchmarks/bench_scan.py``). Tasks are
independent and each sums in a fixed order, so the result does not depend on the thread count.

Backward: the forward keeps the state every ``CHECKPOINT`` steps (L / CHECKPOINT states). The backward walks the
segments in reverse; for each it recomputes the segment's step sizes, states and decays from its checkpoint into
per-task buffers of (CHECKPOINT + 1, N, width) values (about 130 kB) and runs the transposed recurrence
``dh_{t-1} = a_t (dh_t + C_t gy_t)`` through them. The recompute, which walks forward in time, also copies the
segment's rows of u, gy, B and C into small buffers, so the reverse walk never waits on main memory (reading them
there in reverse order cost a fifth of the backward's time at L = 128^2, whose inputs outgrow the caches).

float32 uses :func:`_exp2_32`, a polynomial 2^x written here because numba's LLVM (without Intel's SVML) calls the
scalar libm ``expf`` for ``math.exp``, which does not vectorise; ``A`` is scaled by log2(e) once per task, so a
step costs one multiply and the polynomial. float64 (for gradient checks) uses ``math.exp``. Numba is imported only
when this module is, which :mod:`.scan` does on first use; the kernels are compiled for float32 and float64 at
import and cached by numba next to this file (``cache=True``), so only the first import in an installation compiles.
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic, overload

__all__ = ["BLOCK", "CHECKPOINT", "forward", "backward", "set_threads", "block_layout", "THREADS_ENV"]

#: Widest channel block of one task. 64 keeps a task's (N, width) state and its backward buffers in the L1/L2 caches
#: and still gives every vector loop several full AVX iterations; groups wider than this are split evenly.
BLOCK = 64
#: Steps between the states kept for the backward pass.
CHECKPOINT = 32
#: Environment variable capping the kernels' threads (below ``torch.get_num_threads()``), e.g. on a shared machine.
THREADS_ENV = "RSRESTORE_SCAN_THREADS"


# ---------------------------------------------------------------------------------------------------------------------
# a vectorisable 2^x for float32


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


_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_X_MIN = np.float32(-126.0)  # 2^-126: the smallest normal float32; anything below is returned as ~1e-38
_X_MAX = np.float32(127.0)
# 2^f = 1 + f q(f) on |f| <= 1/2: q fitted at 2000 Chebyshev nodes (relative error of the float32 result < 1e-7)
_Q0, _Q1, _Q2 = np.float32(0.6931471824645996), np.float32(0.24022650718688965), np.float32(0.055503569543361664)
_Q3, _Q4, _Q5 = np.float32(0.009618056938052177), np.float32(0.0013390866806730628), np.float32(0.00015461447765119374)


@njit(inline="always", fastmath=True)
def _exp2_32(x):
    """2^x for float32 x as branch-free arithmetic that LLVM vectorises: 2^round(x) from the exponent bits times a
    polynomial for the rest."""
    x = min(max(x, _X_MIN), _X_MAX)
    k = np.floor(x + _HALF)  # a float: math.floor's int64 would cost 64-bit conversions
    f = x - k
    q = ((((_Q5 * f + _Q4) * f + _Q3) * f + _Q2) * f + _Q1) * f + _Q0
    return (f * q + _ONE) * _float32_from_bits((np.int32(k) + np.int32(127)) << np.int32(23))


# log1p(z) = 2 atanh(z / (2 + z)): for z in [0, 1], s = z / (2 + z) <= 1/3, and the odd series of atanh to s^15
# leaves a relative error under 2e-8, with no cancellation for tiny z (where 1 + z rounds to 1)
_S3, _S5, _S7 = np.float32(1 / 3), np.float32(1 / 5), np.float32(1 / 7)
_S9, _S11, _S13, _S15 = np.float32(1 / 9), np.float32(1 / 11), np.float32(1 / 13), np.float32(1 / 15)
_TWO = np.float32(2.0)
_ZERO = np.float32(0.0)
_LOG2E_32 = np.float32(_LOG2E)


@njit(inline="always", fastmath=True)
def _softplus_32(x):
    """softplus(x) = max(x, 0) + log1p(exp(-|x|)) for float32 x as branch-free arithmetic that LLVM vectorises
    (numba calls scalar libm for math.log1p and math.exp)."""
    z = _exp2_32(-abs(x) * _LOG2E_32)
    s = z / (_TWO + z)
    s2 = s * s
    series = ((((((_S15 * s2 + _S13) * s2 + _S11) * s2 + _S9) * s2 + _S7) * s2 + _S5) * s2 + _S3) * s2 + _ONE
    return max(x, _ZERO) + _TWO * s * series


def _softplus(x):  # typed by the overload below
    raise NotImplementedError


@overload(_softplus, inline="always")
def _softplus_overload(x):
    if x == types.float32:
        return lambda x: _softplus_32(x)
    return lambda x: max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _exp2(x):  # typed by the overload below
    raise NotImplementedError


@overload(_exp2, inline="always")
def _exp2_overload(x):
    if x == types.float32:
        return lambda x: _exp2_32(x)
    return lambda x: math.exp(x * _LN2)


# ---------------------------------------------------------------------------------------------------------------------
# kernels


def _signatures(fn_types):
    return [fn_types(types.float32), fn_types(types.float64)]


def _c(ft, nd):
    return types.Array(ft, nd, "C")  # the long inner loops need a known unit stride to vectorise


def _any(ft, nd):
    return types.Array(ft, nd, "A")  # read as scalars: any strides, so views pass without copies


_POS = types.Array(types.int64, 2, "A")  # positions (G, L): a broadcast arange passes as a view


@njit(inline="always")
def _block_rows(proj, d0, w, low_rank):
    """proj[d0:d0 + w, :] transposed, (R, w), for unit-stride loops over a block's channels ((0, w) when not
    ``low_rank``)."""
    rank = proj.shape[1] if low_rank else 0
    out = np.empty((rank, w), proj.dtype)
    for r in range(rank):
        for j in range(w):
            out[r, j] = proj[d0 + j, r]
    return out


@njit(inline="always")
def _delta_row(delta, low, proj_v, low_rank, bi, p, g, d0, bias_v, out):
    """out[j] = delta[bi, p, d0 + j] + bias_v[j], delta read or made from its low-rank factors (see
    :func:`_forward_kernel`)."""
    w = out.shape[0]
    if low_rank:
        for j in range(w):
            out[j] = 0
        for r in range(proj_v.shape[0]):
            lr = low[bi, p, g, r]
            for j in range(w):
                out[j] += lr * proj_v[r, j]
        for j in range(w):
            out[j] += bias_v[j]
    else:
        deltar = delta[bi, p, d0:d0 + w]
        for j in range(w):
            out[j] = deltar[j] + bias_v[j]


@njit(inline="always")
def _task(i, groups, blocks, dg, width):
    """(batch item, group, block, first channel, channels) of parallel task i."""
    per_batch = groups * blocks
    bi, r = i // per_batch, i % per_batch
    g, blk = r // blocks, r % blocks
    d0 = g * dg + blk * width
    return bi, g, blk, d0, min(width, (g + 1) * dg - d0)


@njit(
    _signatures(lambda ft: types.void(_c(ft, 3), _any(ft, 4), _any(ft, 2), types.boolean, _any(ft, 1), types.boolean,
                                      _c(ft, 3), _any(ft, 2), _any(ft, 4), _any(ft, 4), _any(ft, 1), _POS,
                                      types.boolean, _c(ft, 3), types.boolean, _c(ft, 4), _any(ft, 3),
                                      types.boolean, types.intp)),
    parallel=True, fastmath=True, cache=True,
)
def _forward_kernel(delta, low, proj, low_rank, bias, softplus, u, A, B, C, D, pos, u_shared, y, sum_groups,
                    checkpoints, last, save, width):
    """With p = pos[g, t], the position of step t of group g's sequence in the arrays, and
    dt = softplus(delta + bias) (delta + bias when not ``softplus``):
    y[b, p, d] = sum_n C[b, p, g, n] h_t[d, n] + D[d] u[b, p, d]; when ``save``,
    checkpoints[b, s, n, d] = the state entering step s * CHECKPOINT; last[b, d, n] = the final state.

    delta, y: (batch, L, D); with ``low_rank``, delta is not read (any
    shape) but made in the pass from its low-rank factors, delta[b, p, d] = sum_r low[b, p, g, r] proj[d, r] for d of
    group g (low: (batch, L, G, R), proj: (D, R)); bias: (D,); u: (batch, L, D), or (batch, L, D / G) shared by all
    groups when ``u_shared``; A: (D, N); B, C: (batch, L, G, N); pos: (G, L); width: channels per block.

    With ``sum_groups``, y is (batch, L, D / G), the sum of the G groups' outputs: the groups run in turn, each adding
    into y, so the G-times larger output and a pass to sum it are never made (nor, in the backward, its gradient).
    """
    bsz, length = y.shape[0], y.shape[1]
    dim = A.shape[0]
    groups, n_state = B.shape[2], B.shape[3]
    dg = dim // groups
    blocks = -(-dg // width)
    # with sum_groups one parallel pass per group, each adding into y
    passes = groups if sum_groups else 1
    per_pass = bsz * groups * blocks // passes
    for gi in range(passes):
        for i in prange(per_pass):
            ti = np.intp(i)  # prange's index may be unsigned, and unsigned with signed makes float64
            if sum_groups:
                ti = (ti // blocks) * groups * blocks + gi * blocks + ti % blocks
            bi, g, blk, d0, w = _task(ti, groups, blocks, dg, width)
            ft = y.dtype
            e = d0 + w
            u0 = d0 - g * dg if u_shared else d0
            y0 = d0 - g * dg if sum_groups else d0
            add = sum_groups and gi > 0
            a2 = np.empty((n_state, w), ft)  # A log2(e): exp(dt A) = 2^(dt a2)
            h = np.zeros((n_state, w), ft)
            d_skip = np.empty(w, ft)
            bias_v = np.empty(w, ft)
            dtr = np.empty(w, ft)
            yv = np.empty(w, ft)
            duv = np.empty(w, ft)
            proj_v = _block_rows(proj, d0, w, low_rank)
            for n in range(n_state):
                for j in range(w):
                    a2[n, j] = A[d0 + j, n] * _LOG2E
            for j in range(w):
                d_skip[j] = D[d0 + j]
                bias_v[j] = bias[d0 + j]
            for t in range(length):
                if save and t % CHECKPOINT == 0:
                    for n in range(n_state):
                        ck = checkpoints[bi, t // CHECKPOINT, n, d0:e]
                        for j in range(w):
                            ck[j] = h[n, j]
                p = pos[g, t]
                ur = u[bi, p, u0:u0 + w]
                _delta_row(delta, low, proj_v, low_rank, bi, p, g, d0, bias_v, dtr)
                if softplus:
                    for j in range(w):
                        dtr[j] = _softplus(dtr[j])
                for j in range(w):
                    yv[j] = d_skip[j] * ur[j]
                    duv[j] = dtr[j] * ur[j]
                for n in range(n_state):
                    bn, cn = B[bi, p, g, n], C[bi, p, g, n]
                    for j in range(w):
                        hv = _exp2(dtr[j] * a2[n, j]) * h[n, j] + duv[j] * bn
                        h[n, j] = hv
                        yv[j] += cn * hv
                yr = y[bi, p, y0:y0 + w]
                if add:
                    for j in range(w):
                        yr[j] += yv[j]
                else:
                    for j in range(w):
                        yr[j] = yv[j]
            for n in range(n_state):
                for j in range(w):
                    last[bi, d0 + j, n] = h[n, j]


@njit(
    _signatures(lambda ft: types.void(
        _c(ft, 3), _any(ft, 4), _any(ft, 2), types.boolean, _any(ft, 1), types.boolean, _c(ft, 3),
        _any(ft, 2), _any(ft, 4), _any(ft, 4), _any(ft, 1), _POS, types.boolean, _c(ft, 3), types.boolean,
        _c(ft, 4), _any(ft, 3), _c(ft, 3), _c(ft, 3), _c(ft, 3), _c(ft, 5), _c(ft, 5), _c(ft, 2), _c(ft, 2),
        _c(ft, 5), _c(ft, 3), types.intp)),
    parallel=True, fastmath=True, cache=True,
)
def _backward_kernel(delta, low, proj, low_rank, bias, softplus, u, A, B, C, D, pos, u_shared, gy, sum_groups,
                     checkpoints, g_last, g_u, g_delta, g_A, g_B, g_C, g_D, g_bias, g_low, g_proj, width):
    """Gradients of sum(gy * y) + sum(g_last * last) for y, last of :func:`_forward_kernel` (same layouts), with
    dt = softplus(delta + bias) (or delta + bias when not softplus); delta: (batch, L, D), or its low-rank factors
    (``low_rank``); gy: (batch, L, D), or (batch, L, D / G) for every group when the forward summed them
    (``sum_groups``).

    Writes g_u: (batch, L, D) (per group even when u is shared: the caller sums the groups); per batch item (the
    caller sums them) g_A: (batch, D, N), g_D and g_bias: (batch, D); per channel block (summed by the caller when
    there are several) g_B, g_C: (batch, L, G, blocks, N). The gradient of delta goes to g_delta: (batch, L, D), or
    with ``low_rank`` to its factors (g_delta is then not written): g_low (batch, L, G, blocks, R) per channel block
    and g_proj (batch, D, R) per batch item.
    """
    bsz, length, dim = g_u.shape
    groups, n_state = B.shape[2], B.shape[3]
    dg = dim // groups
    blocks = -(-dg // width)
    n_seg = -(-length // CHECKPOINT)
    for i in prange(bsz * groups * blocks):
        bi, g, blk, d0, w = _task(i, groups, blocks, dg, width)
        ft = g_u.dtype
        e = d0 + w
        u0 = d0 - g * dg if u_shared else d0
        y0 = d0 - g * dg if sum_groups else d0
        a2 = np.empty((n_state, w), ft)
        av = np.empty((n_state, w), ft)
        d_skip = np.empty(w, ft)
        bias_v = np.empty(w, ft)
        acc_d = np.zeros(w, ft)
        acc_bias = np.zeros(w, ft)
        proj_v = _block_rows(proj, d0, w, low_rank)
        rank = proj_v.shape[0]
        # in the arrays' precision: a Python float would turn float32 arithmetic into float64, and float64's 2^x is
        # libm's scalar exp (once a quarter of the float32 backward's time)
        minus_log2e = -ft.type(_LOG2E)
        acc_proj = np.zeros((rank, w), ft)
        for n in range(n_state):
            for j in range(w):
                av[n, j] = A[d0 + j, n]
                a2[n, j] = A[d0 + j, n] * _LOG2E
        for j in range(w):
            d_skip[j] = D[d0 + j]
            bias_v[j] = bias[d0 + j]
        dh = np.empty((n_state, w), ft)  # gradient reaching the state after the current step, times its decay
        ga = np.zeros((n_state, w), ft)
        for n in range(n_state):
            for j in range(w):
                dh[n, j] = g_last[bi, d0 + j, n]
        hs = np.empty((CHECKPOINT + 1, n_state, w), ft)  # hs[k + 1]: the state after step k of the segment
        decay = np.empty((CHECKPOINT, n_state, w), ft)
        xs = np.empty((CHECKPOINT, w), ft)  # the segment's delta + bias, and dt made from it
        dts = np.empty((CHECKPOINT, w), ft)
        gdt = np.empty(w, ft)
        gdu = np.empty(w, ft)
        # the segment's rows of u, gy, B and C, copied while the recompute walks forward in time (hardware
        # prefetchers follow that), so that the backward walk reads cache-resident buffers
        us = np.empty((CHECKPOINT, w), ft)
        gys = np.empty((CHECKPOINT, w), ft)
        bs = np.empty((CHECKPOINT, n_state), ft)
        cs = np.empty((CHECKPOINT, n_state), ft)
        for s in range(n_seg - 1, -1, -1):
            t0 = s * CHECKPOINT
            steps = min(CHECKPOINT, length - t0)
            for n in range(n_state):
                ck = checkpoints[bi, s, n, d0:e]
                for j in range(w):
                    hs[0, n, j] = ck[j]
            for k in range(steps):
                p = pos[g, t0 + k]
                ur, xk, dtr = us[k], xs[k], dts[k]
                urg, gyg = u[bi, p, u0:u0 + w], gy[bi, p, y0:y0 + w]
                gyk = gys[k]
                for j in range(w):
                    ur[j] = urg[j]
                    gyk[j] = gyg[j]
                for n in range(n_state):
                    bs[k, n] = B[bi, p, g, n]
                    cs[k, n] = C[bi, p, g, n]
                _delta_row(delta, low, proj_v, low_rank, bi, p, g, d0, bias_v, xk)
                if softplus:
                    for j in range(w):
                        dtr[j] = _softplus(xk[j])
                else:
                    for j in range(w):
                        dtr[j] = xk[j]
                for n in range(n_state):
                    bn = bs[k, n]
                    for j in range(w):
                        a = _exp2(dtr[j] * a2[n, j])
                        decay[k, n, j] = a
                        hs[k + 1, n, j] = a * hs[k, n, j] + dtr[j] * ur[j] * bn
            for k in range(steps - 1, -1, -1):
                p = pos[g, t0 + k]
                dtr, xk, ur, gyr = dts[k], xs[k], us[k], gys[k]
                for j in range(w):
                    gdt[j] = 0
                    gdu[j] = 0
                for n in range(n_state):
                    bn, cn = bs[k, n], cs[k, n]
                    sb = ft.type(0)
                    sc = ft.type(0)
                    for j in range(w):
                        dhv = dh[n, j] + gyr[j] * cn  # total gradient of h_t
                        sc += gyr[j] * hs[k + 1, n, j]
                        sb += dhv * dtr[j] * ur[j]
                        gdu[j] += dhv * bn
                        q = dhv * decay[k, n, j] * hs[k, n, j]  # gradient of x = dt A, since da/dx = a
                        ga[n, j] += q * dtr[j]
                        gdt[j] += q * av[n, j]
                        dh[n, j] = decay[k, n, j] * dhv
                    g_B[bi, p, g, blk, n] = sb
                    g_C[bi, p, g, blk, n] = sc
                g_ur = g_u[bi, p, d0:e]
                for j in range(w):
                    gd = gdt[j] + gdu[j] * ur[j]  # gradient of dt
                    if softplus:  # d softplus(x) / dx = sigmoid(x) = 1 / (1 + 2^(-x log2 e))
                        gd = gd / (_ONE + _exp2(xk[j] * minus_log2e))
                    gdt[j] = gd  # now the gradient of delta
                    acc_bias[j] += gd
                    acc_d[j] += gyr[j] * ur[j]
                    g_ur[j] = gdu[j] * dtr[j] + d_skip[j] * gyr[j]
                if low_rank:  # delta = low . proj: through both factors
                    for r in range(rank):
                        lr = low[bi, p, g, r]
                        sl = ft.type(0)
                        for j in range(w):
                            sl += gdt[j] * proj_v[r, j]
                            acc_proj[r, j] += gdt[j] * lr
                        g_low[bi, p, g, blk, r] = sl
                else:
                    g_deltar = g_delta[bi, p, d0:e]
                    for j in range(w):
                        g_deltar[j] = gdt[j]
        for n in range(n_state):
            for j in range(w):
                g_A[bi, d0 + j, n] = ga[n, j]
        for j in range(w):
            g_D[bi, d0 + j] = acc_d[j]
            g_bias[bi, d0 + j] = acc_bias[j]
        for r in range(rank):
            for j in range(w):
                g_proj[bi, d0 + j, r] = acc_proj[r, j]


# ---------------------------------------------------------------------------------------------------------------------
# entry points on NumPy arrays (the torch wrapper passes tensors' memory through .numpy(), no copies)


#: Below this many (step x channel x state) updates a scan runs on one thread: waking the others costs more (from
#: tens of microseconds on an idle machine to milliseconds on a loaded one) than the work.
PARALLEL_MIN_WORK = 1 << 18


def block_layout(dim: int, groups: int) -> tuple[int, int]:
    """(blocks per group, channels per block): groups split into equal blocks of at most ``BLOCK`` channels."""
    dg = dim // groups
    blocks = -(-dg // BLOCK)
    return blocks, -(-dg // blocks)


def set_threads(count: int, work: int) -> None:
    """Threads of the kernels' parallel loops for a scan of ``work`` updates: ``count`` (torch's setting), capped by
    ``$RSRESTORE_SCAN_THREADS`` and numba's pool size; one for small scans."""
    cap = os.environ.get(THREADS_ENV)
    if cap:
        count = min(count, max(1, int(cap)))
    count = count if work >= PARALLEL_MIN_WORK else 1
    numba.set_num_threads(max(1, min(count, numba.config.NUMBA_NUM_THREADS)))


def _delta_args(delta, proj):
    """The kernels' (delta, low, proj, low_rank) from ``delta``, which is the low-rank factor when ``proj`` is given."""
    if proj is None:
        dummy = np.zeros((1, 1, 1, 1), delta.dtype)
        return delta, dummy, dummy[0, 0], False
    return np.zeros((1, 1, 1), delta.dtype), delta, proj, True


def summed_block_width(dim: int, groups: int) -> int:
    """Channels per block for a forward with ``sum_groups``, whose parallel tasks are (batch item, block) only: an
    even number of blocks where they stay at least 16 channels wide, so that two threads share a single image's blocks
    evenly (RSDehamba's 144 channels per group: 4 blocks of 36, not 3 of 48, one thread idle a third of the time;
    5-7 % of a paper-size forward). It depends on the shapes alone: a channel's arithmetic (vector body or remainder
    loop) follows the block width, so a width that followed the thread count or the batch would change the result."""
    dg = dim // groups
    blocks = block_layout(dim, groups)[0]
    if blocks % 2 and dg // (blocks + 1) >= 16:
        blocks += 1
    return -(-dg // blocks)


def forward(delta, proj, bias, softplus: bool, u, A, B, C, D, pos, u_shared: bool, y, checkpoints, last,
            save: bool, sum_groups: bool = False) -> None:
    """See :func:`_forward_kernel`; delta: (batch, L, D), or with ``proj`` (D, R) its low-rank factor
    (batch, L, G, R); checkpoints: (batch, ceil(L / CHECKPOINT), N, D), of any shape when not save."""
    dim, groups = A.shape[0], B.shape[2]
    width = summed_block_width(dim, groups) if sum_groups else block_layout(dim, groups)[1]
    _forward_kernel(*_delta_args(delta, proj), bias, softplus, u, A, B, C, D, pos, u_shared, y, sum_groups,
                    checkpoints, last, save, width)


def backward(delta, proj, bias, softplus: bool, u, A, B, C, D, pos, u_shared: bool, gy, sum_groups: bool,
             checkpoints, g_last, g_u, g_delta, g_A, g_B, g_C, g_D, g_bias, g_low=None, g_proj=None) -> None:
    """See :func:`_backward_kernel`; delta and proj as in :func:`forward`; g_delta is None with proj, g_low and
    g_proj None without."""
    dummy = np.zeros((1, 1, 1, 1, 1), g_u.dtype)
    g_delta = dummy[0, 0] if g_delta is None else g_delta
    g_low = dummy if g_low is None else g_low
    g_proj = dummy[0, 0] if g_proj is None else g_proj
    _backward_kernel(*_delta_args(delta, proj), bias, softplus, u, A, B, C, D, pos, u_shared, gy, sum_groups,
                     checkpoints, g_last, g_u, g_delta, g_A, g_B, g_C, g_D, g_bias, g_low, g_proj,
                     block_layout(g_u.shape[2], B.shape[2])[1])
