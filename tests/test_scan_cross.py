"""The fused cross scan (:func:`rsrestore.models.scan.cross_scan_numba`): four scan orders over one map, no reordered
copies, equal to gathering the four sequences, scanning them with the pure PyTorch implementations and putting the
outputs back. Values and every gradient, float64 (tight) and float32, at odd map sizes and lengths across the
kernels' checkpoint interval."""

from __future__ import annotations

import pytest
import torch

from rsrestore.models import scan

pytestmark = pytest.mark.skipif(not scan.numba_kernel_available(), reason="numba is not installed")


def inputs(bsz, h, w, d, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    length, k = h * w, 4

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    return dict(u=r(bsz, length, d), delta=r(bsz, length, k * d) * 0.5 - 1,
                A=-torch.rand(k * d, n, generator=g, dtype=dtype) * 3 - 0.1, B=r(bsz, length, k, n),
                C=r(bsz, length, k, n), D=r(k * d), delta_bias=r(k * d) * 0.3)


def values_and_grads(fn, args, positions, impl=None):
    leaves = {k: v.clone().requires_grad_() for k, v in args.items()}
    kw = {"impl": impl} if impl else {}
    y = fn(**leaves, positions=positions, **kw)
    wy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    return [y.detach(), *torch.autograd.grad((y * wy).sum(), list(leaves.values()))]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def test_positions_are_the_four_unfoldings():
    pos = scan.cross_scan_positions(2, 3)  # map [[0 1 2] [3 4 5]]
    assert pos.tolist() == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]


@pytest.mark.parametrize("h, w, d", [(1, 1, 3), (5, 7, 40), (9, 8, 70)])  # L = 1, 35, 72 (checkpoints every 32)
def test_matches_reference_float64(h, w, d):
    args = inputs(2, h, w, d, 4, torch.float64)
    pos = scan.cross_scan_positions(h, w)
    got = values_and_grads(scan.cross_scan_numba, args, pos)
    ref = values_and_grads(scan.cross_scan_reference, args, pos, impl="ref")
    for a, b in zip(got, ref):
        assert rel_err(a, b) < 1e-12


def test_matches_chunked_float32():
    args = inputs(1, 11, 13, 36, 16, torch.float32)  # L = 143, 36 channels per direction (RSDehamba's level-1 blocks)
    pos = scan.cross_scan_positions(11, 13)
    got = values_and_grads(scan.cross_scan_numba, args, pos)
    ref = values_and_grads(scan.cross_scan_reference, args, pos, impl="chunked")
    for a, b in zip(got, ref):
        assert a.dtype == torch.float32
        assert rel_err(a, b) < 2e-5


def low_rank_inputs(bsz, h, w, d, n, rank, dtype):
    """inputs() with delta given by its low-rank factor: a (batch, L, 4, rank) slice of a wider projection (strided,
    as RSDehamba's x_proj output is) and a (4, d, rank) projection."""
    args = inputs(bsz, h, w, d, n, dtype)
    g = torch.Generator().manual_seed(2)
    wide = torch.randn(bsz, h * w, 4, rank + 5, generator=g, dtype=dtype)
    args["delta"] = wide[..., 2:2 + rank]
    args["delta_proj"] = torch.randn(4, d, rank, generator=g, dtype=dtype) * rank**-0.5
    return args


@pytest.mark.parametrize("h, w, d, rank", [(5, 7, 40, 3), (9, 8, 70, 5)])
def test_low_rank_delta_matches_reference_float64(h, w, d, rank):
    """delta made in the kernels from its low-rank factors: values and gradients (the factors' included) equal
    those of the reference scan of the full delta."""
    args = low_rank_inputs(2, h, w, d, 4, rank, torch.float64)
    assert not args["delta"].is_contiguous()
    pos = scan.cross_scan_positions(h, w)
    got = values_and_grads(scan.cross_scan_numba, args, pos)
    ref = values_and_grads(scan.cross_scan_reference, args, pos, impl="ref")
    assert len(got) == 1 + len(args)
    for a, b in zip(got, ref):
        assert a.shape == b.shape
        assert rel_err(a, b) < 1e-12


def test_low_rank_delta_matches_chunked_float32():
    args = low_rank_inputs(1, 11, 13, 36, 16, 3, torch.float32)
    pos = scan.cross_scan_positions(11, 13)
    got = values_and_grads(scan.cross_scan_numba, args, pos)
    ref = values_and_grads(scan.cross_scan_reference, args, pos, impl="chunked")
    for a, b in zip(got, ref):
        assert rel_err(a, b) < 2e-5


@pytest.mark.parametrize("bsz, d", [(1, 72), (1, 144), (3, 40)])
def test_summed_groups_equal_the_sum_of_the_outputs(bsz, d):
    """sum_groups: the kernel adds the four directions' outputs as it makes them (channel blocks chosen for the
    thread count); values and every gradient equal those of summing the per-direction output."""
    args = low_rank_inputs(bsz, 6, 7, d, 4, 3, torch.float64)
    pos = scan.cross_scan_positions(6, 7)

    def summed_after(**kw):
        y = scan.cross_scan_numba(**kw)
        return y.view(*y.shape[:2], 4, -1).sum(2)

    got = values_and_grads(lambda **kw: scan.cross_scan_numba(**kw, sum_groups=True), args, pos)
    ref = values_and_grads(summed_after, args, pos)
    assert got[0].shape == (bsz, 42, d)
    for a, b in zip(got, ref):
        assert rel_err(a, b) < 1e-12


def test_summed_block_width_gives_an_even_block_count():
    from rsrestore.models import scan_numba

    assert scan_numba.summed_block_width(4 * 72, 4) == 36      # 2 blocks: already even
    assert scan_numba.summed_block_width(4 * 144, 4) == 36     # 3 blocks of 48 -> 4 of 36
    assert scan_numba.summed_block_width(4 * 288, 4) == 48     # 5 blocks -> 6
    assert scan_numba.summed_block_width(4 * 20, 4) == 20      # one block: halves would be under 16 channels


def test_summed_groups_do_not_depend_on_the_thread_count():
    """The summed output is bit-identical on one and two threads (channel blocks do not follow the thread count)."""
    args = low_rank_inputs(1, 20, 25, 144, 8, 9, torch.float32)
    pos = scan.cross_scan_positions(20, 25)
    before = torch.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                out.append(scan.cross_scan_numba(**args, positions=pos, sum_groups=True))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out[0], out[1])


def test_no_grad_saves_nothing_for_a_backward(monkeypatch):
    """Under no_grad (and inference_mode) the forward keeps no step sizes or checkpoints, even for parameters
    (whose needs_input_grad stays True there); with gradients on it does."""
    from rsrestore.models import scan_numba

    seen = []
    real = scan_numba.forward
    monkeypatch.setattr(scan_numba, "forward", lambda *a, **k: seen.append(a[14]) or real(*a, **k))
    args = low_rank_inputs(1, 4, 5, 8, 4, 2, torch.float32)
    args["delta_proj"] = torch.nn.Parameter(args["delta_proj"])
    pos = scan.cross_scan_positions(4, 5)
    with torch.no_grad():
        scan.cross_scan_numba(**args, positions=pos)
    with torch.inference_mode():
        scan.cross_scan_numba(**args, positions=pos)
    scan.cross_scan_numba(**args, positions=pos).sum().backward()
    assert seen == [False, False, True]
    assert args["delta_proj"].grad is not None
