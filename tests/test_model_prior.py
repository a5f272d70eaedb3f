"""A learned model as a correction of its task's classical restorer: J = baseline(I) + a learned correction."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from rsrestore.classical.dcp import DarkChannelPrior
from rsrestore.classical.rop import RankOnePrior
from rsrestore.models.aosrnet import AOSRNet, AOSRNetConfig
from rsrestore.classical.dcp import DCPConfig, omega_for_severity
from rsrestore.models.prior import (EVIDENCE_KEY, EVIDENCE_LIMIT, GATE_LIMIT, GATE_SMOOTHING, GATE_START, NETWORK_HALO,
                                   SEVERITY_KEY, build_prior, scene_verdict)
from rsrestore.models.rsdehamba import RSDehamba, RSDehambaConfig
from rsrestore.tiling import restore_array
from rsrestore.losses import build_loss
from rsrestore.train.loop import freeze_all_but, load_init_weights
from rsrestore.train.objectives import OBJECTIVES, ObjectiveContext


def _rsdehamba(prior: str = "dcp", head: str = "affine", map_smoothing: float = 0.0,
               input_gain: bool = False, clean_gate: bool = False, gate_evidence: bool = False,
               gate_fallback: str = "input", clean_odds: float = 0.0) -> RSDehamba:
    torch.manual_seed(0)
    return RSDehamba(RSDehambaConfig(embed_dim=8, depths=(1, 1, 1), d_state=4, scan_impl="chunked", head=head,
                                     map_smoothing=map_smoothing, prior=prior, input_gain=input_gain,
                                     clean_gate=clean_gate, gate_evidence=gate_evidence,
                                     gate_fallback=gate_fallback, clean_odds=clean_odds))


def _aosrnet(prior: str = "rop", map_smoothing: float = 0.0, input_gain: bool = False,
             clean_gate: bool = False) -> AOSRNet:
    torch.manual_seed(0)
    return AOSRNet(AOSRNetConfig(width=8, num_res_blocks=1, head="affine", map_smoothing=map_smoothing, prior=prior,
                                 input_gain=input_gain, clean_gate=clean_gate))


#: Each model with its task's classical restorer: (build the model with a prior or "none", the prior alone)
MODELS = {"rsdehamba": (_rsdehamba, "dcp", DarkChannelPrior), "aosrnet": (_aosrnet, "rop", RankOnePrior)}


def _hazy(seed: int = 0, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    clear = torch.stack([0.25 + 0.2 * torch.sin(6 * xx + k) * torch.cos(4 * yy) for k in range(3)])[None]
    clear = (clear + 0.1 * torch.rand(1, 3, size, size, generator=g)).clamp(0, 1)
    t = 0.5 + 0.2 * yy
    airlight = torch.tensor([0.85, 0.9, 0.95]).view(1, 3, 1, 1)
    return clear * t + airlight * (1 - t), clear


@pytest.mark.parametrize("input_gain", [False, True])
@pytest.mark.parametrize("name", MODELS)
def test_before_training_the_model_is_its_prior(name, input_gain):
    build, prior, restorer = MODELS[name]
    x, _ = _hazy()
    with torch.no_grad():
        torch.testing.assert_close(build(prior, input_gain=input_gain).eval()(x), restorer()(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_the_input_gain_adds_a_share_of_the_input(name):
    build, prior, _ = MODELS[name]
    model = build(prior, input_gain=True).train()  # AOSR-Net clips its output in eval mode only
    x, _ = _hazy()
    with torch.no_grad():
        before = model(x)
        for key, p in model.named_parameters():  # h = 0.25 everywhere: the output gains a quarter of the input
            if key.split(".")[0] in ("input_gain_head", "conv4") and key.endswith("bias"):
                p[-3:] = 0.25
        after = model(x)
    torch.testing.assert_close(after - before, 0.25 * x)


def test_the_residual_head_starts_as_the_prior_too():
    x, _ = _hazy()
    with torch.no_grad():
        torch.testing.assert_close(_rsdehamba(head="residual").eval()(x), DarkChannelPrior()(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_weights_trained_without_the_prior_load_and_the_model_still_starts_as_the_prior(name, tmp_path):
    build, prior, restorer = MODELS[name]
    plain = build("none")
    with torch.no_grad():  # trained output heads, which must not carry over
        for p in plain.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "plain.safetensors"
    save_file(plain.state_dict(), str(path))
    model = build(prior)
    info = load_init_weights(model, str(path))
    assert info["tensors_not_in_file"] == sum(k.split(".")[0] in model.correction_heads for k in model.state_dict())
    key = f"{model.input_conv}.weight"
    own, theirs = model.state_dict()[key], plain.state_dict()[key]
    torch.testing.assert_close(own[:, :3], theirs)  # the input's kernel is the trained one
    assert not own[:, 3:].any()  # the prior's channels start unseen
    x, _ = _hazy()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), restorer()(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_weights_trained_with_the_prior_load_as_they_are(name, tmp_path):
    # A fine-tune of a model trained with its prior starts where that model ended, learned heads included.
    build, prior, _ = MODELS[name]
    trained = build(prior)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "trained.safetensors"
    save_file(trained.state_dict(), str(path))
    model = build(prior)
    assert load_init_weights(model, str(path))["tensors_not_in_file"] == 0
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def test_the_scene_statistics_are_the_priors_and_reach_it():
    model = _rsdehamba().eval()
    x, _ = _hazy()
    assert model.needs_scene_statistics and not _rsdehamba(prior="none").needs_scene_statistics
    stats = model.scene_statistics(x)
    torch.testing.assert_close(stats["airlight"], DarkChannelPrior().scene_statistics(x)["airlight"])
    other = {"airlight": torch.tensor([[0.6, 0.6, 0.6]])}
    with torch.no_grad():  # a tile is restored with the scene's airlight, not its own
        torch.testing.assert_close(model(x, stats=other), DarkChannelPrior()(x, stats=other), rtol=0, atol=1e-6)
        assert (model(x, stats=other) - model(x)).abs().max() > 0.05


@pytest.mark.parametrize("name", MODELS)
def test_the_halo_and_minimum_size_cover_the_prior(name):
    build, prior, restorer = MODELS[name]
    assert build(prior).halo == NETWORK_HALO + restorer().halo > NETWORK_HALO
    assert build(prior).min_size == getattr(restorer(), "min_size", 1)
    assert build("none").halo == NETWORK_HALO


@pytest.mark.filterwarnings("ignore:tile size")  # small tiles, so that a 96-px scene has several
@pytest.mark.parametrize("name", MODELS)
def test_tiles_agree_with_the_whole_scene(name):
    """With the scene's statistics and the prior's halo, a tiled restore matches the whole-image one (a uniform
    correction: the network's own path is not tile-exact, RSDehamba's scans see the whole tile)."""
    build, prior, _ = MODELS[name]
    model = build(prior).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[0] in model.correction_heads and name.endswith("bias"):
                p.copy_(torch.linspace(-0.05, 0.1, p.numel()))
        x, _ = _hazy(size=96)
        whole = model(x, stats=model.scene_statistics(x))[0].numpy()
    tiled = restore_array(model, x[0].numpy(), tile=48, overlap=8, batch_size=2, progress=False)
    assert np.abs(whole - x[0].numpy()).max() > 0.05
    np.testing.assert_allclose(tiled, whole, atol=2e-3)


@pytest.mark.parametrize("name", MODELS)
def test_the_network_runs_near_the_kept_pixels_only(name):
    """With ``cores`` (what the tiled engine keeps) the network sees their union plus its own halo; the prior still
    sees the whole box, and what lies outside the window is the prior's output."""
    build, prior, restorer = MODELS[name]
    model = build(prior).eval()
    with torch.no_grad():
        for p in model.parameters():  # a correction that depends on the input
            p.add_(0.05 * torch.randn_like(p))
    x, _ = _hazy(size=96)
    stats = model.scene_statistics(x)
    seen = []
    first = model.get_submodule(model.input_conv)
    handle = first.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        whole = model(x, stats=stats)
        kept = model(x, stats=stats, cores=[(40, 56, 30, 50)])
        union = model(x.expand(2, -1, -1, -1), stats=stats, cores=[(40, 56, 30, 50), (8, 20, 70, 90)])
        base = restorer()(x, stats=stats)
    handle.remove()
    halo = NETWORK_HALO

    def padded(n: int) -> int:  # both networks reflect-pad to a multiple of 4 before their first convolution
        return -(-n // 4) * 4

    assert seen[0] == (96, 96)  # the whole box
    assert seen[1] == (padded(56 - 40 + 2 * halo), padded(50 - 30 + 2 * halo))
    assert seen[2] == (padded(56 + halo), padded(96 - (30 - halo)))  # rows 0..72, columns 14..96: clipped
    rows, cols = slice(40 - halo, 56 + halo), slice(30 - halo, 50 + halo)
    outside = torch.ones(96, 96, dtype=torch.bool)
    outside[rows, cols] = False
    torch.testing.assert_close(kept[..., outside], base.clamp(0, 1)[..., outside], rtol=0, atol=1e-6)
    with torch.no_grad():
        window = model._network(x[..., rows, cols], base[..., rows, cols])
    window = window[0] if isinstance(window, tuple) else window
    torch.testing.assert_close(kept[..., rows, cols], window.clamp(0, 1) if name == "aosrnet" else window)
    # The network did change the kept pixels, and its wider context in the whole box changes them too.
    assert (kept - base)[..., 40:56, 30:50].abs().max() > 0.01
    assert (kept - whole)[..., 40:56, 30:50].abs().max() > 1e-4
    torch.testing.assert_close(union[1:, :, 8:20, 70:90], union[:1, :, 8:20, 70:90])


def test_an_unknown_prior_is_refused():
    with pytest.raises(ValueError, match="prior must be one of"):
        RSDehambaConfig(prior="clahe")
    with pytest.raises(ValueError, match="prior must be one of"):
        build_prior("clahe")
    with pytest.raises(ValueError, match="needs head='affine'"):
        AOSRNetConfig(prior="rop")  # Eq. 5's one map cannot correct another image
    with pytest.raises(ValueError, match="input_gain needs a prior"):
        AOSRNetConfig(head="affine", input_gain=True)
    with pytest.raises(ValueError, match="input_gain needs a prior"):
        RSDehambaConfig(head="affine", input_gain=True)


def test_prior_options_reach_the_prior_and_bad_ones_are_refused():
    # The options change the prior's settings, and the untrained model equals the prior built with them.
    x, _ = _hazy()
    aosr = AOSRNet(AOSRNetConfig(head="affine", prior="rop", prior_options={"max_stretch": 2.0})).eval()
    rsd = RSDehamba(RSDehambaConfig(head="affine", prior="dcp", prior_options={"omega": 0.5})).eval()
    assert aosr.prior.cfg.max_stretch == 2.0 and rsd.prior.cfg.omega == 0.5
    with torch.no_grad():
        torch.testing.assert_close(aosr(x), build_prior("rop", {"max_stretch": 2.0})(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(rsd(x), build_prior("dcp", {"omega": 0.5})(x), rtol=0, atol=1e-6)
        assert not torch.allclose(rsd(x), DarkChannelPrior()(x), atol=1e-3)
    with pytest.raises(ValueError, match="unknown"):
        build_prior("rop", {"strength": 1.0})
    with pytest.raises(ValueError, match="need a prior"):
        RSDehamba(RSDehambaConfig(prior_options={"omega": 0.5}))


@pytest.mark.parametrize("name", MODELS)
def test_the_model_learns_a_correction_of_its_prior(name):
    """A few steps take the model well past its prior on a hazy pair."""
    build, prior, _ = MODELS[name]
    model = build(prior, map_smoothing=1.0, input_gain=True)
    hazy, clear = _hazy()
    with torch.no_grad():
        start = F.l1_loss(model(hazy), clear).item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = F.l1_loss(model(hazy), clear)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * start, (start, loss.item())


@pytest.mark.parametrize("name", MODELS)
def test_the_clean_gate_starts_as_almost_all_of_the_correction(name):
    build, prior, restorer = MODELS[name]
    x, _ = _hazy()
    with torch.no_grad():
        gated = build(prior, input_gain=True, clean_gate=True).eval()(x)
        expected = x + torch.sigmoid(torch.tensor(GATE_START)) * (restorer()(x) - x)
    torch.testing.assert_close(gated, expected, rtol=0, atol=1e-5)
    assert (gated - x).abs().mean() > 0.02  # the prior does change this scene


def test_the_clean_gate_needs_a_prior_and_fits_in_the_networks_halo():
    with pytest.raises(ValueError, match="clean_gate needs a prior"):
        AOSRNetConfig(head="affine", clean_gate=True)
    with pytest.raises(ValueError, match="clean_gate needs a prior"):
        RSDehambaConfig(clean_gate=True)
    # two 3x3 convolutions and the blur's 3 sigma: a tile's kept pixels see nothing the network was not given
    assert 2 + 3 * GATE_SMOOTHING <= NETWORK_HALO


@pytest.mark.parametrize("name", MODELS)
def test_the_clean_gate_learns_to_hand_a_clean_scene_back_and_keeps_the_correction_of_a_degraded_one(name):
    """Trained alone by its objective, with the correction frozen (here the bare prior, and the prior's output the
    degraded scene's target), the gate learns to tell the two scenes apart: all of the correction on one, none on the
    other."""
    build, prior, restorer = MODELS[name]
    model = build(prior, input_gain=True, clean_gate=True)
    hazy, _ = _hazy(size=64)
    _, other = _hazy(seed=1, size=64)
    clean = other.flip(-1)  # a clean scene unlike the hazy one's content
    with torch.no_grad():
        corrected = restorer()(hazy)
        prior_on_clean = restorer()(clean)
    batch = {"input": torch.cat([hazy, clean]), "target": torch.cat([corrected, clean]),
             "meta": [{"preset": "thick"}, {"preset": "clean"}]}
    ctx = ObjectiveContext(loss=build_loss("l1"), model_kwargs={}, needs_sar=False)
    freeze_all_but(model, ["clean_gate"])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(100):
        step = OBJECTIVES["clean_gate"](model, batch, ctx)
        opt.zero_grad()
        step.loss.backward()
        opt.step()
    with torch.no_grad():
        out = model.eval()(batch["input"])
    changed, prior_changed = (out[1] - clean[0]).abs().mean(), (prior_on_clean[0] - clean[0]).abs().mean()
    assert changed < 0.1 * prior_changed, (changed, prior_changed)
    kept, correction = (out[0] - corrected[0]).abs().mean(), (hazy[0] - corrected[0]).abs().mean()
    assert kept < 0.1 * correction, (kept, correction)
    # in eval mode the gate keeps no logits, and the objective is the supervised one there
    assert model.clean_gate.logits is None
    assert "loss_gate" not in OBJECTIVES["clean_gate"](model, batch, ctx).logs


def test_the_clean_gate_objective_needs_a_gate_and_the_items_presets():
    ctx = ObjectiveContext(loss=build_loss("l1"), model_kwargs={}, needs_sar=False)
    x, clear = _hazy()
    with pytest.raises(ValueError, match="needs a model with a clean gate"):
        OBJECTIVES["clean_gate"](_aosrnet(), {"input": x, "target": clear}, ctx)
    with pytest.raises(ValueError, match="meta preset"):
        OBJECTIVES["clean_gate"](_aosrnet(clean_gate=True), {"input": x, "target": clear}, ctx)


@pytest.mark.parametrize("clean_weight", [1.0, 3.0])
def test_the_clean_gate_objective_is_the_items_weighted_cross_entropy(clean_weight):
    """At the start every logit is GATE_START: the clean item costs softplus(6), the degraded one softplus(-6),
    the clean one weighted by clean_weight; the mean over pixels adds to the supervised loss."""
    model = _aosrnet(clean_gate=True)
    x, clear = _hazy()
    batch = {"input": torch.cat([x, clear]), "target": torch.cat([clear, clear]),
             "meta": [{"preset": "moderate"}, {"preset": "clean"}]}
    ctx = ObjectiveContext(loss=build_loss("l1"), model_kwargs={}, needs_sar=False)
    step = OBJECTIVES["clean_gate"](model.train(), batch, ctx, gate_weight=0.5, clean_weight=clean_weight)
    expected = (clean_weight * F.softplus(torch.tensor(GATE_START)) + F.softplus(torch.tensor(-GATE_START))) / 2
    assert step.logs["loss_gate"] == pytest.approx(float(expected), rel=1e-4)
    supervised = OBJECTIVES["supervised"](model, batch, ctx).loss.detach()
    assert float(step.loss.detach()) == pytest.approx(float(supervised) + 0.5 * float(expected), rel=1e-4)


def _real_scene(size: int = 256) -> torch.Tensor:
    """A clean crop of the shipped Rocky Mountain NP sample (forest, rock and snow), (1, 3, size, size)."""
    import rasterio

    path = Path(__file__).resolve().parents[1] / "src/rsrestore/sample_data/rmnp_rgb.tif"
    with rasterio.open(path) as f:
        rgb = f.read(window=((0, size), (0, size))).astype(np.float32) / 255
    return torch.from_numpy(rgb)[None]


def test_the_scene_verdict_is_the_recognisers_log_odds_of_a_degraded_scene_and_its_severity():
    clean = _real_scene()
    t = 0.6  # moderate haze, a whitish airlight
    hazy = clean * t + torch.tensor([0.85, 0.88, 0.92]).view(1, 3, 1, 1) * (1 - t)
    verdict = scene_verdict(torch.cat([clean, hazy]))
    evidence, severity = verdict[EVIDENCE_KEY], verdict[SEVERITY_KEY]
    assert evidence.shape == severity.shape == (2,) and evidence.dtype == severity.dtype == torch.float32
    assert evidence[1] > 2 and evidence[1] - evidence[0] > 2, evidence
    assert evidence.abs().max() <= EVIDENCE_LIMIT
    assert 0.2 < severity[1] < 0.8 and severity[0] < severity[1], severity
    # a picture it cannot read is undecided, with nothing to restore: too few bands, or no valid pixel
    for undecided in (scene_verdict(hazy[:, :2]), scene_verdict(hazy, torch.zeros(1, 1, 256, 256, dtype=torch.bool))):
        assert undecided[EVIDENCE_KEY].tolist() == undecided[SEVERITY_KEY].tolist() == [0.0]


def test_gate_evidence_needs_a_gate_and_gated_weights_without_it_load_and_start_the_same(tmp_path):
    with pytest.raises(ValueError, match="gate_evidence and gate_fallback need clean_gate"):
        RSDehambaConfig(prior="dcp", gate_evidence=True)
    with pytest.raises(ValueError, match="gate_evidence and gate_fallback need clean_gate"):
        RSDehambaConfig(prior="dcp", gate_fallback="gentle_prior")
    with pytest.raises(ValueError, match="gate_fallback must be one of"):
        RSDehambaConfig(prior="dcp", clean_gate=True, gate_fallback="dcp")
    gated = _rsdehamba(clean_gate=True)
    with torch.no_grad():  # a trained gate: it hands back more of some pixels than of others
        gated.clean_gate.body[-1].weight.normal_(0, 0.3)
    save_file(gated.state_dict(), str(tmp_path / "gated.safetensors"))
    model = _rsdehamba(clean_gate=True, gate_evidence=True)
    info = load_init_weights(model, str(tmp_path / "gated.safetensors"))
    assert info["tensors_not_in_file"] == 1 and float(model.clean_gate.evidence_weight.detach()) == 0.0
    x, _ = _hazy()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), gated.eval()(x), rtol=0, atol=1e-6)
        with pytest.raises(ValueError, match="needs the scene evidence"):
            model.clean_gate.share(torch.zeros(1, 8, 48, 48), x, x)


@pytest.mark.filterwarnings("ignore:tile size")
@pytest.mark.parametrize("fallback", ["input", "gentle_prior"])
def test_tiles_take_the_whole_scenes_verdict(fallback):
    """The scene statistics carry the whole scene's verdict to every tile, so tiles agree with the whole scene;
    without it in the statistics each picture is its own scene."""
    model = _rsdehamba(clean_gate=True, gate_evidence=True, gate_fallback=fallback).eval()
    x = _real_scene(96) * 0.7 + 0.27  # hazy
    with torch.no_grad():
        model.clean_gate.evidence_weight.fill_(-2.0)  # degraded scenes get little of the correction, clean ones all
        stats = model.scene_statistics(x)
        assert set(stats) == {"airlight", EVIDENCE_KEY, SEVERITY_KEY}
        for key, value in scene_verdict(x).items():
            torch.testing.assert_close(stats[key], value)
        whole = model(x, stats=stats)
        torch.testing.assert_close(model(x), whole)
        undecided = model(x, stats={**stats, EVIDENCE_KEY: torch.zeros(1)})
        assert (undecided - whole).abs().max() > 0.02  # the evidence moves the output
    tiled = restore_array(model, x[0].numpy(), tile=48, overlap=8, batch_size=2, progress=False)
    np.testing.assert_allclose(tiled, whole[0].numpy(), atol=2e-3)


def test_the_gate_learns_from_the_scene_evidence_what_its_pixels_cannot_tell():
    """Two items with the same pixels, one clean by its scene's evidence and one degraded: only the evidence tells
    them apart, and the gate learns to hand one back and keep the other's correction; without it it cannot."""
    x, _ = _hazy(size=32)
    shares = {}
    for with_evidence in (True, False):
        model = _rsdehamba(clean_gate=True, gate_evidence=with_evidence)
        stats = model.scene_statistics(torch.cat([x, x]))
        if with_evidence:
            stats[EVIDENCE_KEY] = torch.tensor([4.0, -4.0])
        batch = {"input": torch.cat([x, x]), "target": torch.cat([x, x]),
                 "meta": [{"preset": "thick"}, {"preset": "clean"}]}
        ctx = ObjectiveContext(loss=build_loss("l1"), model_kwargs={"stats": stats}, needs_sar=False)
        freeze_all_but(model, ["clean_gate"])
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-2)
        for _ in range(80):
            step = OBJECTIVES["clean_gate"](model, batch, ctx, gate_weight=1.0)
            opt.zero_grad()
            step.loss.backward()
            opt.step()
        shares[with_evidence] = torch.sigmoid(model.clean_gate.logits.detach()).mean(dim=(1, 2, 3))
    assert shares[True][0] > 0.9 and shares[True][1] < 0.1, shares
    assert (shares[False][0] - shares[False][1]).abs() < 0.05, shares


