"""AOSR-Net: Eqs. 5-6 round trips, shapes at odd sizes and band counts, mixup parameters, a tiny overfit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from rsrestore.losses.aosr import AOSRLoss
from rsrestore.metrics.detail import gradient_energy
from rsrestore.models.aosrnet import (
    AOSRNet,
    AOSRNetConfig,
    Mixup,
    phi_from_clean,
    restore_from_phi,
)
from rsrestore.vgg import VGG19Features

TINY = dict(width=8)


def dust_pair(b=2, c=3, h=32, w=32, seed=0, dtype=torch.float32):
    """A smooth clean image and its sand-dust version, I = A_s + (J - A'_s) t (Si et al.)."""
    g = torch.Generator().manual_seed(seed)
    clean = F.interpolate(torch.rand(b, c, h // 4 + 1, w // 4 + 1, generator=g, dtype=torch.float64),
                          size=(h, w), mode="bilinear", align_corners=False)
    a_s = 0.4 + 0.2 * torch.rand(b, c, 1, 1, generator=g, dtype=torch.float64)
    # Transmission varies slowly across a scene, like the depth or dust load it comes from.
    t = 0.3 + 0.3 * F.interpolate(torch.rand(b, 1, 3, 3, generator=g, dtype=torch.float64), size=(h, w),
                                  mode="bilinear", align_corners=False)
    hazy = a_s + (clean - (1 - a_s)) * t
    return clean.to(dtype), hazy.to(dtype), a_s.to(dtype), t.to(dtype)


def psnr(x, y):
    return 10 * math.log10(1.0 / F.mse_loss(x, y).item())


def test_eq5_round_trip_float64_and_float32():
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-6)):
        clean, hazy, _, _ = dust_pair(dtype=dtype)
        phi = phi_from_clean(clean, hazy)
        back = restore_from_phi(hazy, phi)
        assert (back - clean).abs().max().item() < tol
    # I - alpha < 0 and J - beta <= 0 make Phi non-negative, bounded by 1 / (alpha - 1).
    assert phi.min().item() >= 0 and phi.max().item() <= 1 / 0.6 + 1e-6


def test_phi_from_clean_equals_eq6():
    clean, hazy, a_s, t = dust_pair(dtype=torch.float64)
    alpha, beta = 1.6, 1.0
    eq6 = (hazy - a_s + t * ((1 - a_s) - beta)) / (t * (hazy - alpha))
    torch.testing.assert_close(phi_from_clean(clean, hazy, alpha, beta), eq6, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="equals alpha"):
        phi_from_clean(clean, torch.full_like(clean, 1.6))
    with pytest.raises(ValueError, match="shapes differ"):
        phi_from_clean(clean, hazy[..., 1:])


@pytest.mark.parametrize(
    "shape,bands",
    [((1, 3, 37, 53), 3), ((2, 4, 20, 31), 4), ((1, 1, 17, 9), 1), ((1, 13, 12, 16), 13), ((1, 3, 3, 5), 3),
     ((1, 3, 1, 1), 3)],
)
def test_shapes_at_odd_sizes_and_band_counts(shape, bands):
    torch.manual_seed(0)
    model = AOSRNet(AOSRNetConfig(in_channels=bands, **TINY)).eval()
    x = torch.rand(shape)
    j, phi = model(x, return_phi=True)
    assert j.shape == x.shape and phi.shape == x.shape
    assert torch.isfinite(j).all() and torch.isfinite(phi).all()
    assert j.min() >= 0 and j.max() <= 1  # clipped in eval mode
    assert model(x).shape == x.shape


def test_output_is_eq5_of_phi_and_sar_is_ignored():
    torch.manual_seed(0)
    model = AOSRNet(AOSRNetConfig(**TINY)).train()
    x = torch.rand(2, 3, 21, 30)
    j, phi = model(x, return_phi=True)
    torch.testing.assert_close(j, phi * (x - 1.6) + 1.0)
    torch.testing.assert_close(model(x, sar=torch.rand(2, 2, 21, 30)), j)
    # Sizes that are already multiples of 4 go straight through the Phi module.
    y = torch.rand(1, 3, 16, 24)
    torch.testing.assert_close(model(y, return_phi=True)[1], model.estimate_phi(y))


