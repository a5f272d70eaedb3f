"""Seamless tiled sampling: the tiling engine tells a diffusion model where each tile sits in the scene, DS-RDMPD draws
its noise by scene position and replays the scene's statistics on every tile, so a tiled restore matches a whole-image
one; the seed changes the result, and the same seed repeats it; `rsrestore restore --steps/--seed` set them for
diffusion methods only."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn
from typer.testing import CliRunner

from _one_line_errors import user_error
from _statistics_records import count_records

from rsrestore.cli import app
from rsrestore.models.dsrdmpd import DSRDMPD, DSRDMPDConfig, MCESSUNet, MCESSUNetConfig, UNetRes, UNetResConfig
from rsrestore.models.dsrdmpd import shared_statistics
from rsrestore.models.dsrdmpd.shared_statistics import recording, replaying
from rsrestore.tiling import restore_array, run_model

TINY = dict(stage1_dim=8, stage2_dim=8, stage2_dim_mults=(1, 2), stage2_dim_head=8)
SIZE, TILE, OVERLAP = 96, 48, 16  # three tiles a side, read with the default 16-pixel halo


class LocalDenoiser(nn.Module):
    """Stands in for the stage-2 U-Net with 3x3 convolutions only, which a 16-pixel halo covers: any tiled-vs-whole
    difference left is the noise's. Same interface as :class:`rsrestore.models.dsrdmpd.UNetRes` where the sampler
    calls it."""

    def __init__(self, bands: int = 3, width: int = 8) -> None:
        super().__init__()
        self.cond = nn.Conv2d(2 * bands, width, 3, padding=1)
        self.body = nn.Conv2d(bands, width, 3, padding=1)
        self.out = nn.Conv2d(width, bands, 3, padding=1)

    def encode_condition(self, cond: Tensor) -> Tensor:
        return self.cond(cond)

    def forward(self, x_t: Tensor, t: Tensor, cond_features: Tensor) -> Tensor:
        return self.out(torch.tanh(self.body(x_t) + cond_features + t.view(-1, 1, 1, 1) / 1000))


class WithoutOrigins(nn.Module):
    """The same restorer with a forward that does not take ``origins``: what every tile sampled before the hook."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def scene(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(1, 3, 12, 12, generator=g), size=(SIZE, SIZE), mode="bilinear")[0]
    return (0.6 * smooth + 0.35).clamp(0, 1)


