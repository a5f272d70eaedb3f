"""The realistic dust presets: AOSR-Net's model with uneven loads, plumes and streaks, yellow-orange-grey casts."""

from __future__ import annotations

import math

import pytest
import torch

from rsrestore.physics.noise import PatchyField
from rsrestore.physics.sanddust import (
    CLASSIC_DUST_COLOURS,
    DUST_COLOURS,
    DUST_PRESETS,
    REALISTIC_DUST,
    restore_from_phi,
    synthesize_dust,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def scene(b: int = 32, h: int = 40, w: int = 40) -> torch.Tensor:
    return 0.05 + 0.6 * torch.rand(b, 3, h, w, generator=gen(9))


def test_casts_span_yellow_orange_and_grey():
    chroma = {}
    for name in REALISTIC_DUST:
        out = synthesize_dust(scene(), gen(2), preset=name)
        r, g, b = torch.tensor(out["params"]["cast_rgb"]).unbind(1)
        assert (r >= g - 0.06).all() and (g >= b - 0.06).all()  # never bluish or greenish (up to the jitter)
        chroma[name] = r - b
        # the Eq. 5 target stays exact with non-uniform loads
        assert (restore_from_phi(out["input"], out["phi"]) - scene()).abs().max() < 1e-4
    everything = torch.cat(list(chroma.values()))
    assert everything.min() < 0.1 and everything.max() > 0.28  # from greyish to orange
    assert chroma["suspended"].max() < 0.24 < chroma["storm"].max()  # suspended dust is pale, storms saturated


def test_loads_are_uneven_and_ordered():
    x = scene()
    t = {n: synthesize_dust(x, gen(4), preset=n)["transmission"] for n in REALISTIC_DUST}
    means = [float(t[n].mean()) for n in REALISTIC_DUST]
    assert means[0] > means[1] > means[2]
    relative = {n: (t[n].flatten(1).std(1) / t[n].flatten(1).mean(1)).median() for n in REALISTIC_DUST}
    assert relative["blowing"] > 0.1  # plumes: the load changes a lot across the scene
    assert all(DUST_PRESETS[n].field is not None for n in REALISTIC_DUST)


def test_classic_presets_keep_their_casts():
    assert CLASSIC_DUST_COLOURS == ("yellow", "pale_yellow", "orange", "brown", "reddish")
    out = synthesize_dust(scene(b=20), gen(1), preset="moderate")
    assert set(out["params"]["colour"]) <= set(CLASSIC_DUST_COLOURS)
    assert set(DUST_COLOURS) > set(CLASSIC_DUST_COLOURS)


def _energy(field: torch.Tensor, angle_deg: float) -> float:
    """Mean squared directional derivative of (1, 1, H, W) along angle_deg (x right, y down as in images)."""
    gy, gx = torch.gradient(field[0, 0])
    a = math.radians(angle_deg)
    return float(((gx * math.cos(a) + gy * math.sin(a)) ** 2)[4:-4, 4:-4].mean())


def test_streaks_are_longer_along_their_direction():
    spec = PatchyField(scale_px_range=(16.0, 16.0), bank_probability=0.0, floor_range=(0.0, 0.0),
                       stretch_range=(4.0, 4.0))
    ratios = []
    for seed in range(6):
        d, info = spec.draw(1, 64, 64, gen(seed))
        along = info["streak_direction"][0]
        ratios.append(_energy(d, along + 90) / _energy(d, along))  # changes fast across the streaks, slowly along
    assert min(ratios) > 2.0
    plain, _ = PatchyField(scale_px_range=(16.0, 16.0), bank_probability=0.0).draw(1, 64, 64, gen(0))
    assert 0.5 < _energy(plain, 0) / _energy(plain, 90) < 2.0
