"""ASPDiff: SimAM and the DCT attention against their formulas, the frequency loss against a per-block DCT, tiny
overfits of each part, every ablation switch training through the `aspdiff` objective, seeded restores, seamless
tiled sampling, and `rsrestore restore --method aspdiff --steps --seed` on a GeoTIFF."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from scipy.fft import dctn
from torch import Tensor, nn
from typer.testing import CliRunner

from _random_vgg import random_vgg
from _statistics_records import count_records
from _train_data import make_pairs, write_yaml

from rsrestore.cli import app
from rsrestore.models.aspdiff import ASPDiff, ASPDiffConfig, FrequencyChannelAttention, simam
from rsrestore.models.aspdiff.harm import DCT_GRID, TOP16_FREQUENCIES, dct2
from rsrestore.models.aspdiff.restorer import frequency_consistency_loss
from rsrestore.physics.scattering import haze_forward
from rsrestore.tiling import restore_array
from rsrestore.train.objectives import ObjectiveContext, aspdiff

# Tiny widths; APEM without its guided filter keeps the tiling halo (24 pixels) small for a small scene.
TINY = dict(dim=8, dim_mults=(1, 2), heads=2, dim_head=8, harm_width=16, apem_width=4, apem_guided_radius=0, steps=3)
SWITCHES = ("use_apem", "use_dape", "use_harm", "refine_priors", "prior_supervision")


def hazy_pair(size: int = 32, batch: int = 2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Smooth clean scenes and their haze through the scattering model (a transmission ramp, a bluish light)."""
    g = torch.Generator().manual_seed(seed)
    clean = F.interpolate(torch.rand(batch, 3, 6, 6, generator=g), size=(size, size), mode="bilinear")
    clean = (0.8 * clean + 0.1).clamp(0, 1)
    t = torch.linspace(0.35, 0.85, size).view(1, 1, 1, size).expand(batch, 1, size, size)
    return haze_forward(clean, t, torch.tensor([0.8, 0.85, 0.9])).clamp(0, 1), clean


def psnr(a: Tensor, b: Tensor) -> float:
    return float(-10 * torch.log10(F.mse_loss(a.clamp(0, 1), b)))


# --------------------------------------------------------------------------------------------------------------------
# HARM's attentions and the frequency loss against direct formulas


def test_simam_matches_its_formula():
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    out = simam(x, lam=1e-4).numpy()
    xs = x.numpy()
    for b in range(2):
        for c in range(3):
            m = xs[b, c]
            n = m.size
            d = (m - m.mean()) ** 2
            y = d / (4 * (d.sum() / (n - 1) + 1e-4)) + 0.5
            np.testing.assert_allclose(out[b, c], m / (1 + np.exp(-y)), rtol=1e-12)
    with pytest.raises(ValueError, match="2 pixels"):
        simam(torch.ones(1, 1, 1, 1))


