"""APEM's ``ft_scale``: f_t on block means with the one full-resolution guided filter after it (the ``apem`` method's
default), and ``ft_scale: 1``, the full-resolution f_t that weights trained before the option need. Each is checked
against its formula written out with the physics functions, tiles against the whole image at odd block-grid offsets
(and without the offsets, which must differ), and which default each owner gets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from rsrestore.classical.dcp import DarkChannelPrior, DCPConfig
from rsrestore.models.aspdiff.apem import APEM, APEMConfig
from rsrestore.models.aspdiff.apem_dehazer import DEFAULT_FT_SCALE, APEMDehazer
from rsrestore.models.aspdiff.restorer import ASPDiffConfig
from rsrestore.models.registry import ModelError, load_model
from rsrestore.physics.dark_channel import atmospheric_light, dark_channel, refined_transmission, transmission_estimate
from rsrestore.physics.guided_filter import guided_filter
from rsrestore.tiling import restore_array

from test_apem import _randomised, one_thread  # noqa: F401 (an autouse fixture: these tensors are tiny too)


def _scene(shape=(1, 3, 45, 38), seed=0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * 0.6 + 0.3


def test_defaults_per_owner_and_checkpoints_choose_with_ft_scale(tmp_path):
    assert DEFAULT_FT_SCALE == 2
    assert APEMDehazer().cfg.ft_scale == 2 and APEMDehazer().apem.ft_scale == 2
    assert load_model("apem", weights=None).apem.ft_scale == 2
    # ASPDiff builds its APEM from a config without ft_scale: full resolution, as its weights were trained.
    assert APEM(ASPDiffConfig().apem_config).ft_scale == 1 and APEM().ft_scale == 1
    # A checkpoint of the old architecture says ft_scale: 1 in its sidecar; one without the key gets the new default.
    weights = tmp_path / "apem.safetensors"
    save_file(APEMDehazer(APEMConfig(width=4)).state_dict(), str(weights))
    weights.with_suffix(".json").write_text(json.dumps({"config": {"width": 4, "ft_scale": 1}}))
    assert load_model("apem", weights=str(weights)).apem.ft_scale == 1
    weights.with_suffix(".json").write_text(json.dumps({"config": {"width": 4}}))
    assert load_model("apem", weights=str(weights)).apem.ft_scale == 2
    for bad in (0, -1, 1.5, True):
        with pytest.raises((ValueError, ModelError), match="ft_scale"):
            load_model("apem", weights=None, config={"width": 4, "ft_scale": bad})


def test_ft_scale_one_is_the_full_resolution_residual_on_the_guided_map():
    """The formula weights trained before the option rely on: t = sigmoid(logit(t0) + f_t(I, t0)) with t0 the
    guided dark-channel map at full resolution, f_A on (I, t0) at full resolution."""
    cfg = APEMConfig(width=8, guided_radius=5, ft_scale=1)
    model = _randomised(APEMDehazer(cfg)).eval()
    x = _scene()
    with torch.inference_mode():
        _, p = model(x, return_priors=True)
        a0 = atmospheric_light(x, dark_channel(x, 15))
        t0 = refined_transmission(x, a0, omega=0.95, patch=15, guided_radius=5, guided_eps=cfg.guided_eps)
        base = t0.clamp(1e-3, 1 - 1e-4)
        t = torch.sigmoid(torch.logit(base) + model.apem.f_t(x, base))
        shift, _ = model.apem.f_a(x, t0, a0)
    assert torch.equal(p.t0, t0) and torch.equal(p.t, t)
    assert torch.allclose(p.airlight, (a0 + 0.3 * torch.tanh(shift)).clamp(1e-3, 1.0))


@pytest.mark.parametrize("scale", [2, 3])
def test_reduced_ft_corrects_block_means_and_one_guided_filter_brings_it_back(scale):
    """t = GF(I, t_est + up(sigmoid(logit(t0') + f_t(I', t0')) - t0')) with I', t0' block means (odd sizes: partial
    blocks at the end), and f_t sees only the reduced image."""
    cfg = APEMConfig(width=8, guided_radius=5, ft_scale=scale)
    model = _randomised(APEMDehazer(cfg)).eval()
    x = _scene()
    seen = []
    model.apem.f_t.head.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    with torch.inference_mode():
        _, p = model(x, return_priors=True)
        a0 = atmospheric_light(x, dark_channel(x, 15))
        t_est = transmission_estimate(x, a0, omega=0.95, patch=15)
        small = F.avg_pool2d(x, scale, ceil_mode=True)
        base = F.avg_pool2d(t_est, scale, ceil_mode=True).clamp(0, 1).clamp(1e-3, 1 - 1e-4)
        logit = torch.logit(base)
        delta = torch.sigmoid(logit + model.apem.f_t(small, base)) - torch.sigmoid(logit)
        up = F.interpolate(delta, scale_factor=scale, mode="bilinear", align_corners=False)[..., :45, :38]
        t = guided_filter(x, t_est + up, radius=5, eps=cfg.guided_eps).clamp(1e-3, 1.0)
        stats = model.scene_statistics(x)
    assert seen[0] == (1, 4, -(-45 // scale), -(-38 // scale))
    assert float(up.abs().max()) > 1e-3  # the correction is not nothing
    assert torch.allclose(p.t, t, atol=1e-6)
    assert torch.equal(p.t0, t_est)
    # What a scene's tiles get from scene_statistics is what the whole image computes for itself.
    assert torch.equal(stats["airlight"], p.airlight) and torch.equal(stats["exponent"], p.exponent)


@pytest.mark.parametrize("scale", [2, 4])
def test_untrained_reduced_apem_is_still_the_dark_channel_prior(scale):
    x = _scene((2, 3, 50, 41), seed=1)
    model = APEMDehazer(APEMConfig(width=8, ft_scale=scale))
    dcp = DarkChannelPrior(DCPConfig(guided_radius=model.cfg.guided_radius, guided_eps=model.cfg.guided_eps,
                                     t0=model.cfg.t_min))
    with torch.inference_mode():
        restored, p = model(x, return_priors=True)
        airlight = dcp.scene_statistics(x)["airlight"]
        dcp_t = dcp.transmission(x, airlight)
        expected = dcp(x, stats={"airlight": airlight})
    valid = dcp_t > 1e-3
    assert torch.equal(p.t[valid], dcp_t[valid])
    assert torch.allclose(restored, expected, atol=1e-6)


class _NoOrigins(nn.Module):
    """The same dehazer with a forward that does not take ``origins``: each tile's blocks start at its own corner."""

    def __init__(self, model: APEMDehazer):
        super().__init__()
        self.model = model
        self.halo = model.halo

    def scene_statistics(self, x, mask=None):
        return self.model.scene_statistics(x, mask)

    def forward(self, x: Tensor, stats=None) -> Tensor:
        return self.model(x, stats=stats)


def test_tiles_at_odd_block_offsets_equal_the_whole_image_and_need_their_origins():
    model = _randomised(APEMDehazer(APEMConfig(width=8, guided_radius=4, ft_scale=2))).eval()
    scene = _scene((1, 3, 205, 231), seed=2)[0].numpy()
    with torch.inference_mode():
        whole = model(torch.from_numpy(scene)[None])[0].numpy()
    # Tiles of 64 with overlap 7 start at odd rows and columns (57, 114, ... and the end-aligned last one), and a
    # batch of 3 mixes block-grid offsets.
    tiled = restore_array(model, scene, tile=64, overlap=7, batch_size=3)
    np.testing.assert_allclose(tiled, whole, atol=2e-5)
    misaligned = restore_array(_NoOrigins(model), scene, tile=64, overlap=7, batch_size=3)
    assert np.abs(misaligned - whole).max() > 1e-4
