"""Contrastive regularisation (AECR-Net) and the AOSR-Net training loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from _random_vgg import random_vgg

from rsrestore.losses.aosr import AOSRLoss
from rsrestore.losses.contrastive import DEFAULT_WEIGHTS, ContrastiveLoss
from rsrestore.models.aosrnet import phi_from_clean
from rsrestore.vgg import VGG19Features




@pytest.fixture(scope="module")
def vgg() -> VGG19Features:
    return random_vgg()


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory, vgg) -> str:
    path = tmp_path_factory.mktemp("vgg") / "vgg19.safetensors"
    save_file(vgg.state_dict(), str(path))
    return str(path)


def images(b=2, c=3, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(b, c, h, w, generator=g)
    a = 0.6 + 0.3 * torch.rand(b, c, 1, 1, generator=g)
    t = 0.4 + 0.3 * torch.rand(b, 1, h, w, generator=g)
    hazy = a + (clean - (1 - a)) * t  # sand-dust model, I = A + (J - A') t
    return clean, hazy.clamp(0, 1)


def test_default_weights_are_the_papers(vgg):
    assert DEFAULT_WEIGHTS == (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    assert ContrastiveLoss(vgg).weights == (0.03125, 0.0625, 0.125, 0.25, 1.0)


def test_matches_numpy_closed_form(vgg):
    loss_fn = ContrastiveLoss(vgg)
    clean, hazy = images()
    out = 0.5 * clean + 0.5 * hazy + 0.05 * torch.rand(clean.shape, generator=torch.Generator().manual_seed(1))
    got = loss_fn(out, clean, hazy).item()
    fa, fp, fn = ([f.detach().double().numpy() for f in vgg(x)] for x in (out, clean, hazy))
    ref = sum(
        w * np.abs(a - p).mean() / (np.abs(a - n).mean() + 1e-7)
        for w, a, p, n in zip(DEFAULT_WEIGHTS, fa, fp, fn)
    )
    assert got == pytest.approx(ref, rel=1e-4)


def test_lower_when_output_is_positive_than_when_negative(vgg):
    loss_fn = ContrastiveLoss(vgg)
    clean, hazy = images()
    at_pos = loss_fn(clean, clean, hazy).item()
    at_neg = loss_fn(hazy, clean, hazy).item()
    assert at_pos == 0.0
    assert at_neg > 1e3  # d(a, n) = 0: only eps keeps it finite
    # Along the segment from clean to hazy the loss rises.
    mids = [loss_fn(torch.lerp(clean, hazy, s), clean, hazy).item() for s in (0.1, 0.5, 0.9)]
    assert mids[0] < mids[1] < mids[2]


def test_gradient_reaches_output_only(vgg):
    loss_fn = ContrastiveLoss(vgg)
    clean, hazy = images(b=1, h=16, w=16)
    out = torch.lerp(clean, hazy, 0.5).requires_grad_(True)
    pos = clean.clone().requires_grad_(True)
    loss_fn(out, pos, hazy).backward()
    assert out.grad is not None and out.grad.abs().sum() > 0
    assert pos.grad is None  # the positive is a fixed reference, as in AECR-Net
    assert all(p.grad is None and not p.requires_grad for p in loss_fn.vgg.parameters())
    loss_fn.train()
    assert not loss_fn.vgg.training


def test_band_selection_for_multispectral(vgg):
    clean, hazy = images(c=4, h=16, w=16)
    out = torch.lerp(clean, hazy, 0.3)
    pick = [2, 1, 0]
    four = ContrastiveLoss(vgg, bands=(2, 1, 0))(out, clean, hazy)
    three = ContrastiveLoss(vgg)(out[:, pick], clean[:, pick], hazy[:, pick])
    torch.testing.assert_close(four, three)
    with pytest.raises(ValueError, match="3 \\(RGB\\) or 1 band"):
        ContrastiveLoss(vgg)(out, clean, hazy)
    with pytest.raises(ValueError, match="out of range"):
        ContrastiveLoss(vgg, bands=(0, 1, 7))(out, clean, hazy)


def test_contrastive_bad_arguments(vgg):
    with pytest.raises(ValueError, match="5 VGG taps"):
        ContrastiveLoss(vgg, weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="VGG19Features"):
        ContrastiveLoss(nn.Identity())
    with pytest.raises(ValueError, match="same shape"):
        ContrastiveLoss(vgg)(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))


def test_aosr_loss_needs_vgg_weights_for_lc():
    with pytest.raises(ValueError, match="pass `vgg_weights`.*or set `lambda2: 0`"):
        AOSRLoss()
    assert AOSRLoss(lambda2=0).contrastive is None
    assert AOSRLoss.model_kwargs == {"return_phi": True}


def test_aosr_loss_closed_form_without_lc():
    clean, hazy = images()
    phi_gt = phi_from_clean(clean, hazy)
    g = torch.Generator().manual_seed(3)
    j = clean + 0.1 * torch.randn(clean.shape, generator=g)
    phi = phi_gt + 0.2 * torch.randn(clean.shape, generator=g)
    total, parts = AOSRLoss(lambda2=0)((j, phi), {"input": hazy, "target": clean, "phi": phi_gt})
    l1_j = (j - clean).abs().mean().item()
    l1_phi = (phi - phi_gt).abs().mean().item()
    assert parts["l1_j"] == pytest.approx(l1_j, rel=1e-6)
    assert parts["l1_phi"] == pytest.approx(l1_phi, rel=1e-6)
    assert total.item() == pytest.approx(0.25 * (l1_j + l1_phi), rel=1e-6)
    assert parts["total"] == pytest.approx(total.item())
    # Without a "phi" entry the target comes from the pair itself (Eq. 5 inverted).
    total2, _ = AOSRLoss(lambda2=0)((j, phi), {"input": hazy, "target": clean})
    assert total2.item() == pytest.approx(total.item(), rel=1e-6)


def test_aosr_loss_with_contrastive_term(vgg, vgg_file):
    clean, hazy = images(h=16, w=16)
    phi_gt = phi_from_clean(clean, hazy)
    j = torch.lerp(clean, hazy, 0.4)
    loss = AOSRLoss(vgg_weights=vgg_file)
    total, parts = loss((j, phi_gt), {"input": hazy, "target": clean, "phi": phi_gt})
    lc = ContrastiveLoss(vgg)(j, clean, hazy).item()
    assert parts["contrastive"] == pytest.approx(lc, rel=1e-5)
    assert total.item() == pytest.approx(0.25 * (F.l1_loss(j, clean).item() + 0.0) + 0.5 * lc, rel=1e-5)
    assert set(parts) == {"l1_phi", "l1_j", "contrastive", "total"}


def test_aosr_loss_bad_inputs():
    clean, hazy = images(h=8, w=8)
    loss = AOSRLoss(lambda2=0)
    with pytest.raises(ValueError, match="return_phi=True"):
        loss(clean, {"input": hazy, "target": clean})
    with pytest.raises(ValueError, match="no 'target'"):
        loss((clean, clean), {"input": hazy})
    with pytest.raises(ValueError, match="shape mismatch"):
        loss((clean[..., :4], clean), {"input": hazy, "target": clean})
    with pytest.raises(ValueError, match=">= 0"):
        AOSRLoss(lambda1=-1, lambda2=0)