def test_dct_pooling_is_the_explicit_sum_over_cosines():
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    np.testing.assert_allclose(dct2(x).numpy(), dctn(x.numpy(), axes=(-2, -1), norm="ortho"), atol=1e-12)

    channels = 32
    attention = FrequencyChannelAttention(channels).double()
    feats = torch.randn(2, channels, 21, 14, dtype=torch.float64)
    pooled = F.adaptive_avg_pool2d(feats, DCT_GRID).numpy()
    n = DCT_GRID
    expected = np.zeros((2, channels))
    for c in range(channels):
        u, v = TOP16_FREQUENCIES[c // (channels // 16)]
        cu, cv = math.sqrt((1 if u == 0 else 2) / n), math.sqrt((1 if v == 0 else 2) / n)
        for i in range(n):
            for j in range(n):
                basis = cu * math.cos(math.pi * u * (i + 0.5) / n) * cv * math.cos(math.pi * v * (j + 0.5) / n)
                expected[:, c] += pooled[:, c, i, j] * basis
    # the basis buffer is built in float32 (the module's dtype) before .double(): agreement to float32 precision
    np.testing.assert_allclose(attention.spectral_pool(feats).numpy(), expected, atol=1e-6)
    # the features are rescaled by sigmoid(MLP(pooled)), channel by channel
    weights = torch.sigmoid(attention.mlp(torch.from_numpy(expected)))
    torch.testing.assert_close(attention(feats), feats * weights[:, :, None, None], atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="divisible by 16"):
        FrequencyChannelAttention(24)


def test_frequency_loss_is_the_sub_band_normalised_block_dct_difference():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(1, 2, 16, 24, generator=g), torch.rand(1, 2, 16, 24, generator=g)
    p, t = pred.double().numpy(), target.double().numpy()
    diff, size = np.zeros(16), np.zeros(16)
    for by in range(2):
        for bx in range(3):
            block = (..., slice(8 * by, 8 * by + 8), slice(8 * bx, 8 * bx + 8))
            cp, ct = dctn(p[block], axes=(-2, -1), norm="ortho"), dctn(t[block], axes=(-2, -1), norm="ortho")
            for k in range(16):
                u, v = divmod(k, 4)
                sub = (..., slice(2 * u, 2 * u + 2), slice(2 * v, 2 * v + 2))
                diff[k] += np.abs(cp[sub] - ct[sub]).sum()
                size[k] += np.abs(ct[sub]).sum()
    expected = np.mean(diff / (size + 1e-2 * 2 * 2 * 2 * 6))  # eps is added to the mean magnitude, 24 values a band
    np.testing.assert_allclose(float(frequency_consistency_loss(pred, target)), expected, rtol=1e-5)
    assert float(frequency_consistency_loss(target, target)) == 0.0


# --------------------------------------------------------------------------------------------------------------------
# Tiny overfits


def test_apem_and_harm_as_a_regressor_overfit_a_hazy_pair():
    torch.manual_seed(0)
    model = ASPDiff(ASPDiffConfig(**TINY, use_dape=False))
    hazy, clean = hazy_pair()
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        parts = model(hazy, target=clean)
        optim.zero_grad()
        parts["total"].backward()
        optim.step()
        losses.append(parts["total"].item())
    assert set(parts) == {"reconstruction", "frequency", "apem", "tv", "total"}
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    model.eval()
    assert psnr(model(hazy), clean) > psnr(hazy, clean) + 3


def test_dape_noise_loss_falls_on_a_fixed_draw():
    torch.manual_seed(0)
    model = ASPDiff(ASPDiffConfig(**TINY))
    hazy, clean = hazy_pair()
    with torch.no_grad():
        priors = model.priors(hazy)
    optim = torch.optim.Adam(model.dape.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):  # the same timesteps and noise at every step: the denoiser can fit them
        loss, estimate = model.dape.loss(hazy, clean, priors, torch.Generator().manual_seed(3))
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert estimate.shape == clean.shape
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5]), losses


# --------------------------------------------------------------------------------------------------------------------
# The residual form: DAPE diffuses the correction to APEM's inversion


RESIDUAL = dict(TINY, residual=True, prediction="pred_x0")


def test_untrained_residual_form_is_apems_inversion_and_a_clear_scene_stays():
    torch.manual_seed(0)
    model = ASPDiff(ASPDiffConfig(**RESIDUAL)).eval()
    hazy, clean = hazy_pair()
    with torch.no_grad():
        priors = model.priors(hazy)
        apem_alone = model.base(hazy, priors)
        restored = model(hazy)
    assert torch.equal(restored, apem_alone.clamp(0, 1))  # zero correction, HARM the identity: APEM's output
    assert psnr(restored, clean) > psnr(hazy, clean)
    # The paper's form samples the image from noise: untrained, it is nowhere near the input.
    paper = ASPDiff(ASPDiffConfig(**TINY)).eval()
    with torch.no_grad():
        assert psnr(paper(hazy), clean) < psnr(hazy, clean) - 3


