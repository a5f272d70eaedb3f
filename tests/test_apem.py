"""APEM (ASPDiff's atmospheric prior estimation) and the `apem` haze method: the loss against its closed form, the
priors' ranges and shapes, the ablation switches against the dark channel prior, a tiny overfit, tiled == whole, and
the CLI on a GeoTIFF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from rsrestore.classical.dcp import DarkChannelPrior, DCPConfig
from rsrestore.cli import app
from rsrestore.models.aspdiff.apem import APEM, APEMConfig, Priors, apem_loss, total_variation
from rsrestore.models.aspdiff.apem_dehazer import APEMDehazer
from rsrestore.models.registry import load_model
from rsrestore.physics.scattering import haze_forward
from rsrestore.tiling import restore_array
from rsrestore.train.objectives import OBJECTIVES, ObjectiveContext

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: more threads only add synchronisation, which costs seconds on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomised(model: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """The zero-initialised output layers given random values, so the refinement actually changes the priors."""
    g = torch.Generator().manual_seed(seed)
    apem = model.apem if isinstance(model, APEMDehazer) else model
    with torch.no_grad():
        for p in (apem.f_t.tail.weight, apem.f_t.tail.bias, apem.f_a.mlp[-1].weight, apem.f_a.mlp[-1].bias):
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def _hazy_pair(bands: int = 3, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(2, bands, size, size, generator=g) * 0.8 + 0.1
    t = 0.2 + 0.8 * torch.rand(2, 1, size, size, generator=g)  # >= 0.2: above the loss's eps
    airlight = 0.7 + 0.3 * torch.rand(2, bands, generator=g)
    return clean, t, airlight


def test_apem_loss_recovers_j_exactly_with_the_true_priors():
    clean, t, airlight = _hazy_pair()
    hazy = haze_forward(clean, t, airlight)
    priors = Priors(t=t, airlight=airlight, t0=t, airlight0=airlight)
    assert float(apem_loss(hazy, priors, clean)) < 1e-6
    # Per-band transmission t ** gamma_c (Angstrom's law) is inverted exactly too.
    gamma = torch.tensor([[0.8, 1.0, 1.2], [0.7, 1.0, 1.3]])
    hazy_bands = haze_forward(clean, t ** gamma[:, :, None, None], airlight)
    assert float(apem_loss(hazy_bands, priors._replace(exponent=gamma), clean)) < 1e-6
    # ... and without the exponents the same haze is not.
    assert float(apem_loss(hazy_bands, priors, clean)) > 1e-3


def test_apem_loss_matches_its_closed_form_with_floor_and_tv():
    clean, t, airlight = _hazy_pair()
    hazy = haze_forward(clean, t, airlight)
    wrong_t = (t * 0.5).clamp_min(0.01)  # partly below eps = 0.05
    priors = Priors(t=wrong_t, airlight=airlight * 0.9, t0=t, airlight0=airlight)
    a = (airlight * 0.9)[:, :, None, None]
    expected = ((hazy - a * (1 - wrong_t)) / wrong_t.clamp_min(0.05) - clean).abs().mean()
    tv = (wrong_t[..., 1:, :] - wrong_t[..., :-1, :]).abs().mean() + (wrong_t[..., 1:] - wrong_t[..., :-1]).abs().mean()
    assert float(apem_loss(hazy, priors, clean, eps=0.05)) == pytest.approx(float(expected), rel=1e-5)
    assert float(apem_loss(hazy, priors, clean, eps=0.05, tv_weight=0.5)) == pytest.approx(
        float(expected + 0.5 * tv), rel=1e-5)
    assert float(total_variation(wrong_t)) == pytest.approx(float(tv), rel=1e-6)


@pytest.mark.parametrize("bands", [3, 4, 13])
def test_priors_ranges_and_shapes_for_any_band_count(bands):
    model = _randomised(APEM(APEMConfig(in_channels=bands, width=8)), scale=3.0)
    x = torch.rand(2, bands, 40, 36)
    p = model(x)
    assert p.t.shape == p.t0.shape == (2, 1, 40, 36)
    assert p.airlight.shape == p.airlight0.shape == p.exponent.shape == (2, bands)
    assert bool((p.t > 0).all()) and bool((p.t <= 1).all())
    assert not torch.allclose(p.t, p.t0.clamp(1e-3, 1))  # f_t changed the map
    assert not torch.allclose(p.airlight, p.airlight0)  # f_A changed the airlight
    assert bool((p.airlight > 0).all()) and bool((p.airlight <= 1).all())  # within the value range
    restored = APEMDehazer(model.cfg)(x)
    assert restored.shape == x.shape and restored.min() >= 0 and restored.max() <= 1


def test_untrained_and_unrefined_apem_is_the_dark_channel_prior():
    x = torch.rand(2, 3, 48, 48) * 0.6 + 0.3
    cfg = APEMConfig(width=8)
    dcp = DarkChannelPrior(DCPConfig(guided_radius=cfg.guided_radius, guided_eps=cfg.guided_eps, t0=cfg.t_min))
    airlight = dcp.scene_statistics(x)["airlight"]
    dcp_t = dcp.transmission(x, airlight)
    for refine in (False, True):  # the ablation switches off, or on with zero-initialised output layers
        off = APEMConfig(width=8, refine_transmission=refine, refine_airlight=refine)
        model = APEMDehazer(off)
        if not refine:
            _randomised(model)  # switches off: the networks' values must not matter
        restored, p = model(x, return_priors=True)
        assert torch.equal(p.airlight, airlight) and torch.equal(p.airlight0, airlight)
        valid = dcp_t > 1e-3
        assert torch.allclose(p.t[valid], dcp_t[valid], atol=1e-6)
        assert torch.allclose(restored, dcp(x, stats={"airlight": airlight}), atol=1e-5)
    # With refinement switched on and trained (here: random) weights, the result departs from DCP.
    assert not torch.allclose(_randomised(APEMDehazer(cfg))(x), dcp(x), atol=1e-3)


def test_tiny_overfit_with_the_apem_objective():
    torch.manual_seed(0)
    clean, t, airlight = _hazy_pair(size=24, seed=1)
    t = t.mean(dim=(2, 3), keepdim=True).expand_as(t).contiguous()  # smooth haze, as the scattering prior assumes
    batch = {"input": haze_forward(clean, t, airlight), "target": clean}
    model = APEMDehazer(APEMConfig(width=8, guided_radius=4)).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ctx = ObjectiveContext(loss=torch.nn.Identity(), model_kwargs={}, needs_sar=False)
    losses = []
    for _ in range(30):
        out = OBJECTIVES["apem"](model, batch, ctx)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss))
    assert {"loss_prior", "loss_tv", "loss_output"} <= set(out.logs)
    assert out.prediction.shape == clean.shape
    assert losses[-1] < 0.6 * losses[0], losses[::8]


@pytest.mark.parametrize("ft_scale", [1, 2])
def test_tiled_restore_equals_whole_restore(ft_scale):
    model = _randomised(APEMDehazer(APEMConfig(width=8, guided_radius=6, ft_scale=ft_scale))).eval()
    g = torch.Generator().manual_seed(3)
    scene = (torch.rand(3, 150, 170, generator=g) * 0.5 + 0.3).numpy()
    with torch.inference_mode():
        whole = model(torch.from_numpy(scene)[None])[0].numpy()
    tiled = restore_array(model, scene, tile=64, overlap=8)
    radius = model.apem.f_t.radius
    assert model.halo == 7 + 12 + (radius if ft_scale == 1 else ft_scale * (radius + 3))
    np.testing.assert_allclose(tiled, whole, atol=2e-5)


def test_cli_restore_with_weights_keeps_georeferencing(geotiff_factory, tmp_path):
    cfg = APEMConfig(width=8)
    model = _randomised(APEMDehazer(cfg)).eval()
    weights = tmp_path / "apem.safetensors"
    save_file(model.state_dict(), str(weights))
    src, data = geotiff_factory(height=70, width=90)
    out = tmp_path / "restored.tif"
    result = CliRunner().invoke(app, ["restore", str(src), "-o", str(out), "--method", "apem", "--weights",
                                      str(weights), "-q"])
    # A default-width model does not fit width-8 weights: a sidecar JSON records the config, as the trainer writes.
    assert result.exit_code == 2 and "weights do not fit" in result.output
    weights.with_suffix(".json").write_text('{"method": "apem", "config": {"width": 8}}')
    result = CliRunner().invoke(app, ["restore", str(src), "-o", str(out), "--method", "apem", "--weights",
                                      str(weights), "-q"])
    assert result.exit_code == 0, result.output
    with rasterio.open(src) as a, rasterio.open(out) as b:
        assert (a.crs, a.transform, a.count, a.dtypes) == (b.crs, b.transform, b.count, b.dtypes)
        written = b.read()
    expected = restore_array(load_model("apem", weights=str(weights)), data.astype(np.float32) / 255)
    assert np.abs(written.astype(np.float32) - np.round(expected * 255)).max() <= 1


def test_rsrestore_train_runs_the_shipped_config(tmp_path):
    """configs/apem_haze_cpu.yaml, pointed at a tiny paired folder (I = 0.55 J + 0.45 c: haze of t = 0.55 and an
    airlight c), trains through `rsrestore train`; its loss falls and its weights load as the `apem` method."""
    import csv

    import yaml

    from _train_data import make_pairs, write_yaml

    cfg = yaml.safe_load(open(ROOT / "configs" / "apem_haze_cpu.yaml"))
    cfg.pop("pipeline", None)  # the trainer alone, not the whole weights pipeline the section would run
    assert cfg["model"]["config"]["ft_scale"] == 2  # the config states the architecture it trains
    pairs = make_pairs(tmp_path / "pairs", n=4, size=32)
    cfg["model"]["config"]["width"] = 4
    cfg["data"] = {"train": {"kind": "paired", "root": str(pairs)}, "batch_size": 4}
    cfg["schedule"]["warmup_steps"] = 0
    cfg["optim"]["lr"] = 2e-2
    cfg["run"].update(out_dir=str(tmp_path / "run"), steps=30, val_every=0, ckpt_every=0, log_every=1)
    result = CliRunner().invoke(app, ["train", str(write_yaml(tmp_path / "apem.yaml", cfg))])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "run" / "log.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")]
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5]), losses
    model = load_model("apem", weights=str(tmp_path / "run" / "final.safetensors"))
    assert model.cfg.width == 4
