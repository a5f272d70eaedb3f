"""Selective scan (the S6 layer of Mamba), with a reference and fast CPU implementations.

Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023, Sec. 3.2 and Algorithm 2.
With the zero-order hold for A (Eq. 4) and the simplified Euler step for B used by the reference code, each channel d
and state n follows

    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,        y_t = C_t . h_t + D u_t,          (Eq. 2a-2b)

and, when a gate z is given, the output is y * silu(z). The argument shapes and options are those of
``mamba_ssm.selective_scan_fn``:

    u, delta: (batch, D, L)      A: (D, N)      B, C: (batch, G, N, L) or (batch, N, L)      D: (D,)
    z: (batch, D, L)             delta_bias: (D,)

where the D channels are split into G equal groups that share B and C; a VMamba-style cross scan puts its K
directions in the G = K groups (D = K * d_inner). ``delta_bias`` is added to delta and ``delta_softplus`` applies
softplus before the scan.

Implementations (all numerically the same recurrence):

* :func:`selective_scan_ref` -- the recurrence written out step by step and differentiated by autograd; slow, only
  to check the others.
* :func:`selective_scan_loop` -- autograd over a Python loop of ``torch.unbind`` time slices (indexing ``a[:, t]``
  would give a backward quadratic in L; unbind does not).
* :func:`selective_scan_chunked` -- a custom autograd function with a hand-written backward. Time is cut into
  chunks of T steps and the recurrence runs over the T steps of many chunks at once (one ``addcmul`` per step on a
  chunks x D x N slice, so Python's per-call cost is paid about T times rather than L times). A short sequential
  pass over chunk boundaries joins the chunks through the chunk decay ``exp(A * sum(delta))``, whose exponent is
  never positive, so nothing overflows for any delta or chunk length (a closed form with ``exp(-cumsum(delta A))``
  inside chunks would, for large steps). The forward keeps only the states entering each chunk (L / T states); the
  backward recomputes the states one group of chunks at a time and runs the transposed recurrence the same way, so
  its working memory is three buffers of ``GROUP_ELEMENTS`` values whatever L. Measured on a 2-core Xeon, one
  thread, D = 4 x 48, N = 16 (``benchmarks/bench_scan.py``): forward+backward 5-6x faster than mambapy's parallel
  scan and than the unbind loop at L = 64^2 and 128^2, and 1/100 of their saved memory.
* :func:`selective_scan_numba` -- fused CPU kernels compiled by numba (:mod:`.scan_numba`): exp(delta A) computed on
  the fly, a task's (N, channels) state in a small local array, no (L, D, N) tensor; a fused backward that recomputes
  states from checkpoints every ``scan_numba.CHECKPOINT`` steps; parallel (``prange``) over (batch, group, channel
  block) on ``torch.get_num_threads()`` threads, at most ``$RSRESTORE_SCAN_THREADS``. The default on the CPU:
  forward+backward at L = 128^2 5.3x faster than the chunked scan on two threads (wall) and 3.2x on one, on a quiet
  2-core AMD EPYC (``benchmarks/results/scan.json``). numba is imported (and the kernels compiled, or loaded from
  numba's cache) on first use, never at import time. :func:`cross_scan_numba` runs G scans of one sequence taken in G
  orders (VMamba's and RSDehamba's four-direction scan) without reordered copies; it takes the step sizes as their
  low-rank factors (Mamba's dt_proj, made in the kernels) and can sum the G outputs as they are made.
* :func:`selective_scan_cuda` -- the CUDA kernel of ``mamba_ssm``, imported on first use, never at import time.

:func:`selective_scan` picks the best available one for the inputs' device.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_loop",
    "selective_scan_chunked",
    "selective_scan_numba",
    "selective_scan_cuda",
    "cuda_kernel_available",
    "numba_kernel_available",
    "resolve_impl",
    "cross_scan_numba",
    "cross_scan_positions",
    "cross_scan_reference",
    "IMPLEMENTATIONS",
]

#: Longest default chunk of the chunked scan (steps). Measured on a 2-core Xeon, one thread, D = 192, N = 16: 32 is
#: 10-25 % faster than 16, 64 or 128 at L = 4096 and 16384; short sequences use shorter chunks (``_chunk_len``).
DEFAULT_CHUNK = 32
#: Elements of one full-size (time x channel x state) work buffer of the chunked scan; two are alive in the forward
#: pass, three in the backward. 2**20 float32 values = 4 MiB each; the fastest of 2**19 .. 2**23 measured.
GROUP_ELEMENTS = 1 << 20
#: Most intra-op threads the chunked scan uses (None: whatever torch is set to). Its work is thousands of operations
#: on slices of 10^4..10^6 values; on a shared 2-core machine each parallel region then waits on a busy core, and
#: two threads measured 5-10x slower than one (benchmarks/bench_scan.py --threads 2), so it runs on one by default.
MAX_THREADS: int | None = 1


# --------------------------------------------------------------------------------------------------------------------
# argument checks


def _check(u, delta, A, B, C, D, z, delta_bias) -> tuple[Tensor, Tensor]:
    """Validate shapes; return B and C as (batch, G, N, L)."""
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, D, L), got shape {tuple(u.shape)}")
    bsz, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (D, N) with D = {dim}, got {tuple(A.shape)}")
    n = A.shape[1]
    out = []
    for name, m in (("B", B), ("C", C)):
        if m.dim() == 3:
            m = m.unsqueeze(1)
        if m.dim() != 4 or m.shape[0] != bsz or m.shape[2] != n or m.shape[3] != length:
            raise ValueError(
                f"{name} must be (batch, G, N, L) or (batch, N, L) with batch={bsz}, N={n}, L={length}; "
                f"got {tuple(m.shape)}"
            )
        if dim % m.shape[1] != 0:
            raise ValueError(f"{name} has {m.shape[1]} groups, which do not divide D = {dim}")
        out.append(m)
    if out[0].shape[1] != out[1].shape[1]:
        raise ValueError(f"B and C must have the same number of groups, got {out[0].shape[1]} and {out[1].shape[1]}")
    if D is not None and D.shape != (dim,):
        raise ValueError(f"D must be ({dim},), got {tuple(D.shape)}")
    if delta_bias is not None and delta_bias.shape != (dim,):
        raise ValueError(f"delta_bias must be ({dim},), got {tuple(delta_bias.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    if length == 0:
        raise ValueError("the sequence length L must be at least 1")
    return out[0], out[1]


def _compute_dtype(x: Tensor) -> torch.dtype:
    # half-precision inputs are scanned in float32, as the CUDA kernel does
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------------------------------
# reference


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Eq. 2a-2b step by step (Mamba, Algorithm 2), differentiated by autograd. For tests only: slow."""
    B, C = _check(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    ct = _compute_dtype(u)
    u, delta, A, B, C = (t.to(ct) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    bsz, dim, length = u.shape
    rep = dim // B.shape[1]
    h = u.new_zeros(bsz, dim, A.shape[1])
    ys = []
    # unbind, not indexing: the backward of x[..., t] would rebuild a full-size gradient at every step
    for d_t, u_t, B_t, C_t in zip(delta.unbind(-1), u.unbind(-1), B.unbind(-1), C.unbind(-1)):
        a_t = torch.exp(d_t[:, :, None] * A)  # zero-order hold of A (Eq. 4)
        h = a_t * h + (d_t * u_t)[:, :, None] * B_t.repeat_interleave(rep, dim=1)
        ys.append((h * C_t.repeat_interleave(rep, dim=1)).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(ct)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(ct))
    y = y.to(dtype_in)
    return (y, h) if return_last_state else y


# --------------------------------------------------------------------------------------------------------------------
# autograd loop over unbind slices


def selective_scan_loop(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Eq. 2a-2b with the discretised a_t, b_t computed for all t at once, then one ``addcmul`` per step.

    Time-major layout: ``torch.unbind`` yields contiguous (batch, D, N) slices, and its backward is a single stack,
    so the backward stays linear in L. Autograd keeps every state, so memory is O(L * D * N).
    """
    B, C = _check(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    ct = _compute_dtype(u)
    u, delta, A, B, C = (t.to(ct) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    bsz, dim, length = u.shape
    g, n = B.shape[1], A.shape[1]
    dt = delta.permute(2, 0, 1).reshape(length, bsz, g, dim // g, 1)
    du = (delta * u).permute(2, 0, 1).reshape(length, bsz, g, dim // g, 1)
    Bt = B.permute(3, 0, 1, 2).unsqueeze(3)  # (L, batch, G, 1, N)
    Ct = C.permute(3, 0, 1, 2).unsqueeze(3)
    a = torch.exp(dt * A.reshape(g, dim // g, n))
    b = du * Bt
    h = a.new_zeros(a.shape[1:])
    hs = []
    for a_t, b_t in zip(a.unbind(0), b.unbind(0)):
        h = torch.addcmul(b_t, a_t, h)
        hs.append(h)
    y = (torch.stack(hs, 0) * Ct).sum(-1)  # (L, batch, G, Dg)
    y = y.reshape(length, bsz, dim).permute(1, 2, 0)
    if D is not None:
        y = y + D.to(ct)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(ct))
    y = y.to(dtype_in)
    return (y, h.reshape(bsz, dim, n)) if return_last_state else y


# --------------------------------------------------------------------------------------------------------------------
# chunked scan


def _chunk_len(length: int, chunk: int | None) -> int:
    if chunk is None:
        # ~sqrt(L / 2) balances the per-step loop (T op calls) against the chunk boundary loop (L / T calls);
        # above DEFAULT_CHUNK, longer chunks lose more to cache misses than they save in calls
        chunk = min(DEFAULT_CHUNK, max(4, 1 << round(math.log2(math.sqrt(length / 2) + 1))))
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return min(chunk, length)


def _time_major(x: Tensor, lp: int) -> Tensor:
    """(batch, G, X, L) -> (batch, lp, G, X), contiguous and zero-padded in time.

    A free view when x is already a time-major view (what the vision models pass); one transposing copy otherwise.
    Padded steps have dt = 0 (a = 1) and B = C = 0 (b = 0): the state passes through them unchanged.
    """
    b, g, k, length = x.shape
    xt = x.permute(0, 3, 1, 2)
    if lp == length:
        return xt.contiguous()
    out = x.new_zeros(b, lp, g, k)
    out[:, :length] = xt
    return out


def _groups(nc: int, per_chunk: int) -> list[tuple[int, int]]:
    """Chunk ranges of about GROUP_ELEMENTS state values each, of near-equal size."""
    most = max(1, GROUP_ELEMENTS // max(1, per_chunk))
    count = -(-nc // most)
    step = -(-nc // count)
    return [(c, min(nc, c + step)) for c in range(0, nc, step)]


@contextlib.contextmanager
def _thread_limit() -> Iterator[None]:
    before = torch.get_num_threads()
    limit = before if MAX_THREADS is None else max(1, min(before, MAX_THREADS))
    if limit != before:
        torch.set_num_threads(limit)
    try:
        yield
    finally:
        if limit != before:
            torch.set_num_threads(before)


class _Workspace:
    """Full-size buffers reused by every chunk group: fresh large allocations cost page faults on each call."""

    def __init__(self, count: int, numel: int, like: Tensor):
        self.bufs = [like.new_empty(numel) for _ in range(count)]

    def views(self, shape: tuple[int, ...]) -> list[Tensor]:
        numel = math.prod(shape)
        return [b[:numel].view(shape) for b in self.bufs]


def _discretise(a: Tensor, b: Tensor, dt: Tensor, du: Tensor, Bm: Tensor, A4: Tensor) -> None:
    """a = exp(dt A) (zero-order hold, Eq. 4) and b = (dt u) B, in place into (batch, chunks, T, G, Dg, N) buffers."""
    torch.mul(dt.unsqueeze(-1), A4, out=a).exp_()
    torch.mul(du.unsqueeze(-1), Bm.unsqueeze(-2), out=b)


def _states(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """h_t = a_t h_{t-1} + b_t (Eq. 2a) for every step (dim 2) of every chunk, in place over b; h_{-1} = h0."""
    # unbind gives all step views in one call; indexing b[:, :, t] in the loop costs more than the arithmetic
    a_t, b_t = a.unbind(2), b.unbind(2)
    b_t[0].addcmul_(a_t[0], h0)
    for t in range(1, len(a_t)):
        b_t[t].addcmul_(a_t[t], b_t[t - 1])
    return b


def _contract_n(x: Tensor, v: Tensor) -> Tensor:
    """sum_n x[..., d, n] v[..., n]: (..., Dg, N), (..., N) -> (..., Dg), as one batched matrix product."""
    dg, n = x.shape[-2:]
    # (1 x N) @ (N x Dg) reads x in its own layout and is faster than (Dg x N) @ (N x 1) here
    return torch.bmm(v.reshape(-1, 1, n), x.reshape(-1, dg, n).transpose(1, 2)).view(x.shape[:-1])


def _contract_d(w: Tensor, x: Tensor) -> Tensor:
    """sum_d w[..., d] x[..., d, n]: (..., Dg), (..., Dg, N) -> (..., N)."""
    dg, n = x.shape[-2:]
    return torch.bmm(w.reshape(-1, 1, dg), x.reshape(-1, dg, n)).view(x.shape[:-2] + (n,))


def _prepare(u, delta, A, B, C, D, delta_bias, delta_softplus):
    ct = _compute_dtype(u)
    uc, dc, Ac, Bc, Cc = (t.to(ct) for t in (u, delta, A, B, C))
    pre = dc + delta_bias.to(ct)[:, None] if delta_bias is not None else dc
    dt = F.softplus(pre) if delta_softplus else pre
    return ct, uc, pre, dt, Ac, Bc, Cc


def _skip_and_gate(y: Tensor, D: Tensor | None, uc: Tensor, z: Tensor | None) -> tuple[Tensor, Tensor]:
    """y + D u (Eq. 2b's skip, in place over the scan's own output y), then the gate: returns (y, y * silu(z))."""
    if D is not None:
        y = y.addcmul_(D.to(y.dtype)[:, None], uc)
    return y, (y * F.silu(z.to(y.dtype)) if z is not None else y)


def _gate_backward(g_out: Tensor, z: Tensor | None, y: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Gradients of out = y * silu(z) for y and z (g_out, None without a gate)."""
    if z is None:
        return g_out, None
    zc = z.to(g_out.dtype)
    sz = torch.sigmoid(zc)
    return g_out * zc * sz, (g_out * y * sz * (1 + zc * (1 - sz))).to(z.dtype)


def _input_grads(g_u, g_dt, gy, uc, pre, D, delta_bias, delta_softplus):
    """From the scan's gradients for u and the step dt, those of u, delta (through bias and softplus), D and
    delta_bias. g_u and g_dt are the caller's own buffers and are updated in place."""
    if D is not None:
        g_u = g_u.addcmul_(D.to(gy.dtype)[:, None], gy)
    g_D = (gy * uc).sum((0, 2)).to(D.dtype) if D is not None else None
    g_pre = g_dt.mul_(torch.sigmoid(pre)) if delta_softplus else g_dt
    g_bias = g_pre.sum((0, 2)).to(delta_bias.dtype) if delta_bias is not None else None
    return g_u, g_pre, g_D, g_bias


class _ChunkedScan(torch.autograd.Function):
    """Layout inside: time-major (batch, L, G, X) inputs; (batch, chunks, T, G, Dg, N) state buffers."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk):
        ct, uc, pre, dt, Ac, Bc, Cc = _prepare(u, delta, A, B, C, D, delta_bias, delta_softplus)
        bsz, dim, length = u.shape
        g, n = B.shape[1], A.shape[1]
        dg = dim // g
        T = _chunk_len(length, chunk)
        nc = -(-length // T)
        lp = nc * T
        A4 = Ac.reshape(g, dg, n)
        dt_c = _time_major(dt.view(bsz, g, dg, length), lp).view(bsz, nc, T, g, dg)
        du_c = _time_major((dt * uc).view(bsz, g, dg, length), lp).view(bsz, nc, T, g, dg)
        B_c = _time_major(Bc, lp).view(bsz, nc, T, g, n)
        C_c = _time_major(Cc, lp).view(bsz, nc, T, g, n)

        groups = _groups(nc, T * bsz * dim * n)
        ws = _Workspace(2, bsz * (groups[0][1] - groups[0][0]) * T * dim * n, dt)
        # h_start[:, c]: the state entering chunk c (h_start[:, nc] is the last state); all that the backward keeps
        h_start = dt.new_empty(bsz, nc + 1, g, dg, n)
        h_start[:, 0] = 0
        y_c = dt.new_empty(bsz, nc, T, g, dg)
        for c0, c1 in groups:
            sl = slice(c0, c1)
            a, h = ws.views((bsz, c1 - c0, T, g, dg, n))
            _discretise(a, h, dt_c[:, sl], du_c[:, sl], B_c[:, sl], A4)
            # chunk-local end states from a zero start, all chunks of the group at once
            a_t, h_t = a.unbind(2), h.unbind(2)
            s = h_t[0].clone()
            for t in range(1, T):
                torch.addcmul(h_t[t], a_t[t], s, out=s)
            decay = torch.exp(dt_c[:, sl].sum(2).unsqueeze(-1) * A4)  # whole-chunk decay, exponent <= 0
            s_c, decay_c, hs_c = s.unbind(1), decay.unbind(1), h_start[:, c0 : c1 + 1].unbind(1)
            for j in range(c1 - c0):
                torch.addcmul(s_c[j], decay_c[j], hs_c[j], out=hs_c[j + 1])
            _states(a, h, h_start[:, c0:c1])
            y_c[:, sl] = _contract_n(h, C_c[:, sl])
        del ws

        y, out = _skip_and_gate(y_c.view(bsz, lp, dim)[:, :length].transpose(1, 2), D, uc, z)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, h_start, y if z is not None else None)
        ctx.delta_softplus = delta_softplus
        ctx.T = T
        last = h_start[:, nc].reshape(bsz, dim, n).clone()
        if not return_last_state:
            ctx.mark_non_differentiable(last)
        return out.to(u.dtype), last

    @staticmethod
    def backward(ctx, g_out, g_last):
        with _thread_limit():
            return _ChunkedScan._backward(ctx, g_out, g_last)

    @staticmethod
    def _backward(ctx, g_out, g_last):
        u, delta, A, B, C, D, z, delta_bias, h_start, y = ctx.saved_tensors
        ct, uc, pre, dt, Ac, Bc, Cc = _prepare(u, delta, A, B, C, D, delta_bias, ctx.delta_softplus)
        T = ctx.T
        bsz, dim, length = u.shape
        g, n = B.shape[1], A.shape[1]
        dg = dim // g
        nc = h_start.shape[1] - 1
        lp = nc * T
        A4 = Ac.reshape(g, dg, n)
        gy, g_z = _gate_backward(g_out.to(ct), z, y)
        dt_c = _time_major(dt.view(bsz, g, dg, length), lp).view(bsz, nc, T, g, dg)
        du_c = _time_major((dt * uc).view(bsz, g, dg, length), lp).view(bsz, nc, T, g, dg)
        gy_c = _time_major(gy.reshape(bsz, g, dg, length), lp).view(bsz, nc, T, g, dg)
        B_c = _time_major(Bc, lp).view(bsz, nc, T, g, n)
        C_c = _time_major(Cc, lp).view(bsz, nc, T, g, n)

        g_dt_c = torch.empty_like(dt_c)  # through a = exp(dt A)
        g_du_c = torch.empty_like(dt_c)  # through b = (dt u) B
        g_B_c = torch.empty_like(B_c)
        g_C_c = torch.empty_like(C_c)
        g_A = torch.zeros_like(A4)
        groups = _groups(nc, T * bsz * dim * n)
        ws = _Workspace(3, bsz * (groups[0][1] - groups[0][0]) * T * dim * n, dt)
        # what flows back into the end of the chunk before the current group: a_s dh_s at the group's first step s
        carry = g_last.to(ct).reshape(bsz, g, dg, n) if g_last is not None else dt.new_zeros(bsz, g, dg, n)
        for c0, c1 in reversed(groups):
            sl, m = slice(c0, c1), c1 - c0
            dtg, dug, gyg, Bg, Cg = dt_c[:, sl], du_c[:, sl], gy_c[:, sl], B_c[:, sl], C_c[:, sl]
            a, h, dh = ws.views((bsz, m, T, g, dg, n))
            _discretise(a, h, dtg, dug, Bg, A4)
            _states(a, h, h_start[:, c0:c1])
            g_C_c[:, sl] = _contract_d(gyg, h)
            torch.mul(gyg.unsqueeze(-1), Cg.unsqueeze(-2), out=dh)  # r_t = d y_t / d h_t
            # Eq. 2a transposed: dh_t = r_t + a_{t+1} dh_{t+1}. First the chunk-local dh at each chunk's first step
            # from a zero carry, then the carries across chunks, then dh at every step.
            a_t, dh_t = a.unbind(2), dh.unbind(2)
            e = dh_t[T - 1].clone()
            for t in range(T - 2, -1, -1):
                torch.addcmul(dh_t[t], a_t[t + 1], e, out=e)
            e.mul_(a_t[0])
            decay = torch.exp(dtg.sum(2).unsqueeze(-1) * A4)
            carries = e.new_empty((bsz, m + 1) + e.shape[2:])  # carries[:, j + 1] enters the end of chunk c0 + j
            carries[:, m] = carry
            e_c, decay_c, car_c = e.unbind(1), decay.unbind(1), carries.unbind(1)
            for j in range(m - 1, -1, -1):
                torch.addcmul(e_c[j], decay_c[j], car_c[j + 1], out=car_c[j])
            carry = carries[:, 0]
            dh_t[T - 1].add_(carries[:, 1:])
            for t in range(T - 2, -1, -1):
                dh_t[t].addcmul_(a_t[t + 1], dh_t[t + 1])
            g_du_c[:, sl] = _contract_n(dh, Bg)
            g_B_c[:, sl] = _contract_d(dug, dh)
            # q_t = dL/d(dt_t A) = dh_t a_t h_{t-1}, written over a; dh's buffer then holds q dt
            q = a.mul_(dh)
            q[:, :, 1:].mul_(h[:, :, :-1])
            q[:, :, 0].mul_(h_start[:, c0:c1])
            g_A.add_(torch.mul(q, dtg.unsqueeze(-1), out=dh).sum((0, 1, 2)))
            g_dt_c[:, sl] = q.mul_(A4).sum(-1)
        del ws

        def back(x: Tensor) -> Tensor:  # (batch, nc, T, G, X) -> (batch, G, X, length)
            return x.view(bsz, lp, x.shape[-2], x.shape[-1])[:, :length].permute(0, 2, 3, 1)

        g_du = back(g_du_c).reshape(bsz, dim, length)
        g_u, g_pre, g_D, g_bias = _input_grads(
            g_du * dt, back(g_dt_c).reshape(bsz, dim, length) + g_du * uc, gy, uc, pre, D, delta_bias,
            ctx.delta_softplus,
        )
        return (
            g_u.to(u.dtype),
            g_pre.to(delta.dtype),
            g_A.reshape(dim, n).to(A.dtype),
            back(g_B_c).to(B.dtype),
            back(g_C_c).to(C.dtype),
            g_D,
            g_z,
            g_bias,
            None,
            None,
            None,
        )


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    chunk: int | None = None,
):
    """Eq. 2a-2b by chunks with a hand-written backward; see the module docstring. ``chunk``: steps per chunk."""
    B4, C4 = _check(u, delta, A, B, C, D, z, delta_bias)
    with _thread_limit():
        y, last = _ChunkedScan.apply(u, delta, A, B4, C4, D, z, delta_bias, delta_softplus, return_last_state, chunk)
    return (y, last) if return_last_state else y


# --------------------------------------------------------------------------------------------------------------------
# fused CPU kernel (numba)


@functools.lru_cache(maxsize=1)
def _numba_module():
    threads = torch.get_num_threads()
    try:  # imported (and compiled, or loaded from numba's cache) on first use, never at import time
        from . import scan_numba

        # Starting numba's OpenMP pool sets the calling thread's OpenMP thread count to the pool's size, and once
        # torch has read its own count, torch's with it: a torch.set_num_threads(1) made before (a one-core
        # training run) was undone, and the process ran on every core. Start the pool here and restore the count.
        scan_numba.numba.get_num_threads()
    except Exception:
        return None
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return scan_numba


def numba_kernel_available() -> bool:
    """True when numba imports and the fused CPU kernels compile."""
    return _numba_module() is not None


def _as_numpy(t: Tensor | None):
    return None if t is None else t.detach().numpy()


class _NumbaScan(torch.autograd.Function):
    """The scan, the D skip and their gradients (softplus's too) in :mod:`.scan_numba`, on time-major tensors:
    u (batch, L, Du), delta (batch, L, D), B and C (batch, L, G, N), all in the compute dtype; y (batch, L, D).
    With ``proj`` (D, R), delta is given by its low-rank factor (batch, L, G, R) and made inside the kernels:
    delta[..., g * D / G + d] = delta_low[..., g, :] . proj[g * D / G + d].

    Step t of group g's sequence sits at position ``positions[g, t]`` of the arrays, and with ``u_shared`` the G
    groups read the same (batch, L, D / G) input u. The kernels compute dt = softplus(delta + bias) as they go; the
    forward keeps the state every ``CHECKPOINT`` steps (nothing when no input needs a gradient), and the backward
    makes dt again, a segment at a time.
    """

    @staticmethod
    def forward(ctx, u, delta, proj, A, B, C, D, delta_bias, delta_softplus, positions, u_shared,
                last_differentiable, grad_enabled, sum_groups=False):
        kernels = _numba_module()
        bsz, length = delta.shape[:2]
        dim, n = A.shape
        Dc = D if D is not None else delta.new_zeros(dim)
        bias = delta_bias if delta_bias is not None else delta.new_zeros(dim)
        # needs_input_grad says True for a parameter even under no_grad or inference_mode; the caller's grad mode
        # (grad is always off in here) tells whether a backward can come
        save = grad_enabled and any(ctx.needs_input_grad)
        y = delta.new_empty(bsz, length, dim // B.shape[2] if sum_groups else dim)
        checkpoints = delta.new_empty((bsz, -(-length // kernels.CHECKPOINT), n, dim) if save else (1, 1, 1, 1))
        last = delta.new_empty(bsz, dim, n)
        kernels.set_threads(torch.get_num_threads(), bsz * dim * length * n)
        kernels.forward(_as_numpy(delta), _as_numpy(proj), _as_numpy(bias), delta_softplus,
                        *map(_as_numpy, (u, A, B, C, Dc, positions)), u_shared,
                        *map(_as_numpy, (y, checkpoints, last)), save, sum_groups)
        if save:
            ctx.save_for_backward(u, delta, proj, A, B, C, Dc, bias, checkpoints, positions)
        ctx.delta_softplus, ctx.u_shared, ctx.sum_groups = delta_softplus, u_shared, sum_groups
        ctx.has_D, ctx.has_bias = D is not None, delta_bias is not None
        if not last_differentiable:
            ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, g_y, g_last):
        kernels = _numba_module()
        u, delta, proj, A, B, C, Dc, bias, checkpoints, positions = ctx.saved_tensors
        bsz, length = u.shape[:2]
        dim, n = A.shape
        g = B.shape[2]
        gy = g_y.contiguous()
        g_last = g_last.contiguous() if g_last is not None else u.new_zeros(bsz, dim, n)
        g_u = u.new_empty(bsz, length, dim)  # per group even when u is shared
        blocks = kernels.block_layout(dim, g)[0]
        if proj is not None:  # the gradients of delta's low-rank factors, summed over blocks and batch items below
            g_delta, g_low, g_proj = None, u.new_empty(bsz, length, g, blocks, proj.shape[1]), u.new_empty(
                bsz, dim, proj.shape[1])
        else:
            g_delta, g_low, g_proj = torch.empty_like(g_u), None, None
        g_A = u.new_empty(bsz, dim, n)  # one term per batch item, as g_D and g_bias
        g_D, g_bias = u.new_empty(bsz, dim), u.new_empty(bsz, dim)
        g_B = u.new_empty(bsz, length, g, blocks, n)  # one term per channel block
        g_C = torch.empty_like(g_B)
        kernels.set_threads(torch.get_num_threads(), bsz * dim * length * n)
        kernels.backward(
            _as_numpy(delta), _as_numpy(proj), _as_numpy(bias), ctx.delta_softplus,
            *map(_as_numpy, (u, A, B, C, Dc, positions)), ctx.u_shared, _as_numpy(gy), ctx.sum_groups,
            *map(_as_numpy, (checkpoints, g_last, g_u, g_delta, g_A, g_B, g_C, g_D, g_bias, g_low, g_proj)),
        )

        def per_group(x: Tensor) -> Tensor:  # (batch, L, G, blocks, N) -> (batch, L, G, N)
            return x[:, :, :, 0] if blocks == 1 else x.sum(3)

        if ctx.u_shared:
            g_u = g_u.view(bsz, length, g, dim // g).sum(2)
        if proj is not None:
            g_delta, g_proj = per_group(g_low), g_proj.sum(0)
        return (
            g_u, g_delta, g_proj, g_A.sum(0), per_group(g_B), per_group(g_C),
            g_D.sum(0) if ctx.has_D else None, g_bias.sum(0) if ctx.has_bias else None, None, None, None, None, None,
            None,
        )


def _numba_ready(u: Tensor) -> None:
    if _numba_module() is None:
        raise RuntimeError("numba is not installed or does not import; pip install numba")
    if u.device.type != "cpu":
        raise RuntimeError(f"the numba selective scan runs on CPU tensors, got {u.device}")


def selective_scan_numba(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Eq. 2a-2b by the fused numba kernels of :mod:`.scan_numba` (CPU tensors); raises RuntimeError when numba
    is not usable. Runs on ``torch.get_num_threads()`` threads (at most ``$RSRESTORE_SCAN_THREADS``). (batch, D, L)
    views of time-major (batch, L, D) tensors, as the vision models pass, are used without copies."""
    B4, C4 = _check(u, delta, A, B, C, D, z, delta_bias)
    _numba_ready(u)
    ct = _compute_dtype(u)
    bsz, dim, length = u.shape
    g = B4.shape[1]
    positions = torch.arange(length).expand(g, length)
    y, last = _NumbaScan.apply(
        u.transpose(1, 2).to(ct).contiguous(), delta.transpose(1, 2).to(ct).contiguous(), None, A.to(ct),
        B4.to(ct).permute(0, 3, 1, 2), C4.to(ct).permute(0, 3, 1, 2), D.to(ct) if D is not None else None,
        delta_bias.to(ct) if delta_bias is not None else None, delta_softplus, positions, False, return_last_state,
        torch.is_grad_enabled(),
    )
    y = y.transpose(1, 2)
    if z is not None:
        y = y * F.silu(z.to(ct))
    y = y.to(u.dtype)
    return (y, last) if return_last_state else y


def cross_scan_positions(h: int, w: int) -> Tensor:
    """(4, h * w) positions in a row-major (h, w) map of the steps of its four scans: row-major, column-major, and
    both reversed (the unfoldings of VMamba's cross scan and RSDehamba's DSM)."""
    rows = torch.arange(h * w)
    cols = rows.view(h, w).t().reshape(-1)
    return torch.stack([rows, cols, rows.flip(0), cols.flip(0)])


def cross_scan_numba(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    delta_bias: Tensor | None,
    positions: Tensor,
    delta_softplus: bool = True,
    delta_proj: Tensor | None = None,
    sum_groups: bool = False,
) -> Tensor:
    """G selective scans of one sequence u taken in G orders, by the numba kernels, without reordered copies.

    u: (batch, L, d), shared by the G groups; delta: (batch, L, G * d); B, C: (batch, L, G, N); A: (G * d, N);
    positions: (G, L) int64, step t of group g reads and writes position ``positions[g, t]``. Returns y
    (batch, L, G * d), in the arrays' own order: the same as :func:`selective_scan` of the G reordered sequences
    (``tests/test_scan.py`` checks this), each output put back at its position.

    With ``delta_proj`` (G, d, R), delta is (batch, L, G, R), the low-rank factor of the step sizes: the scan uses
    ``einsum("blgr,gdr->blgd", delta, delta_proj)``, made in the kernels, so the (batch, L, G * d) tensor and the
    matrix product's copy are never made (Mamba's dt_proj; any strides, e.g. a slice of the x projection).

    With ``sum_groups``, returns the sum of the G groups' outputs, (batch, L, d), summed in the kernel as they are
    made (and its gradient read by every group in the backward).
    """
    _numba_ready(u)
    ct = _compute_dtype(u)
    if delta_proj is not None:
        delta_in, proj = delta.to(ct), delta_proj.to(ct).reshape(-1, delta_proj.shape[-1])
    else:
        delta_in, proj = delta.to(ct).contiguous(), None
    y, _ = _NumbaScan.apply(
        u.to(ct).contiguous(), delta_in, proj, A.to(ct), B.to(ct), C.to(ct),
        D.to(ct) if D is not None else None, delta_bias.to(ct) if delta_bias is not None else None, delta_softplus,
        positions.to(torch.int64), True, False, torch.is_grad_enabled(), sum_groups,
    )
    return y.to(u.dtype)


def cross_scan_reference(u, delta, A, B, C, D, delta_bias, positions, delta_softplus=True, impl="chunked",
                         delta_proj=None):
    """:func:`cross_scan_numba` by gathering the G reordered sequences, one :func:`selective_scan` by ``impl`` and
    putting each output back at its position: the reference the fused path is tested against."""
    bsz, length, d = u.shape
    g = positions.shape[0]
    if delta_proj is not None:
        delta = torch.einsum("blgr,gdr->blgd", delta, delta_proj).reshape(bsz, length, g * d)
    dv = delta.view(bsz, length, g, d)
    seq = [(u[:, pos], dv[:, pos, k], B[:, pos, k], C[:, pos, k]) for k, pos in enumerate(positions)]
    us, ds, bs, cs = (torch.stack(parts, 1) for parts in zip(*seq))  # (batch, G, L, X)
    y = selective_scan(
        us.permute(0, 1, 3, 2).reshape(bsz, g * d, length), ds.permute(0, 1, 3, 2).reshape(bsz, g * d, length),
        A, bs.permute(0, 1, 3, 2), cs.permute(0, 1, 3, 2), D, delta_bias=delta_bias, delta_softplus=delta_softplus,
        impl=impl,
    ).view(bsz, g, d, length)
    back = [y[:, k][:, :, torch.argsort(pos)] for k, pos in enumerate(positions)]  # step order -> position order
    return torch.stack(back, 2).permute(0, 3, 2, 1).reshape(bsz, length, g * d)


# --------------------------------------------------------------------------------------------------------------------
# CUDA kernel


@functools.lru_cache(maxsize=1)
def _cuda_fn() -> Callable | None:
    try:  # imported here so that a missing or broken mamba_ssm never affects importing this module
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:
        return None
    return selective_scan_fn


def cuda_kernel_available() -> bool:
    """True when the ``mamba_ssm`` CUDA kernel imports and a CUDA device is present."""
    return torch.cuda.is_available() and _cuda_fn() is not None


def selective_scan_cuda(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """``mamba_ssm``'s fused CUDA kernel (same semantics); raises RuntimeError when it is not usable."""
    fn = _cuda_fn()
    if fn is None:
        raise RuntimeError("mamba_ssm's selective scan kernel is not installed or does not import")
    if not u.is_cuda:
        raise RuntimeError("the mamba_ssm kernel needs CUDA tensors")
    _check(u, delta, A, B, C, D, z, delta_bias)
    # the kernel wants float32 D and delta_bias and contiguous last dimensions
    D = D.float() if D is not None else None
    delta_bias = delta_bias.float() if delta_bias is not None else None
    return fn(
        u.contiguous(),
        delta.contiguous(),
        A.contiguous(),
        B.contiguous(),
        C.contiguous(),
        D,
        z.contiguous() if z is not None else None,
        delta_bias,
        delta_softplus,
        return_last_state,
    )


# --------------------------------------------------------------------------------------------------------------------
# dispatch

IMPLEMENTATIONS: dict[str, Callable] = {
    "ref": selective_scan_ref,
    "loop": selective_scan_loop,
    "chunked": selective_scan_chunked,
    "numba": selective_scan_numba,
    "cuda": selective_scan_cuda,
}


def resolve_impl(impl: str, u: Tensor) -> str:
    """The implementation ``impl`` names for a scan of ``u``: itself, or for "auto" the best one available (the
    ``mamba_ssm`` CUDA kernel for CUDA tensors when it imports, the fused numba kernels on the CPU when numba
    imports, else the chunked scan)."""
    if impl != "auto":
        return impl
    if u.is_cuda:
        return "cuda" if _cuda_fn() is not None else "chunked"
    return "numba" if u.device.type == "cpu" and numba_kernel_available() else "chunked"


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    impl: str = "auto",
):
    """The selective scan by the best available implementation (or the one named by ``impl``).

    ``auto``: the ``mamba_ssm`` CUDA kernel for CUDA tensors when it imports; on the CPU the fused numba kernels when
    numba imports (forward+backward 3.2x faster than the chunked scan at L = 128^2 on one thread, 5.3x on two;
    ``benchmarks/results/scan.json``), otherwise the chunked scan (plain PyTorch). The numba kernels are compiled
    once per installation (about a minute) and loaded from numba's cache afterwards.
    """
    impl = resolve_impl(impl, u)
    try:
        fn = IMPLEMENTATIONS[impl]
    except KeyError:
        raise ValueError(f"unknown selective scan implementation {impl!r}; one of auto, {', '.join(IMPLEMENTATIONS)}")
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