def test_residual_form_learns_to_leave_a_clear_scene_alone():
    """Trained on clean-to-clean pairs, the correction goes to APEM's own change of the clear scene, whichever noise
    the sampler starts from."""
    torch.manual_seed(0)
    model = ASPDiff(ASPDiffConfig(**RESIDUAL))
    _, clear = hazy_pair(seed=1)
    with torch.no_grad():
        before = psnr(model.eval()(clear), clear)
    model.train()
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        parts = model(clear, target=clear)
        optim.zero_grad()
        parts["total"].backward()
        optim.step()
        losses.append(parts["total"].item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    model.eval()
    with torch.no_grad():
        outs = [model(clear, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    assert min(psnr(o, clear) for o in outs) > max(before + 3, 30)
    assert psnr(outs[0], outs[1]) > 40  # the starting noise hardly matters


def test_residual_form_rejects_an_unknown_prediction():
    with pytest.raises(ValueError, match="pred_x0"):
        ASPDiff(ASPDiffConfig(**dict(RESIDUAL, prediction="pred_res")))


# --------------------------------------------------------------------------------------------------------------------
# Ablation switches, through the trainer's objective


@pytest.mark.parametrize("residual", (False, True))
@pytest.mark.parametrize("switch", (None, *SWITCHES))
def test_every_ablation_switch_builds_and_trains_a_step(switch, residual):
    torch.manual_seed(0)
    cfg = ASPDiffConfig(**(RESIDUAL if residual else TINY), **({switch: False} if switch else {}))
    model = ASPDiff(cfg)
    hazy, clean = hazy_pair()
    batch = {"input": hazy, "target": clean}
    out = aspdiff(model, batch, ObjectiveContext(loss=nn.Identity(), model_kwargs={}, needs_sar=False))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optim = torch.optim.SGD(model.parameters(), lr=1e-2)
    out.loss.backward()
    optim.step()
    assert torch.isfinite(out.loss) and out.prediction is None
    logged = set(out.logs)
    assert ("loss_diffusion" in logged) == cfg.use_dape
    assert ("loss_apem" in logged) == (cfg.use_apem and cfg.refine_priors and cfg.prior_supervision)
    assert ("loss_tv" in logged) == (cfg.use_apem and cfg.refine_priors)
    assert (model.apem is None) == (not cfg.use_apem) and (model.harm is None) == (not cfg.use_harm)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("dape.") for k in changed)
    if cfg.use_apem and cfg.refine_priors:  # the refinement trains, with or without the prior loss
        assert any(k.startswith("apem.") for k in changed)
    # validation restores the images with the validation generator
    model.eval()
    val = aspdiff(model, batch, ObjectiveContext(loss=nn.Identity(), model_kwargs={}, needs_sar=False,
                                                 training=False, generator=torch.Generator().manual_seed(0)),
                  val_steps=2)
    assert val.prediction.shape == clean.shape and 0 <= float(val.prediction.min())


def test_the_perceptual_term_counts_only_with_vgg19():
    model = ASPDiff(ASPDiffConfig(**TINY))
    hazy, clean = hazy_pair()
    assert "perceptual" not in model(hazy, target=clean)
    parts = model(hazy, target=clean, vgg=random_vgg().freeze())
    assert float(parts["perceptual"]) > 0
    torch.testing.assert_close(parts["total"], sum(v for k, v in parts.items() if k != "total"))


def test_rsrestore_train_runs_the_aspdiff_objective(tmp_path):
    pairs = make_pairs(tmp_path / "pairs", n=4, size=32)
    cfg = {
        "model": {"name": "aspdiff", "config": {**TINY, "dim_mults": [1, 2]}},
        "data": {"train": {"kind": "paired", "root": str(pairs)}, "val": {"kind": "paired", "root": str(pairs)},
                 "batch_size": 2},
        "objective": {"name": "aspdiff", "params": {"val_steps": 2}},
        "optim": {"name": "adam", "lr": 1e-3},
        "run": {"out_dir": str(tmp_path / "run"), "steps": 3, "log_every": 1, "val_every": 0, "ckpt_every": 0,
                "max_val_images": 2, "seed": 0, "device": "cpu", "progress": False},
    }
    result = CliRunner().invoke(app, ["train", str(write_yaml(tmp_path / "aspdiff.yaml", cfg))])
    assert result.exit_code == 0, result.output
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert "loss_diffusion" in log[0] and len(log) == 4
    meta = json.loads((tmp_path / "run" / "final.json").read_text())
    assert 0 < meta["val_scores"]["val_psnr"] < 100


# --------------------------------------------------------------------------------------------------------------------
# Restoring: seeds, tiles, the command line


def test_restore_is_deterministic_given_the_seed():
    torch.manual_seed(0)
    model = ASPDiff(ASPDiffConfig(**TINY)).eval()
    hazy, _ = hazy_pair(size=30, batch=1)  # not a multiple of the stride: padded and cropped back
    first = model(hazy)
    assert first.shape == hazy.shape
    torch.testing.assert_close(model(hazy), first, rtol=0, atol=0)
    assert (model(hazy, generator=torch.Generator().manual_seed(1)) - first).abs().mean() > 1e-3
    assert (model(hazy, steps=1) - first).abs().mean() > 1e-3


class LocalDenoiser(nn.Module):
    """Stands in for DAPE's U-Net with 3x3 convolutions only, which the halo covers: any tiled-vs-whole difference left
    is the noise's and the priors'. Same interface as :class:`rsrestore.models.aspdiff.PriorUNet` where DAPE calls it."""

    stride = 1

    def __init__(self, bands: int = 3, cond_channels: int = 7, width: int = 8) -> None:
        super().__init__()
        self.cond = nn.Conv2d(cond_channels, width, 3, padding=1)
        self.body = nn.Conv2d(2 * bands, width, 3, padding=1)
        self.out = nn.Conv2d(width, bands, 3, padding=1)

    def encode_condition(self, cond: Tensor) -> Tensor:
        return self.cond(cond)

    def forward(self, x_t: Tensor, t: Tensor, cond_features: Tensor, injection: Tensor) -> Tensor:
        h = self.body(torch.cat([x_t, injection], dim=1)) + cond_features
        return self.out(torch.tanh(h + t.view(-1, 1, 1, 1) / 1000))


class WithoutOrigins(nn.Module):
    """The same restorer with a forward that does not take ``origins``: each tile draws its own noise."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.scene_statistics = model.scene_statistics
        self.halo = model.halo

    def forward(self, x: Tensor, stats=None) -> Tensor:
        return self.model(x, stats=stats)


def tiled(model: nn.Module, image: Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small tiles are slow, which is what a small test wants
        return restore_array(model, image, tile=32, overlap=8, batch_size=4)


def test_tiled_sampling_matches_whole_image_sampling():
    torch.manual_seed(0)
    model = ASPDiff(ASPDiffConfig(**TINY, use_harm=False))
    model.dape.net = LocalDenoiser()
    model.eval()
    hazy, _ = hazy_pair(size=96, batch=1, seed=2)
    image = hazy[0]
    assert model.halo == 24  # APEM's dark-channel window and transmission network; tiles read 80 pixels at most
    whole = model(image[None], origins=[(0, 0)])[0].numpy()
    out = tiled(model, image)
    # the scene's atmospheric light reaches every tile and the noise is drawn by scene position: float32 rounding
    # apart (the DDIM steps amplify it), the tiles sample the whole image's result
    assert np.abs(out - whole).max() < 2e-3
    assert np.abs(tiled(WithoutOrigins(model), image) - whole).max() > 20 * max(np.abs(out - whole).max(), 1e-4)


class WithoutSceneStatistics(nn.Module):
    """The same restorer with the scene's atmospheric light but without its layers' statistics: every tile's GroupNorm,
    linear attention, channel attention and SimAM compute over that tile alone."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.halo = model, model.halo

    def scene_statistics(self, x: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        stats = self.model.scene_statistics(x, mask)
        del stats["scene"]
        return stats

    def forward(self, x: Tensor, stats=None, origins=None) -> Tensor:
        return self.model(x, stats=stats, origins=origins)


def test_tiles_replay_the_scene_statistics_so_the_whole_network_tiles_seamlessly(monkeypatch):
    torch.manual_seed(0)
    model = ASPDiff(ASPDiffConfig(**TINY)).eval()  # untrained: every layer as built
    nn.init.normal_(model.harm.tail.weight, std=0.1)  # HARM's output layer starts at zero: let its attentions count
    image = hazy_pair(size=96, batch=1, seed=2)[0][0]
    whole = model(image[None], origins=[(0, 0)])[0].numpy()
    records = count_records(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small tiles are slow, which is what a small test wants
        out = restore_array(model, image, tile=48, overlap=16, batch_size=4)
        alone = restore_array(WithoutSceneStatistics(model), image, tile=48, overlap=16, batch_size=4)
    assert len(records) == 1  # once per scene, not per tile
    # Measured: tiles replaying the whole scene's statistics are within 3e-4 of it (max; under 1e-6 on average: what
    # a tile's border cuts from the convolutions' view); on their own statistics they are 0.73 off (mean 0.0052), and
    # with HARM's attentions alone on their own, 0.031 (mean 0.0025)
    assert np.abs(out - whole).max() < 2e-3
    assert np.abs(alone - whole).max() > 0.2 and np.abs(alone - whole).mean() > 100 * np.abs(out - whole).mean()


def test_restore_command_with_steps_and_seed(tmp_path, geotiff_factory):
    torch.manual_seed(0)
    config = {**TINY, "dim_mults": [1, 2]}
    weights = tmp_path / "tiny.safetensors"
    save_file(ASPDiff(ASPDiffConfig(**TINY)).state_dict(), weights)
    weights.with_suffix(".json").write_text(json.dumps({"method": "aspdiff", "config": config}))
    src, _ = geotiff_factory(height=40, width=48)
    runner = CliRunner()

    def restore(name: str, *options: str) -> np.ndarray:
        out = tmp_path / f"{name}.tif"
        result = runner.invoke(app, ["restore", str(src), "-o", str(out), "--method", "aspdiff", "--weights",
                                     str(weights), "-q", *options])
        assert result.exit_code == 0, result.output
        with rasterio.open(out) as ds, rasterio.open(src) as ref:
            assert ds.crs == ref.crs and ds.transform == ref.transform and ds.shape == ref.shape
            return ds.read().astype(int)

    first = restore("a", "--steps", "2", "--seed", "0")
    np.testing.assert_array_equal(restore("b", "--steps", "2", "--seed", "0"), first)
    assert np.abs(restore("c", "--steps", "2", "--seed", "1") - first).mean() > 1
