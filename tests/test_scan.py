"""Selective scan: every implementation against the reference, closed forms, a NumPy recurrence, memory.

The numba kernels compile on first use (about a minute on a 2-core machine) and are cached by numba next to the
module afterwards; their tests are skipped where numba is not installed.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from rsrestore.models import scan

NUMBA = scan.numba_kernel_available()
needs_numba = pytest.mark.skipif(not NUMBA, reason="numba is not installed")
FAST = ["loop", "chunked"] + (["numba"] if NUMBA else [])


def make(bsz=2, g=2, dg=3, n=4, length=37, dtype=torch.float64, seed=0, z=True, three_d_bc=False):
    gen = torch.Generator().manual_seed(seed)
    dim = g * dg

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    B = r(bsz, n, length) if three_d_bc else r(bsz, g, n, length)
    C = r(bsz, n, length) if three_d_bc else r(bsz, g, n, length)
    return dict(
        u=r(bsz, dim, length),
        delta=r(bsz, dim, length) * 0.5,
        A=-torch.rand(dim, n, generator=gen, dtype=dtype) * 3 - 0.1,
        B=B,
        C=C,
        D=r(dim),
        z=r(bsz, dim, length) if z else None,
        delta_bias=r(dim) * 0.3,
    )


def run(impl, args, grads=True, **kw):
    """Output, last state and the gradients of a fixed random projection of both, for every tensor input."""
    args = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in args.items()}
    fn = scan.IMPLEMENTATIONS[impl]
    y, last = fn(**args, return_last_state=True, **kw)
    if not grads:
        return [y.detach(), last.detach()]
    gen = torch.Generator().manual_seed(1)
    wy = torch.randn(y.shape, generator=gen, dtype=y.dtype)
    wl = torch.randn(last.shape, generator=gen, dtype=y.dtype)
    leaves = [v for v in args.values() if v is not None]
    gs = torch.autograd.grad((y * wy).sum() + (last * wl).sum(), leaves)
    return [y.detach(), last.detach(), *gs]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("length", [1, 7, 33, 100])
@pytest.mark.parametrize("softplus", [True, False])
def test_matches_reference_float64(impl, length, softplus):
    args = make(length=length)
    if not softplus:
        args["delta"] = args["delta"].abs()  # a positive step, as softplus would give
        args["delta_bias"] = args["delta_bias"].abs()
    ref = run("ref", args, delta_softplus=softplus)
    got = run(impl, args, delta_softplus=softplus)
    for a, b in zip(got, ref):
        assert rel_err(a, b) < 1e-10


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("length", [45, 129])
def test_matches_reference_float32(impl, length):
    """The 1e-5 relative agreement in float32 (forward and every gradient), lengths not powers of two."""
    args = {k: (v.float() if v is not None else None) for k, v in make(length=length, g=4, dg=5, n=16).items()}
    ref = run("ref", args, delta_softplus=True)
    got = run(impl, args, delta_softplus=True)
    for a, b in zip(got, ref):
        assert a.dtype == torch.float32
        assert rel_err(a, b) < 1e-5


@pytest.mark.parametrize("chunk", [1, 3, 8, 50, 1000])
@pytest.mark.parametrize("group_elements", [1, 200, 1 << 20])
def test_chunked_any_chunk_and_group_size(chunk, group_elements, monkeypatch):
    """Chunks that do not divide L, chunks longer than L, one chunk per group and everything in one group."""
    monkeypatch.setattr(scan, "GROUP_ELEMENTS", group_elements)
    args = make(length=50)
    ref = run("ref", args, delta_softplus=True)
    got = run("chunked", args, delta_softplus=True, chunk=chunk)
    for a, b in zip(got, ref):
        assert rel_err(a, b) < 1e-10


@pytest.mark.parametrize("impl", FAST)
def test_options_off_and_three_dim_bc(impl):
    """No D, no gate, no bias; B and C given as (batch, N, L) (one group shared by all channels)."""
    args = make(length=21, three_d_bc=True, z=False)
    args["D"] = None
    args["delta_bias"] = None
    args["delta"] = args["delta"].abs()
    ref = run("ref", args)
    got = run(impl, args)
    for a, b in zip(got, ref):
        assert rel_err(a, b) < 1e-10


def test_chunked_gradcheck():
    """Finite differences, independent of the reference: the hand-written backward of the chunked scan."""
    args = make(bsz=1, g=2, dg=2, n=3, length=11)

    def f(u, delta, A, B, C, D, z, delta_bias):
        return scan.selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, True, True, chunk=4)

    inputs = tuple(v.clone().requires_grad_() for v in args.values())
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_reference_against_numpy_recurrence():
    """The reference against Eq. 2a-2b written independently in NumPy, channel by channel and state by state."""
    args = make(bsz=1, g=2, dg=2, n=3, length=9, z=False)
    y = scan.selective_scan_ref(**args, delta_softplus=True).numpy()
    u, delta, A = args["u"].numpy(), args["delta"].numpy(), args["A"].numpy()
    B, C, D, bias = args["B"].numpy(), args["C"].numpy(), args["D"].numpy(), args["delta_bias"].numpy()
    dt = np.log1p(np.exp(delta + bias[:, None]))
    expect = np.zeros_like(y)
    for d in range(u.shape[1]):
        g = d // 2
        for n in range(A.shape[1]):
            h = 0.0
            for t in range(u.shape[2]):
                h = math.exp(dt[0, d, t] * A[d, n]) * h + dt[0, d, t] * B[0, g, n, t] * u[0, d, t]
                expect[0, d, t] += C[0, g, n, t] * h
        expect[0, d] += D[d] * u[0, d]
    np.testing.assert_allclose(y, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["ref", *FAST])
def test_constant_inputs_closed_form(impl):
    """Constant inputs: h_t = b (1 - a^(t+1)) / (1 - a) with a = exp(dt A), b = dt B u."""
    length, dt, a_val, b_val, u_val = 40, 0.3, -0.7, 0.5, 2.0
    kw = dict(
        u=torch.full((1, 1, length), u_val, dtype=torch.float64),
        delta=torch.full((1, 1, length), dt, dtype=torch.float64),
        A=torch.tensor([[a_val]], dtype=torch.float64),
        B=torch.full((1, 1, 1, length), b_val, dtype=torch.float64),
        C=torch.ones(1, 1, 1, length, dtype=torch.float64),
    )
    y = scan.IMPLEMENTATIONS[impl](**kw)[0, 0]
    a = math.exp(dt * a_val)
    t = torch.arange(length, dtype=torch.float64)
    expect = dt * b_val * u_val * (1 - a ** (t + 1)) / (1 - a)
    torch.testing.assert_close(y, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", FAST)
def test_extreme_decay_is_finite(impl):
    """Steps so large that exp(dt A) underflows to 0 (and exp(-cumsum) would overflow): still exact and finite."""
    args = make(length=30)
    args["delta"] = args["delta"].abs() * 200 + 50
    args = {k: (v.float() if v is not None else None) for k, v in args.items()}
    ref = run("ref", args, delta_softplus=True)
    got = run(impl, args, delta_softplus=True)
    for a, b in zip(got, ref):
        assert torch.isfinite(a).all()
        assert rel_err(a, b) < 1e-5


def saved_bytes(fn, bsz, g, dg, n, length, time_major=False) -> int:
    """Bytes that fn(**float32 inputs, delta_softplus=True) keeps for backward, the inputs themselves excluded.
    time_major: u and delta as (batch, D, L) views of (batch, L, D) tensors, as RSDehamba passes them."""
    args = {k: v.float() for k, v in make(bsz, g, dg, n, length, z=False).items() if v is not None}
    if time_major:
        args.update({k: args[k].transpose(1, 2).contiguous().transpose(1, 2) for k in ("u", "delta")})
    args = {k: v.requires_grad_() for k, v in args.items()}
    inputs = {v.untyped_storage().data_ptr() for v in args.values()}
    saved: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in inputs:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(**args, delta_softplus=True)
    return sum(saved.values())


def test_chunked_keeps_only_chunk_states():
    """What the chunked scan saves for backward grows as L / chunk states, not L states."""
    bsz, g, dg, n, length, chunk = 1, 2, 8, 16, 512, 32
    saved = saved_bytes(lambda **a: scan.selective_scan_chunked(**a, chunk=chunk), bsz, g, dg, n, length)
    state_bytes = bsz * g * dg * n * 4
    assert saved <= (length // chunk + 1) * state_bytes
    assert saved < length * state_bytes / 10


def test_auto_picks_numba_on_cpu_else_chunked_and_cuda_kernel_is_lazy(monkeypatch):
    assert "mamba_ssm" not in sys.modules or scan.cuda_kernel_available()
    args = make(length=10)
    calls = []
    for name in ("chunked", "numba"):
        monkeypatch.setitem(scan.IMPLEMENTATIONS, name, lambda *a, name=name, **k: calls.append(name) or a[0])
    scan.selective_scan(*args.values())
    assert calls == ["numba" if NUMBA else "chunked"]
    monkeypatch.setattr(scan, "numba_kernel_available", lambda: False)  # the fallback without numba
    scan.selective_scan(*args.values())
    assert calls[-1] == "chunked"
    if not scan.cuda_kernel_available():
        with pytest.raises(RuntimeError):
            scan.selective_scan_cuda(*args.values())


def test_half_precision_inputs_scan_in_float32():
    args = {k: (v.to(torch.bfloat16) if v is not None else None) for k, v in make(length=12).items()}
    y = scan.selective_scan_chunked(**args, delta_softplus=True)
    ref = scan.selective_scan_ref(**{k: (v.float() if v is not None else None) for k, v in args.items()},
                                  delta_softplus=True)
    assert y.dtype == torch.bfloat16
    assert rel_err(y.float(), ref) < 1e-2


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(u=torch.zeros(2, 6)), "u must be"),
        (dict(delta=torch.zeros(2, 6, 5)), "delta must"),
        (dict(A=torch.zeros(5, 4)), "A must"),
        (dict(B=torch.zeros(2, 4, 4, 37)), "divide"),
        (dict(C=torch.zeros(2, 2, 3, 37)), "C must"),
        (dict(D=torch.zeros(5)), "D must"),
        (dict(z=torch.zeros(2, 6, 36)), "z must"),
    ],
)
def test_bad_shapes(change, message):
    args = make()
    args.update({k: v.double() for k, v in change.items()})
    with pytest.raises(ValueError, match=message):
        scan.selective_scan(**args)
    with pytest.raises(ValueError, match="unknown selective scan"):
        scan.selective_scan(**make(), impl="fast")


# --------------------------------------------------------------------------------------------------------------------
# the fused numba kernels


@needs_numba
@pytest.mark.parametrize("length", [1, 7, 31, 32, 33, 64, 129])
@pytest.mark.parametrize("g, dg", [(1, 7), (3, 5), (2, 29), (1, 130)])
def test_numba_float32_matches_reference(length, g, dg):
    """1e-5 relative in float32, forward and every gradient: odd channel counts, a group split into blocks (130:
    three blocks of 44 and 42 channels), lengths below, at and across the checkpoint interval (32)."""
    args = {k: (v.float() if v is not None else None) for k, v in make(g=g, dg=dg, n=16, length=length).items()}
    ref = run("ref", args, delta_softplus=True)
    got = run("numba", args, delta_softplus=True)
    for a, b in zip(got, ref):
        assert a.dtype == torch.float32
        assert rel_err(a, b) < 1e-5


@needs_numba
def test_numba_softplus_float32_against_float64():
    """The kernel's vectorisable softplus: within 1e-6 of float64 for x >= -20 (4e-6 below: the float32 argument of
    2^x), x itself for large x, finite and non-negative at any float32."""
    from rsrestore.models import scan_numba

    xs = np.concatenate([np.linspace(-87, 104, 8001), [0.0, 1e-8, -1e-8, 1e30, -1e30, 3.4e38, -3.4e38]])
    xs = xs.astype(np.float32)
    got = np.array([scan_numba._softplus_32(x) for x in xs], dtype=np.float64)
    ref = torch.nn.functional.softplus(torch.from_numpy(xs.astype(np.float64))).numpy()
    rel = np.abs(got - ref) / np.maximum(ref, 1e-300)
    assert rel[xs >= -20].max() < 1e-6 and rel[np.abs(xs) <= 104].max() < 1e-5
    assert np.isfinite(got).all() and (got >= 0).all()
    assert got[xs == np.float32(1e30)][0] == np.float32(1e30) and got[xs == np.float32(-1e30)][0] < 1e-37


@needs_numba
def test_numba_gradcheck():
    """Finite differences in float64, independent of the reference: the fused backward. (Gradients across several
    checkpoints are compared with the reference in test_matches_reference_float64.)"""
    args = make(bsz=2, g=2, dg=2, n=3, length=11)

    def f(u, delta, A, B, C, D, z, delta_bias):
        return scan.selective_scan_numba(u, delta, A, B, C, D, z, delta_bias, True, True)

    inputs = tuple(v.clone().requires_grad_() for v in args.values())
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


@needs_numba
def test_numba_views_threads_and_half_precision(monkeypatch):
    """Time-major views (what RSDehamba passes) give the contiguous result (the kernels' part bit for bit; the gate's
    gradient, by PyTorch, may round differently for another layout); 1 and 2 threads (also capped by the environment
    variable) give the same bits; a bfloat16 input is scanned in float32."""
    from rsrestore.models import scan_numba

    monkeypatch.setattr(scan_numba, "PARALLEL_MIN_WORK", 0)  # run this small case on two threads too
    args = {k: (v.float() if v is not None else None) for k, v in make(length=40, g=2, dg=30).items()}
    base = run("numba", args, delta_softplus=True)
    views = {k: (v.transpose(-1, -2).contiguous().transpose(-1, -2) if v is not None and v.dim() > 1 else v)
             for k, v in args.items()}
    assert not views["u"].is_contiguous()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run("numba", views, delta_softplus=True)
        torch.set_num_threads(2)
        two = run("numba", views, delta_softplus=True)
        assert scan_numba.numba.get_num_threads() == min(2, scan_numba.numba.config.NUMBA_NUM_THREADS)
        monkeypatch.setenv(scan_numba.THREADS_ENV, "1")
        capped = run("numba", views, delta_softplus=True)
        assert scan_numba.numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for a, b, c, d in zip(one, two, capped, base):
        assert torch.equal(a, b) and torch.equal(a, c)
        assert rel_err(a, d) < 1e-6
    half = {k: (v.to(torch.bfloat16) if v is not None else None) for k, v in args.items()}
    y = scan.selective_scan_numba(**half, delta_softplus=True)
    ref = scan.selective_scan_ref(**{k: (v.float() if v is not None else None) for k, v in half.items()},
                                  delta_softplus=True)
    assert y.dtype == torch.bfloat16
    assert rel_err(y.float(), ref) < 1e-2


@needs_numba
def test_numba_saves_checkpoints_not_states():
    """Saved for backward: the step sizes (one per input value), a state every CHECKPOINT steps, not L states, and
    the order of the steps; plus time-major copies of u and delta when they do not come time-major."""
    from rsrestore.models import scan_numba

    bsz, g, dg, n, length = 1, 2, 8, 16, 512
    state_bytes = bsz * g * dg * n * 4
    step_bytes = bsz * g * dg * length * 4
    checkpoints = -(-length // scan_numba.CHECKPOINT) * state_bytes + length * 8  # and the step positions
    saved = saved_bytes(scan.selective_scan_numba, bsz, g, dg, n, length, time_major=True)
    assert saved <= step_bytes + checkpoints
    assert saved < length * state_bytes / 8
    assert saved_bytes(scan.selective_scan_numba, bsz, g, dg, n, length) <= 3 * step_bytes + checkpoints


def test_numba_is_imported_lazily():
    """Importing the package and building a model never imports numba (it compiles on the first CPU scan)."""
    code = (
        "import sys, rsrestore, rsrestore.models.scan, rsrestore.models.rsdehamba as r; r.RSDehamba(); "
        "assert 'numba' not in sys.modules, 'numba imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@needs_numba
def test_numba_keeps_torch_thread_count():
    """Starting numba's OpenMP pool (two threads here) on the first scan leaves torch.set_num_threads(1) in force,
    and the scan itself then runs on one thread. (The count was lost when torch had read it before the pool
    started, as a training loop does.)"""
    code = (
        "import torch; torch.set_num_threads(1); assert torch.get_num_threads() == 1\n"
        "from rsrestore.models import scan\n"
        "u = torch.rand(1, 8, 4096)\n"
        "scan.selective_scan(u, u, -torch.rand(8, 4), torch.rand(1, 1, 4, 4096), torch.rand(1, 1, 4, 4096),"
        " impl='numba')\n"
        "import numba\n"
        "assert torch.get_num_threads() == 1, torch.get_num_threads()\n"
        "assert numba.get_num_threads() == 1, numba.get_num_threads()\n"
    )
    env = {**os.environ, "NUMBA_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@needs_numba
def test_rsdehamba_with_numba_scan_matches_reference():
    """A tiny RSDehamba: output and parameter gradients with the numba scan equal those with the reference scan."""
    from rsrestore.models.rsdehamba import RSDehamba, RSDehambaConfig

    torch.manual_seed(0)
    x = torch.rand(2, 3, 5, 7)
    results = []
    for impl in ("ref", "numba"):
        torch.manual_seed(1)
        model = RSDehamba(RSDehambaConfig(embed_dim=6, depths=(1, 1, 1), scan_impl=impl))
        y = model(x)
        y.square().mean().backward()
        results.append((y.detach(), {k: p.grad for k, p in model.named_parameters()}))
    (y_ref, g_ref), (y_nb, g_nb) = results
    assert rel_err(y_nb, y_ref) < 1e-5
    for name, grad in g_ref.items():
        assert rel_err(g_nb[name], grad) < 1e-4, name


@needs_numba
def test_numba_float32_kernels_call_no_scalar_libm():
    """float32 arithmetic stays float32 inside the kernels: a stray Python float in an expression makes it float64,
    whose exp and log1p are libm's scalar functions, which do not vectorise (the sigmoid of the backward once spent a
    quarter of its time there)."""
    from rsrestore.models import scan_numba

    for kernel in (scan_numba._forward_kernel, scan_numba._backward_kernel):
        float32_sig = next(sig for sig in kernel.signatures if sig[0].dtype == scan_numba.types.float32)
        calls = set(re.findall(r"\$(\w+)", kernel.inspect_asm(float32_sig)))
        assert not calls & {"exp", "expf", "log1p", "log1pf", "exp2", "exp2f"}, calls