def test_the_gentle_fallback_is_dcp_at_the_scenes_severity_and_the_input_for_a_clean_scene():
    """Where the gate hands the scene back (share ~3e-4 here), the output is dcp at the omega --task auto gives the
    scene's haze severity; a scene read clean (severity 0) comes back as it is."""
    model = _rsdehamba(clean_gate=True, gate_fallback="gentle_prior").eval()
    with torch.no_grad():
        model.clean_gate.body[-1].bias.fill_(-10 * GATE_LIMIT)  # the gate closed everywhere
        x, _ = _hazy()
        airlight = model.scene_statistics(x)["airlight"]
        for severity in (0.3, 0.0):
            stats = {"airlight": airlight, EVIDENCE_KEY: torch.zeros(1), SEVERITY_KEY: torch.tensor([severity])}
            expected = DarkChannelPrior(DCPConfig(omega=omega_for_severity(severity)))(x, stats={"airlight": airlight})
            torch.testing.assert_close(model(x, stats=stats), expected, rtol=0, atol=2e-3)
        assert (model(x, stats={**stats, SEVERITY_KEY: torch.tensor([0.3])}) - x).abs().mean() > 0.02
        torch.testing.assert_close(model(x, stats=stats), x, rtol=0, atol=2e-3)


def _naip_scene() -> torch.Tensor:
    """The shipped NAIP sample's R, G, B (fields and trees, 384 x 384), which the recogniser reads clean at better
    than 2:1 (degraded log-odds -1.85)."""
    import rasterio

    with rasterio.open(Path(__file__).resolve().parents[1] / "src/rsrestore/sample_data/naip_4band_crop.tif") as f:
        return torch.from_numpy(f.read([1, 2, 3]).astype(np.float32) / 255)[None]