def tiled(model: nn.Module, image: Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiles below 64 pixels are slow, which is what a small test wants
        return restore_array(model, image, tile=TILE, overlap=OVERLAP, batch_size=4)


@pytest.fixture(scope="module")
def model() -> DSRDMPD:
    torch.manual_seed(0)
    model = DSRDMPD(DSRDMPDConfig(**TINY))
    model.stage2 = LocalDenoiser()
    return model.eval()


def test_tiled_sampling_matches_whole_image_sampling(model):
    image = scene()
    whole = model(image[None], origins=[(0, 0)])[0].numpy()
    out = tiled(model, image)
    assert np.abs(out - whole).max() < 2e-3
    # without the scene origins each tile draws its own noise, and the tiles disagree
    assert np.abs(tiled(WithoutOrigins(model), image) - whole).max() > 20 * np.abs(out - whole).max()


class WithoutSceneStatistics(nn.Module):
    """The same restorer without ``scene_statistics``: every tile computes its layers' statistics over itself."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.halo = model, model.halo

    def forward(self, x: Tensor, origins=None) -> Tensor:
        return self.model(x, origins=origins)


@pytest.fixture(scope="module")
def full_model() -> DSRDMPD:
    """Both tiny networks as they are: channel attentions, GroupNorm and attentions over whatever they are given."""
    torch.manual_seed(0)
    model = DSRDMPD(DSRDMPDConfig(**TINY)).eval()
    assert model.halo == 32  # the 48-pixel tiles here need it: with 16 pixels of context they are 45 levels off
    return model


def textured_scene() -> Tensor:
    return (scene() + 0.1 * torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))).clamp(0, 1)


@pytest.mark.parametrize("stats_side", [512, 40], ids=["own-statistics", "downsampled-statistics"])
def test_tiles_replay_the_scene_statistics_so_tiled_matches_whole(full_model, stats_side, monkeypatch):
    # 96 > 40: the whole image, like its tiles, then takes its statistics from a copy downsampled to 40 x 40
    monkeypatch.setattr(shared_statistics, "STATS_SIDE", stats_side)
    image = textured_scene()
    whole = full_model(image[None], origins=[(0, 0)])[0].numpy()
    records = count_records(monkeypatch)
    out = tiled(full_model, image)
    assert len(records) == 1  # once per scene, not per tile
    assert np.abs(out - whole).max() < 3 / 255
    if stats_side == 512:  # once is enough: each tile on its own statistics is 128 levels off
        assert np.abs(tiled(WithoutSceneStatistics(full_model), image) - whole).max() > 30 / 255


def test_a_scene_read_as_one_tile_uses_its_own_statistics_without_a_record(full_model, monkeypatch):
    monkeypatch.setattr(shared_statistics, "recording", None)  # any record would fail
    image = textured_scene()
    whole = full_model(image[None], origins=[(0, 0)])[0].numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = restore_array(full_model, image, tile=SIZE, overlap=OVERLAP)
    np.testing.assert_allclose(out, whole, atol=1e-4)  # channels_last tiles: float rounding only


def test_scene_statistics_know_the_scene_behind_a_decimated_read(full_model, monkeypatch):
    monkeypatch.setattr(shared_statistics, "STATS_SIDE", 40)
    scene = full_model.scene_statistics(torch.rand(1, 3, 60, 80), decimation=4.0)["scene"]
    assert scene.scene_shape == (240, 320)
    assert tuple(scene.image.shape[-2:]) == (30, 40)  # downsampled further, to at most STATS_SIDE a side
    # a tile as large as the scene still takes the scene's statistics: they were not its own
    assert not scene.is_image(torch.rand(1, 3, 240, 320), [(0, 0)])
    small = full_model.scene_statistics(torch.rand(1, 3, 30, 40))["scene"]
    assert small.is_image(torch.rand(1, 3, 30, 40), [(0, 0)]) and not small.is_image(torch.rand(1, 3, 30, 40), [(0, 8)])


@pytest.mark.parametrize("stage", [1, 2])
def test_replayed_statistics_are_the_recorded_ones_whatever_the_input(stage):
    torch.manual_seed(0)
    if stage == 1:
        net = MCESSUNet(MCESSUNetConfig(dim=8)).eval()
        run = net
        probe = net.neck.mlp_t  # reads ASFusion's global description
    else:
        net = UNetRes(UNetResConfig(dim=8, dim_mults=(1, 2), dim_head=8)).eval()
        cond = torch.rand(1, 6, 64, 64) * 2 - 1
        probe = net.mid_attn.fn.to_out  # reads what the middle attention gathered from all keys and values

        def run(x: Tensor) -> Tensor:
            return net(x * 2 - 1, torch.tensor([500]), cond[..., : x.shape[-2], : x.shape[-1]])

    seen = []
    probe.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = textured_scene()[None, :, :64, :64]
    crop = x[..., :32, :32]
    with torch.no_grad():
        plain = run(x)
        with recording() as record:
            run(x)
        with replaying(record):
            replayed = run(x)
        with replaying(record):
            run(crop)
        run(crop)
    torch.testing.assert_close(replayed, plain, atol=1e-5, rtol=1e-5)
    # the crop given the whole input's statistics is not what it computes on its own
    assert (seen[3] - seen[4]).abs().max() > 1e-2 * seen[4].abs().max()
    with replaying(record), pytest.raises(RuntimeError, match="same number of sampling steps"):
        for _ in range(2):
            run(x)


def test_the_seed_changes_the_result_and_the_same_seed_repeats_it(model):
    image = scene()
    first = tiled(model, image)
    np.testing.assert_array_equal(tiled(model, image), first)
    model.cfg.seed = 1
    try:
        other = tiled(model, image)
    finally:
        model.cfg.seed = 0
    assert np.abs(other - first).mean() > 1e-2


def test_origins_reach_only_models_that_take_them():
    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list = []

        def forward(self, x: Tensor, origins=None) -> Tensor:
            self.seen += list(origins)
            return x

    recorder = Recorder()
    image = scene()
    out = tiled(recorder, image)
    np.testing.assert_allclose(out, image.numpy(), atol=1e-6)
    # tile starts 0, 32, 48 on each axis, read with a 16-pixel halo clipped at the scene's edges
    assert sorted(set(recorder.seen)) == [(y, x) for y in (0, 16, 32) for x in (0, 16, 32)]
    plain = nn.Identity()
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(run_model(plain, x, None, None, False, origins=[(0, 0)]), x)


def test_restore_command_takes_steps_and_seed_for_diffusion_methods(tmp_path, geotiff_factory):
    torch.manual_seed(0)
    weights = tmp_path / "tiny.safetensors"
    save_file(DSRDMPD(DSRDMPDConfig(**TINY)).state_dict(), weights)
    weights.with_suffix(".json").write_text(json.dumps({"method": "dsrdmpd", "config": TINY}))
    src, _ = geotiff_factory(height=40, width=48)
    runner = CliRunner()

    def restore(name: str, *options: str) -> np.ndarray:
        out = tmp_path / f"{name}.tif"
        result = runner.invoke(app, ["restore", str(src), "-o", str(out), "--method", "dsrdmpd", "--weights",
                                     str(weights), "-q", *options])
        assert result.exit_code == 0, result.output
        with rasterio.open(out) as ds:
            return ds.read().astype(int)

    first = restore("a", "--steps", "2", "--seed", "3")
    np.testing.assert_array_equal(restore("b", "--steps", "2", "--seed", "3"), first)
    assert np.abs(restore("c", "--steps", "2", "--seed", "4") - first).mean() > 1
    assert np.abs(restore("d", "--steps", "1", "--seed", "3") - first).mean() > 1
    result = runner.invoke(app, ["restore", str(src), "-o", str(tmp_path / "e.tif"), "--method", "dcp", "--steps", "2"])
    user_error(result, "--steps", "dcp")
    result = runner.invoke(app, ["restore", str(src), "-o", str(tmp_path / "f.tif"), "--method", "dsrdmpd",
                                 "--weights", str(weights), "--steps", "0"])
    user_error(result, "--steps")
