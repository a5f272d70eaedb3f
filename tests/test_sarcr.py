"""Tests for the SAR-guided cloud removal network (models/sarcr.py) and the MBConv block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rsrestore.metrics.detail import nyquist_energy
from rsrestore.models.mbconv import MBConv, SqueezeExcite
from rsrestore.models.sarcr import (
    AliasFreeSmoothing,
    SARCloudRemoval,
    SARCRConfig,
    SARGuidedPatchAttention,
    SGBAFM,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sen12mscr"
PATCH = "ROIs1970_fall_{kind}/{sub}_139/ROIs1970_fall_{sub}_139_p839.tif"


def tiny(optical_bands: int = 13, **kw) -> SARCRConfig:
    base = dict(optical_bands=optical_bands, width=16, heads=2, patch=4, stride=2, embed_dim=32, base_blocks=1, expand=2)
    base.update(kw)
    return SARCRConfig(**base)


def load_sen12mscr_crop(y0: int = 64, x0: int = 64, size: int = 64):
    """Cloudy optical, cloud-free optical and SAR of patch 139_p839, scaled as DSen2-CR / the sen12mscr loader do."""
    if not DATA.is_dir():
        pytest.skip(f"SEN12MS-CR sample not found at {DATA} (the shared data folder is absent)")
    rasterio = pytest.importorskip("rasterio")
    win = ((y0, y0 + size), (x0, x0 + size))

    def read(kind: str, sub: str) -> np.ndarray:
        with rasterio.open(DATA / PATCH.format(kind=kind, sub=sub)) as src:
            return src.read(window=win).astype(np.float32)

    cloudy = np.clip(read("s2_cloudy", "s2_cloudy"), 0, 10000) / 10000
    clear = np.clip(read("s2", "s2"), 0, 10000) / 10000
    s1 = read("s1", "s1")
    vv = (np.clip(s1[0], -25.0, 0.0) + 25.0) / 25.0
    vh = (np.clip(s1[1], -32.5, 0.0) + 32.5) / 32.5
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None]  # noqa: E731
    return t(cloudy), t(clear), t(np.stack([vv, vh]))


# ----------------------------------------------------------------------------------------------- MBConv


def test_mbconv_shapes_and_residual():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 11)
    block = MBConv(8, 8, expand=4)
    assert block.use_residual and block(x).shape == x.shape
    # With the projection zeroed the residual block is exactly the identity.
    last = block.body[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    assert torch.equal(block(x), x)
    proj = MBConv(8, 5, expand=2)
    assert not proj.use_residual and proj(x).shape == (2, 5, 9, 11)
    assert MBConv(8, 8, stride=2)(x).shape == (2, 8, 5, 6)
    with pytest.raises(ValueError):
        MBConv(8, 8, kernel=4)
    with pytest.raises(ValueError):
        block(torch.randn(1, 3, 8, 8))


def test_squeeze_excite_is_a_per_channel_gate():
    torch.manual_seed(0)
    se = SqueezeExcite(6, 2)
    x = torch.rand(1, 6, 5, 5) + 0.1
    ratio = se(x) / x
    # One gate value per channel, in (0, 1), identical over space.
    assert torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio), atol=1e-6)
    assert bool(((ratio > 0) & (ratio < 1)).all())


# ----------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("bands,h,w", [(13, 37, 45), (4, 23, 51), (13, 64, 64)])
def test_forward_shapes_odd_sizes_and_band_counts(bands, h, w):
    torch.manual_seed(0)
    model = SARCloudRemoval(tiny(bands)).eval()
    x, sar = torch.rand(2, bands, h, w), torch.rand(2, 2, h, w)
    with torch.no_grad():
        y = model(x, sar)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_paper_config_forward_at_odd_size():
    torch.manual_seed(0)
    cfg = SARCRConfig()
    assert (cfg.optical_bands, cfg.sar_bands, cfg.patch, cfg.stride) == (13, 2, 16, 2)
    model = SARCloudRemoval(cfg).eval()
    assert model.pad_multiple == 32
    for h, w in [(33, 47), (5, 7)]:  # the second needs more padding than the image is wide
        with torch.no_grad():
            y = model(torch.rand(1, 13, h, w), torch.rand(1, 2, h, w))
        assert y.shape == (1, 13, h, w) and torch.isfinite(y).all()


def test_input_skip_variant_and_channels_last():
    torch.manual_seed(0)
    model = SARCloudRemoval(tiny(4, input_skip=True)).eval()
    x, sar = torch.rand(1, 4, 19, 26), torch.rand(1, 2, 19, 26)
    with torch.no_grad():
        ref = model(x, sar)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.contiguous(memory_format=torch.channels_last), sar.contiguous(memory_format=torch.channels_last))
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-5)


def _phase_energy(f: torch.Tensor, period: int) -> float:
    """Energy of the components of period ``period`` along rows, columns and both (a pixel shuffle's aliases; for
    period 2 this is ``rsrestore.metrics.detail.nyquist_energy``, which has no other periods)."""
    h, w = f.shape[-2:]
    i = torch.arange(h, dtype=f.dtype)[:, None]
    j = torch.arange(w, dtype=f.dtype)[None]
    waves = [torch.cos(2 * torch.pi * i / period).expand(h, w), torch.cos(2 * torch.pi * j / period).expand(h, w)]
    waves.append(waves[0] * waves[1])
    return float(sum((f * wave).mean(dim=(-2, -1)).pow(2).sum() for wave in waves))


@pytest.mark.parametrize("factor", [2, 4])
def test_alias_free_smoothing_removes_the_shuffle_periods_and_keeps_flat_fields(factor):
    smooth = AliasFreeSmoothing(factor)
    h = 8 * factor
    for period in (p for p in range(2, factor + 1) if factor % p == 0):
        i = torch.arange(h, dtype=torch.float32)
        wave = torch.cos(2 * torch.pi * i / period)
        x = (wave[:, None] + wave[None, :] + wave[:, None] * wave[None, :])[None, None].repeat(1, 3, 1, 1)
        inner = (slice(None), slice(None), slice(factor, -factor), slice(factor, -factor))
        assert _phase_energy(x[inner], period) > 1.0
        assert _phase_energy(smooth(x)[inner], period) < 1e-10
    flat = torch.full((1, 2, h, h), 0.3)
    assert torch.allclose(smooth(flat), flat)
    # Symmetric: a centred impulse stays centred (no half-pixel shift).
    impulse = torch.zeros(1, 1, 9, 9)
    impulse[..., 4, 4] = 1.0
    out = smooth(impulse)[0, 0]
    assert torch.allclose(out, out.flip(0)) and torch.allclose(out, out.flip(1))


def test_smooth_upsampling_takes_the_checkerboard_out_of_the_directional_stream():
    torch.manual_seed(0)
    x, sar = torch.rand(1, 4, 32, 32), torch.rand(1, 2, 32, 32)
    plain = SARCloudRemoval(tiny(4)).eval()
    smooth = SARCloudRemoval(tiny(4, smooth_upsampling=True)).eval()
    smooth.load_state_dict(plain.state_dict())  # no new parameter: the same weights load
    with torch.no_grad():
        raw, smoothed = plain.directional(x, sar), smooth.directional(x, sar)
    assert nyquist_energy(raw)[0] > 1e3 * nyquist_energy(smoothed)[0]  # the project's 2-pixel-period energy


def test_bad_inputs_raise_value_error():
    model = SARCloudRemoval(tiny(13))
    x = torch.rand(1, 13, 16, 16)
    with pytest.raises(ValueError, match="SAR"):
        model(x)
    with pytest.raises(ValueError, match="SAR"):
        model(x, None)
    with pytest.raises(ValueError):
        model(x, torch.rand(1, 3, 16, 16))  # wrong SAR band count
    with pytest.raises(ValueError):
        model(x, torch.rand(1, 2, 16, 17))  # spatial mismatch
    with pytest.raises(ValueError):
        model(x, torch.rand(2, 2, 16, 16))  # batch mismatch
    with pytest.raises(ValueError):
        model(torch.rand(1, 4, 16, 16), torch.rand(1, 2, 16, 16))  # optical band count differs from config
    with pytest.raises(ValueError):
        SARCloudRemoval(tiny(13, heads=3))
    with pytest.raises(ValueError):
        SARCloudRemoval(tiny(13, stride=3))


# ----------------------------------------------------------------------------------------------- fusion modules


def test_sgbafm_gate_depends_on_sar():
    torch.manual_seed(0)
    mod = SGBAFM(8)
    f_opt, f_sar = torch.randn(1, 8, 12, 12), torch.randn(1, 8, 12, 12)
    f_sar2 = f_sar + torch.randn_like(f_sar)
    out, out2 = mod(f_opt, f_sar), mod(f_opt, f_sar2)
    gate, gate2 = mod.gate_map(f_opt, f_sar), mod.gate_map(f_opt, f_sar2)
    # The gate itself changes with SAR (not only the multiplied features), and stays a sigmoid in (0, 1).
    assert (gate - gate2).abs().max() > 1e-3
    assert (out - out2).abs().max() > 1e-3
    assert bool(((gate > 0) & (gate < 1)).all())
    assert torch.allclose(out, f_sar * gate)
    # And it depends on the optical features too (bi-modal).
    assert (mod.gate_map(f_opt + 1.0, f_sar) - gate).abs().max() > 1e-3


def test_whole_model_output_depends_on_sar():
    torch.manual_seed(0)
    model = SARCloudRemoval(tiny(13)).eval()
    x, sar = torch.rand(1, 13, 32, 32), torch.rand(1, 2, 32, 32)
    with torch.no_grad():
        y1 = model(x, sar)
        y2 = model(x, torch.rand(1, 2, 32, 32))
        # The directional stream alone (SG-BAFM + transformer) must react to SAR as well.
        d1 = model.directional(x, sar)
        d2 = model.directional(x, torch.rand(1, 2, 32, 32))
    assert (y1 - y2).abs().max() > 1e-4
    assert (d1 - d2).abs().max() > 1e-4


def test_attention_queries_and_keys_come_from_sar():
    torch.manual_seed(0)
    attn = SARGuidedPatchAttention(channels=16, heads=4, patch=4, embed_dim=32)
    f_sar = torch.randn(2, 16, 16, 24)
    f_opt_a, f_opt_b = torch.randn(2, 16, 16, 24), torch.randn(2, 16, 16, 24)
    out_a, w_a = attn(f_opt_a, f_sar, return_weights=True)
    out_b, w_b = attn(f_opt_b, f_sar, return_weights=True)
    assert w_a.shape == (2, 4, 4 * 6, 4 * 6)
    # Same SAR, different optical: identical attention weights, different outputs (values are optical).
    assert torch.equal(w_a, w_b)
    assert (out_a - out_b).abs().max() > 1e-3
    assert torch.allclose(w_a.sum(-1), torch.ones(2, 4, 24), atol=1e-6)
    assert torch.equal(attn.attention_weights(f_sar), w_a)
    # Different SAR changes the weights.
    _, w_c = attn(f_opt_a, f_sar + torch.randn_like(f_sar), return_weights=True)
    assert (w_a - w_c).abs().max() > 1e-4
    # The fused kernel path gives the same result as the explicit one.
    assert torch.allclose(attn(f_opt_a, f_sar), out_a, atol=1e-5)


def test_attention_output_is_a_blend_of_optical_patches():
    # With identity value/output projections, uniform weights must give every patch the mean of all patches.
    torch.manual_seed(0)
    c, p = 4, 2
    attn = SARGuidedPatchAttention(channels=c, heads=1, patch=p, embed_dim=8, pos_encoding=False)
    with torch.no_grad():
        for conv in (attn.to_v, attn.proj):
            conv.weight.copy_(torch.eye(c)[:, :, None, None])
            conv.bias.zero_()
        attn.to_q.weight.zero_()
        attn.to_q.bias.zero_()
    f_opt = torch.randn(1, c, 4, 6)
    out = attn(f_opt, torch.randn(1, c, 4, 6))
    patches = f_opt.reshape(1, c, 2, p, 3, p).permute(0, 2, 4, 1, 3, 5).reshape(1, 6, c, p, p)
    mean_patch = patches.mean(1)
    expected = mean_patch.repeat(1, 1, 2, 3)
    assert torch.allclose(out, expected, atol=1e-5)


def test_paper_token_grid_at_256():
    # 256 x 256 input, stride 2, 16 x 16 patches on the feature map: an 8 x 8 token grid, 8 heads.
    torch.manual_seed(0)
    cfg = SARCRConfig()
    attn = SARGuidedPatchAttention(cfg.width, cfg.heads, cfg.patch, cfg.embed_dim)
    f = torch.randn(1, cfg.width, 256 // cfg.stride, 256 // cfg.stride)
    with torch.no_grad():
        _, w = attn(f, f, return_weights=True)
    assert w.shape == (1, 8, 64, 64)


# ----------------------------------------------------------------------------------------------- overfit on real data


def test_overfit_on_sen12mscr_crop():
    cloudy, clear, sar = load_sen12mscr_crop()
    assert cloudy.shape == (1, 13, 64, 64) and sar.shape == (1, 2, 64, 64)
    assert 0.0 <= float(sar.min()) and float(sar.max()) <= 1.0
    torch.manual_seed(0)
    model = SARCloudRemoval(tiny(13, width=8, embed_dim=16))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        loss = (model(cloudy, sar) - clear).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert min(losses[-5:]) < 0.35 * losses[0], losses
    # Better than handing back the cloudy input, which is what an untrained copy-through would score.
    assert min(losses[-5:]) < 0.5 * float((cloudy - clear).abs().mean()), losses