def _trained_looking(model: RSDehamba) -> RSDehamba:
    """Non-zero correction heads: before training the model is its prior, which would hide what the network does."""
    with torch.no_grad():
        model.head.weight.normal_(0, 0.05)
        model.gain_head.weight.normal_(0, 0.05)
    return model


def test_clean_odds_needs_a_prior_and_no_negative_odds():
    with pytest.raises(ValueError, match="clean_odds must be >= 0 and needs a prior"):
        RSDehambaConfig(prior="none", clean_odds=2.0)
    with pytest.raises(ValueError, match="clean_odds must be >= 0"):
        RSDehambaConfig(prior="dcp", clean_odds=-1.0)


def test_items_read_clean_at_the_odds_come_back_bit_for_bit_and_the_others_are_restored():
    """clean_odds 2: an item whose degraded log-odds are at most -log 2 is returned as it is; one above is restored
    exactly as without the rule."""
    model = _trained_looking(_rsdehamba(clean_odds=2.0)).eval()
    plain = _trained_looking(_rsdehamba()).eval()
    x = torch.cat([_hazy(0)[0], _hazy(1)[0], _hazy(2)[0]])
    stats = plain.scene_statistics(x)
    evidence = torch.tensor([-0.70, -0.69, 3.0])  # 2:1 is log-odds -0.693: the first only is read clean enough
    with torch.no_grad():
        out = model(x, stats={**stats, EVIDENCE_KEY: evidence, SEVERITY_KEY: torch.zeros(3)})
        restored = plain(x, stats=stats)
    assert torch.equal(out[0], x[0])
    torch.testing.assert_close(out[1:], restored[1:])
    assert (restored[0] - x[0]).abs().max() > 0.01  # the rule, not the network, kept the first


