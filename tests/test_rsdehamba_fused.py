"""RSDehamba's fused direction-aware scan (numba, the CPU default) against its pure PyTorch path: the same outputs and
parameter gradients for a small network, and the bundled weights give the same restored image with either path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rsrestore
from rsrestore.models import scan
from rsrestore.models.rsdehamba import RSDehamba, RSDehambaConfig

pytestmark = pytest.mark.skipif(not scan.numba_kernel_available(), reason="numba is not installed")
WEIGHTS = Path(rsrestore.__file__).resolve().parent / "weights" / "rsdehamba_haze_rgb.safetensors"


def set_scan(model, impl):
    for m in model.modules():
        if hasattr(m, "scan_impl"):
            m.scan_impl = impl


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def test_fused_path_is_the_cpu_default_and_equals_the_pytorch_path_float64(monkeypatch):
    torch.manual_seed(0)
    model = RSDehamba(RSDehambaConfig(embed_dim=8, depths=(1, 1, 1), d_state=4)).double()
    x = torch.rand(2, 3, 13, 10, dtype=torch.float64)  # odd sizes: padded to 16 x 12
    calls = []
    fused = scan.cross_scan_numba
    monkeypatch.setattr(scan, "cross_scan_numba", lambda *a, **k: calls.append(1) or fused(*a, **k))
    results = []
    for impl in ("auto", "chunked"):
        set_scan(model, impl)
        model.zero_grad()
        y = model(x)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        results.append([y.detach()] + [p.grad.clone() for p in model.parameters()])
    assert len(calls) == 5  # auto took the fused path in each of the five blocks
    for a, b in zip(*results):
        assert rel_err(a, b) < 1e-12


@pytest.mark.skipif(not WEIGHTS.exists(), reason="bundled weights missing")
def test_bundled_weights_give_the_same_restoration_with_either_scan():
    # clean_odds 0: the network runs whatever the recogniser reads (this noise reads clean and would come back as is)
    model = rsrestore.load_model("rsdehamba", clean_odds=0.0)
    x = torch.rand(1, 3, 48, 56, generator=torch.Generator().manual_seed(3)) * 0.5 + 0.3
    with torch.inference_mode():
        set_scan(model, "chunked")
        ref = model(x)
        set_scan(model, "auto")
        got = model(x)
    assert (got - ref).abs().max().item() < 1e-5
    assert (ref - x).abs().mean().item() > 1e-3  # the weights do change the image


def test_inference_then_training_at_the_same_size():
    """Scan orders cached by an inference-mode call serve a later training step too."""
    model = RSDehamba(RSDehambaConfig(embed_dim=8, depths=(1, 1, 1), d_state=4))
    x = torch.rand(1, 3, 12, 12)
    with torch.inference_mode():
        model(x)
    model(x).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
