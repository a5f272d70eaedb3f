"""The realistic haze presets: whitish bluish airlight that drifts, banks and veils, densities from faint to ~8 dB."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rsrestore.physics.haze import HAZE_PRESETS, REALISTIC_HAZE, synthesize_haze
from rsrestore.synthesize import PRESET_GROUPS, resolve_presets


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def scene(b: int = 24, h: int = 48, w: int = 48) -> torch.Tensor:
    # A mid-toned textured scene (values 0.05-0.65, mean ~0.35, like vegetation, soil and towns)
    return 0.05 + 0.6 * torch.rand(b, 3, h, w, generator=gen(7))


def input_psnr(name: str, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    out = synthesize_haze(x, gen(seed), name)
    return -10 * torch.log10(((out["input"] - x) ** 2).flatten(1).mean(1))


@pytest.mark.parametrize("name", REALISTIC_HAZE)
def test_airlight_is_whitish_bluish_and_drifts_slowly(name):
    out = synthesize_haze(scene(), gen(1), name)
    a = out["airlight"]  # (B, C, H, W): the airlight varies across the scene
    assert a.shape == (24, 3, 48, 48)
    mean = a.mean(dim=(2, 3))
    assert (mean >= 0.62).all() and (mean <= 1.0).all()
    # bluish: blue at least red (up to the per-band jitter), and on average clearly so
    assert (mean[:, 2] - mean[:, 0] > -0.02).all() and (mean[:, 2] - mean[:, 0]).mean() > 0.02
    # slowly: no more than the preset's variation across the scene, and smooth from pixel to pixel
    rel = (a.amax(dim=(2, 3)) - a.amin(dim=(2, 3))) / mean
    v = HAZE_PRESETS[name].airlight_variation_range[1]
    assert (rel <= 2 * v / (1 - v) + 1e-6).all() and rel.max() > 0.01  # A (1 +- v) over its scene mean
    assert (a[..., 1:, :] - a[..., :-1, :]).abs().max() < 0.01


def test_densities_span_faint_veil_to_about_8_db():
    x = scene()
    veil, patchy, dense = (input_psnr(n, x).median() for n in ("veil", "patchy", "dense"))
    assert veil > 22 and veil > patchy > dense
    assert 6.5 < dense < 11.5  # the thick end: about 8 dB against the clean scene
    assert input_psnr("dense", x).min() > 4


def test_banks_cover_the_drawn_share_and_sharp_edges_are_sharp():
    flat_inside = dataclasses.replace(HAZE_PRESETS["bank"].field, interior_range=(0.0, 0.0))
    d, info = flat_inside.draw(16, 64, 64, gen(3))
    assert all(info["banks"])
    m = (d - torch.tensor(info["floor"]).view(-1, 1, 1, 1)) / (1 - torch.tensor(info["floor"]).view(-1, 1, 1, 1))
    inside = (m > 0.5).flatten(1).float().mean(1)
    assert torch.allclose(inside, torch.tensor(info["coverage"], dtype=torch.float32), atol=0.02)
    # a sharp rim: most pixels sit near the floor or near the peak, few in between
    between = ((m > 0.1) & (m < 0.9)).flatten(1).float().mean(1)
    assert between.median() < 0.25
    # the preset's banks are textured inside, like thin cloud, yet keep their sharp rim
    textured, info = HAZE_PRESETS["bank"].field.draw(16, 64, 64, gen(3))
    assert all(0.2 <= v <= 0.6 for v in info["interior"])
    inside = textured > 0.5
    assert all(float(textured[i][inside[i]].std()) > 0.02 for i in range(16) if inside[i].sum() > 50)
    veil, _ = HAZE_PRESETS["veil"].field.draw(4, 64, 64, gen(3))
    assert ((veil > 0) & (veil <= 1)).all()


def test_structures_come_at_many_scales():
    _, info = HAZE_PRESETS["patchy"].field.draw(64, 32, 32, gen(4))
    scales = torch.tensor(info["scale_px"])
    assert scales.min() < 32 and scales.max() > 48 and (scales <= 64).all()  # at most twice the scene


def test_realistic_group_resolves():
    assert resolve_presets("haze", "realistic") == REALISTIC_HAZE == PRESET_GROUPS["haze"]["realistic"]
    assert resolve_presets("haze", None) == ("thin", "moderate", "thick")
    assert resolve_presets("haze", ["veil", "classic"]) == ("veil", "thin", "moderate", "thick")
    with pytest.raises(ValueError, match="realistic"):
        resolve_presets("haze", "smog")
    with pytest.raises(ValueError, match="empty"):
        resolve_presets("haze", [])