def test_a_scene_read_clean_skips_the_network_and_tiles_agree(monkeypatch):
    """A real clean scene through the tiled engine: the whole scene's verdict reaches every tile, so it comes back
    as it is (to the float rounding of the tiles' overlap blend, far below a file's 8- or 16-bit step) and the
    network never runs; a hazy version of it is restored."""
    model = _trained_looking(_rsdehamba(clean_odds=2.0)).eval()
    scene = _naip_scene()[0].numpy()
    hazy = scene * 0.6 + 0.35
    ran = []
    network = model._network
    monkeypatch.setattr(model, "_network", lambda *a, **k: ran.append(1) or network(*a, **k))
    with pytest.warns(UserWarning, match="reads this scene clean at odds of 2:1 or better"):
        out = restore_array(model, scene, tile=128, overlap=16, batch_size=2, progress=False)
    assert np.abs(out - scene).max() <= 1e-6 and not ran
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a scene it restores says nothing
        restored = restore_array(model, hazy, tile=128, overlap=16, batch_size=2, progress=False)
    assert ran and np.abs(restored - hazy).mean() > 0.05


def test_clean_odds_changes_nothing_in_training(monkeypatch):
    """The rule holds at inference only: in training every item reaches the network, and no verdict is read."""
    import rsrestore.models.prior as prior_module

    x = _naip_scene()[..., :64, :64]
    with torch.no_grad():
        expected = _trained_looking(_rsdehamba()).train()(x)
    monkeypatch.setattr(prior_module, "scene_verdict", lambda *a, **k: pytest.fail("no verdict in training"))
    with torch.no_grad():
        out = _trained_looking(_rsdehamba(clean_odds=2.0)).train()(x)
    torch.testing.assert_close(out, expected)
    assert (out - x).abs().max() > 0.01