def test_channels_last_gives_the_same_result():
    torch.manual_seed(0)
    model = AOSRNet(AOSRNetConfig(**TINY)).eval()
    x = torch.rand(2, 3, 28, 19)
    ref = model(x)
    model_cl = model.to(memory_format=torch.channels_last)
    got = model_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_mixup_formula_and_trainable_xi():
    mix = Mixup(-0.6)
    a, b = torch.rand(1, 4, 5, 5), torch.rand(1, 4, 5, 5)
    s = 1 / (1 + math.exp(0.6))
    torch.testing.assert_close(mix(a, b), s * a + (1 - s) * b)

    torch.manual_seed(0)
    model = AOSRNet(AOSRNetConfig(**TINY))
    names = dict(model.named_parameters())
    assert names["mix1.xi"].item() == pytest.approx(-1.0) and names["mix2.xi"].item() == pytest.approx(-0.6)
    assert names["mix1.xi"].requires_grad and names["mix2.xi"].requires_grad
    clean, hazy, _, _ = dust_pair(b=1, h=16, w=16)
    F.l1_loss(model(hazy), clean).backward()
    for name in ("mix1.xi", "mix2.xi"):
        assert names[name].grad is not None and names[name].grad.abs().item() > 0


def test_paper_structure_and_parameter_count():
    model = AOSRNet()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and not isinstance(m, nn.ConvTranspose2d)]
    deconvs = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    res_blocks = model.latent.blocks
    assert len(deconvs) == 2 and len(res_blocks) == 3
    assert len(convs) == 4 + 2 * 3  # encoder-decoder convs + two per residual block
    for layer in (model.conv1, model.conv2, model.conv3, model.deconv1, model.deconv2, model.conv4):
        assert isinstance(layer[-1], nn.PReLU)
    w = 64
    expected = (
        (3 * w * 49 + w) + (w * 2 * w * 9 + 2 * w) + (2 * w * 4 * w * 9 + 4 * w)
        + 3 * 2 * (4 * w * 4 * w * 9 + 4 * w) + 3  # residual blocks with one PReLU each
        + (4 * w * 2 * w * 9 + 2 * w) + (2 * w * w * 9 + w) + (w * 3 * 49 + 3)
        + 6 + 2  # PReLUs after the six encoder-decoder layers, two mixup xi
    )
    assert sum(p.numel() for p in model.parameters()) == expected


def test_bad_inputs_raise():
    model = AOSRNet(AOSRNetConfig(**TINY))
    with pytest.raises(ValueError, match="built for 3 bands, got 4"):
        model(torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match="\\(B, C, H, W\\)"):
        model(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="float"):
        model(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="alpha must be > 1"):
        AOSRNetConfig(alpha=1.0)
    with pytest.raises(ValueError, match="in_channels"):
        AOSRNetConfig(in_channels=0)


def test_tiny_overfit_loss_falls_and_psnr_rises():
    torch.manual_seed(0)
    model = AOSRNet(AOSRNetConfig(**TINY))
    clean, hazy, _, _ = dust_pair(b=2, h=32, w=32)
    batch = {"input": hazy, "target": clean, "phi": phi_from_clean(clean, hazy)}
    loss_fn = AOSRLoss(lambda2=0)
    with torch.no_grad():
        untrained = model.eval()(hazy)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        total, _ = loss_fn(model(hazy, **loss_fn.model_kwargs), batch)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    model.eval()
    with torch.no_grad():
        restored = model(hazy)
    assert losses[-1] < 0.3 * losses[0], losses[::10]
    # Sixty steps of a width-8 net learn the per-band affine correction (about the input's own PSNR); getting
    # well past the input needs the spatially varying transmission, i.e. a few hundred steps.
    assert psnr(restored, clean) > psnr(untrained, clean) + 5


def test_tiny_overfit_with_contrastive_term(tmp_path):
    torch.manual_seed(0)
    # He-scaled random weights written straight into a state dict (no pretrained VGG can be fetched here).
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in VGG19Features().state_dict().items()}
    state = {
        k: torch.randn(shape) * math.sqrt(2.0 / math.prod(shape[1:])) if k.endswith("weight") else torch.zeros(shape)
        for k, shape in shapes.items()
    }
    path = tmp_path / "vgg19.safetensors"
    save_file(state, str(path))
    loss_fn = AOSRLoss(vgg_weights=path)
    model = AOSRNet(AOSRNetConfig(**TINY))
    clean, hazy, _, _ = dust_pair(b=1, h=24, w=24, seed=1)
    batch = {"input": hazy, "target": clean, "phi": phi_from_clean(clean, hazy)}
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = last = None
    for _ in range(30):
        total, parts = loss_fn(model(hazy, return_phi=True), batch)
        opt.zero_grad()
        total.backward()
        opt.step()
        first = parts if first is None else first
        last = parts
    # A random-weight VGG moves slowly; the L1 terms carry most of the early drop.
    assert last["total"] < 0.8 * first["total"], (first, last)
    assert last["contrastive"] < 0.9 * first["contrastive"], (first, last)


