"""RSDehamba: size against the paper, shapes at odd sizes and band counts, the scan unfolding, a tiny overfit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rsrestore.models import rsdehamba as rd
from rsrestore.models.blocks import LayerNorm2d, count_parameters, pad_to_multiple
from rsrestore.models.rsdehamba import DirectionAwareSSM, RSDehamba, RSDehambaConfig


def tiny(**kw) -> RSDehambaConfig:
    base = dict(embed_dim=8, depths=(1, 1, 1), d_state=4, mlp_ratio=2.0)
    base.update(kw)
    return RSDehambaConfig(**base)


def test_parameter_count_matches_paper():
    model = RSDehamba()
    n = model.num_parameters()
    assert abs(n - rd.paper_parameter_count()) / rd.paper_parameter_count() < 0.10
    assert n == count_parameters(model)
    assert RSDehambaConfig().widths == (36, 72, 144)


@pytest.mark.parametrize("bands, size", [(3, (17, 23)), (1, (5, 3)), (4, (32, 9)), (13, (1, 1)), (3, (2, 31))])
def test_shapes_any_size_and_band_count(bands, size):
    torch.manual_seed(0)
    model = RSDehamba(tiny(in_channels=bands)).eval()
    x = torch.rand(2, bands, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_channels_last_input_gives_same_output():
    torch.manual_seed(0)
    model = RSDehamba(tiny()).eval()
    x = torch.rand(1, 3, 12, 20)
    with torch.no_grad():
        a = model(x)
        b = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_by_rows_hands_bands_of_rows_to_fn_without_gradients_and_the_whole_map_with(monkeypatch):
    monkeypatch.setattr(rd, "ROW_CHUNK_PIXELS", 40)  # two rows of 20 pixels a band
    seen = []
    x = torch.arange(24 * 20 * 3, dtype=torch.float32).view(1, 24, 20, 3)
    with torch.no_grad():
        out = rd.by_rows(lambda a, b: seen.append(a.shape[1]) or a * 2 + b, x, x)
    assert seen == [2] * 12 and torch.equal(out, 3 * x)
    seen.clear()
    rd.by_rows(lambda a: seen.append(a.shape[1]) or a, x.requires_grad_())
    assert seen == [24]


def test_inference_by_bands_of_rows_equals_the_whole_map(monkeypatch):
    """The model's output is the same when its per-pixel layers run band by band (batch and odd sizes, the last
    band shorter)."""
    torch.manual_seed(0)
    model = RSDehamba(tiny()).eval()
    x = torch.rand(2, 3, 21, 18)
    with torch.no_grad():
        whole = model(x)
        monkeypatch.setattr(rd, "ROW_CHUNK_PIXELS", 40)
        banded = model(x)
    torch.testing.assert_close(banded, whole, rtol=1e-5, atol=1e-6)


def test_reference_scan_gives_same_model_output():
    torch.manual_seed(0)
    fast = RSDehamba(tiny()).eval()
    slow = RSDehamba(tiny(scan_impl="ref")).eval()
    slow.load_state_dict(fast.state_dict())
    x = torch.rand(1, 3, 9, 14)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), slow(x), rtol=1e-4, atol=1e-5)


def test_direction_unfolding_folds_back(monkeypatch):
    """With the scan replaced by the identity, the four unfold/fold pairs of the PyTorch path must give back 4x the
    input (the fused path's scan orders are checked in test_scan_cross.py)."""
    monkeypatch.setattr(rd, "selective_scan", lambda u, *a, **k: u)
    ssm = DirectionAwareSSM(4, tiny(scan_impl="chunked"))
    u = torch.rand(2, ssm.inner, 5, 7)
    torch.testing.assert_close(ssm.scan(u), 4 * u.permute(0, 2, 3, 1))


def test_direction_aware_scan_sees_the_whole_map():
    """One direction only sees earlier pixels; the four together give every pixel a path to every other."""
    torch.manual_seed(0)
    ssm = DirectionAwareSSM(4, tiny()).double()
    u = torch.rand(1, ssm.inner, 6, 5, dtype=torch.float64, requires_grad=True)
    y = ssm.scan(u)
    (g,) = torch.autograd.grad(y[0, 2, 3].sum(), u)
    assert (g.abs().sum(1) > 0).all()


def test_layernorm2d_matches_layernorm_over_channels():
    torch.manual_seed(0)
    norm = LayerNorm2d(5)
    with torch.no_grad():
        norm.weight.uniform_()
        norm.bias.uniform_()
    x = torch.randn(2, 5, 4, 3)
    expect = F.layer_norm(x.permute(0, 2, 3, 1), (5,), norm.weight, norm.bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(norm(x), expect)
    mean = x.mean(1, keepdim=True)
    var = x.var(1, unbiased=False, keepdim=True)
    manual = (x - mean) / torch.sqrt(var + 1e-6) * norm.weight[:, None, None] + norm.bias[:, None, None]
    torch.testing.assert_close(norm(x), manual, rtol=1e-5, atol=1e-5)


def test_pad_to_multiple_reflects_and_replicates():
    x = torch.arange(12.0).view(1, 1, 3, 4)
    y, hw = pad_to_multiple(x, 4)
    assert hw == (3, 4) and y.shape == (1, 1, 4, 4)
    torch.testing.assert_close(y[0, 0, 3], x[0, 0, 1])  # reflect: the row before the last
    z, _ = pad_to_multiple(torch.ones(1, 1, 1, 1), 4)  # too small to reflect
    assert z.shape == (1, 1, 4, 4) and (z == 1).all()


def test_bad_inputs():
    model = RSDehamba(tiny())
    with pytest.raises(ValueError, match="expected input"):
        model(torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match="SAR"):
        model(torch.rand(1, 3, 8, 8), sar=torch.rand(1, 2, 8, 8))
    with pytest.raises(ValueError, match="depths"):
        RSDehambaConfig(depths=(2, 3))
    with pytest.raises(ValueError, match="d_conv"):
        RSDehambaConfig(d_conv=4)


def test_tiny_overfit():
    """A few dozen Adam steps on one small hazy/clear pair: the loss falls substantially and PSNR rises."""
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(0, 1, 16), indexing="ij")
    clear = torch.stack([0.5 + 0.4 * torch.sin(6 * xx + k) * torch.cos(4 * yy - k) for k in range(3)])[None]
    t = 0.4 + 0.5 * xx  # transmission varying across the scene
    hazy = clear * t + 0.9 * (1 - t)  # atmospheric scattering model with airlight 0.9
    batch_in, batch_out = torch.cat([hazy, hazy.flip(-1)]), torch.cat([clear, clear.flip(-1)])
    model = RSDehamba(RSDehambaConfig(embed_dim=8, depths=(1, 1, 1), d_state=8))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = F.l1_loss(model(batch_in), batch_out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.35 * losses[0]
    with torch.no_grad():
        mse_before = F.mse_loss(batch_in, batch_out)
        mse_after = F.mse_loss(model(batch_in), batch_out)
    assert 10 * torch.log10(mse_before / mse_after) > 6  # PSNR gain in dB