# --------------------------------------------------------------------------------------------------------------------
# The affine head: J = (1 + g) I + o
# --------------------------------------------------------------------------------------------------------------------


def test_affine_head_starts_as_the_identity_and_applies_gain_and_offset():
    torch.manual_seed(0)
    model = AOSRNet(AOSRNetConfig(head="affine", **TINY)).train()
    x = torch.rand(2, 3, 21, 30)
    j, gain = model(x, return_phi=True)
    torch.testing.assert_close(j, x)  # untrained: a clean scene passes through
    torch.testing.assert_close(gain, torch.ones_like(x))
    with torch.no_grad():  # constant maps: gain 1.5 in every band, offsets -0.1, 0, 0.2
        model.conv4.bias.copy_(torch.tensor([0.5, 0.5, 0.5, -0.1, 0.0, 0.2]))
    j, gain = model(x, return_phi=True)
    torch.testing.assert_close(gain, torch.full_like(x, 1.5))
    torch.testing.assert_close(j, 1.5 * x + torch.tensor([-0.1, 0.0, 0.2]).view(1, 3, 1, 1))
    assert model.conv4.out_channels == 6 and not isinstance(model.conv4, nn.Sequential)
    with pytest.raises(ValueError, match="head must be one of"):
        AOSRNetConfig(head="residual")


def test_smooth_maps_keep_detail_with_the_affine_form_but_not_with_eq5():
    """Why the affine head exists: exact targets, smoothed as a network's maps are, restore detail only as gain+offset."""
    g = torch.Generator().manual_seed(3)
    clean = 0.2 + 0.6 * torch.rand(1, 3, 64, 64, generator=g, dtype=torch.float64)  # pixel-scale texture
    a_s = torch.tensor([0.75, 0.6, 0.4], dtype=torch.float64).view(1, 3, 1, 1)
    t = torch.full((1, 1, 64, 64), 0.4, dtype=torch.float64)
    hazy = a_s + (clean - (1 - a_s)) * t

    def smooth(m):  # a 9x9 box: the maps vary only as slowly as the dust
        return F.avg_pool2d(F.pad(m, (4, 4, 4, 4), mode="replicate"), 9, stride=1)

    eq5 = restore_from_phi(hazy, smooth(phi_from_clean(clean, hazy)))
    gain = 1 / t  # the scattering model inverted: J = I / t + (A'_s - A_s / t)
    affine = smooth(gain) * hazy + smooth((1 - a_s) - a_s / t).expand_as(hazy)
    assert psnr(affine, clean) > 60
    detail = lambda x: (x - smooth(x)).std().item()  # noqa: E731
    assert detail(eq5) < detail(hazy) < detail(clean)  # Eq. 5 with a smooth Phi: softer than even the input
    assert detail(affine) == pytest.approx(detail(clean), rel=1e-6)


@pytest.mark.parametrize("map_smoothing, steps", [(0.0, 40), (1.5, 80)])
def test_affine_head_overfits_a_dust_pair(map_smoothing, steps):
    torch.manual_seed(0)
    model = AOSRNet(AOSRNetConfig(head="affine", map_smoothing=map_smoothing, width=4, num_res_blocks=1)).train()
    clean, hazy, _, _ = dust_pair(b=1, h=24, w=24)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.l1_loss(model(hazy), clean)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses[::10]


def test_map_smoothing_blurs_the_gain_and_offset_and_keeps_uniform_maps_exact():
    torch.manual_seed(0)
    sharp = AOSRNet(AOSRNetConfig(head="affine", **TINY)).eval()
    smooth = AOSRNet(AOSRNetConfig(head="affine", map_smoothing=2.0, **TINY)).eval()
    with torch.no_grad():
        nn.init.normal_(sharp.conv4.weight, std=0.05)  # maps with pixel-scale structure
        smooth.load_state_dict(sharp.state_dict())
        x = torch.rand(1, 3, 40, 36)
        gains = {m: m(x, return_phi=True)[1] for m in (sharp, smooth)}
        assert gradient_energy(gains[smooth]) < 0.2 * gradient_energy(gains[sharp])
        smooth.conv4.weight.zero_()  # uniform maps are their own blur, to the image's edges
        smooth.conv4.bias.copy_(torch.tensor([0.5, 0.5, 0.5, -0.1, 0.0, 0.2]))
        torch.testing.assert_close(smooth(x), (1.5 * x + torch.tensor([-0.1, 0.0, 0.2]).view(1, 3, 1, 1)).clamp(0, 1))
    with pytest.raises(ValueError, match="map_smoothing"):
        AOSRNetConfig(map_smoothing=2.0)  # the paper's Phi head has no offset map to smooth

