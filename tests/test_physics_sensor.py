"""Sensor and file degradations: band misregistration, blur, noise, JPEG, and their random draw."""

from __future__ import annotations

import math

import pytest
import torch

from rsrestore.physics.sensor import (
    SensorPreset,
    add_noise,
    degrade_sensor,
    gaussian_blur,
    jpeg_compress,
    shift_bands,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_scene(b: int = 1, c: int = 3, h: int = 64, w: int = 64) -> torch.Tensor:
    """A band-limited picture (sinusoids and a ramp), the kind of content JPEG keeps well."""
    y = torch.linspace(0, 1, h)[:, None]
    x = torch.linspace(0, 1, w)[None, :]
    bands = [0.5 + 0.3 * torch.sin(2 * math.pi * (2 + i) * x + i) * torch.cos(2 * math.pi * 3 * y) + 0.1 * (x - y)
             for i in range(c)]
    return torch.stack(bands)[None].expand(b, c, h, w).clamp(0, 1).contiguous()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


@pytest.mark.parametrize("dx, dy", [(0.37, 0.0), (0.0, -0.61), (0.8, 0.25)])
def test_shift_bands_matches_the_closed_form_on_ramps(dx, dy):
    h, w = 20, 24
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    ramp = (0.02 * cols + 0.03 * rows)[None, None].repeat(1, 2, 1, 1)
    shifts = torch.tensor([[[dx, dy], [0.0, 0.0]]])
    out = shift_bands(ramp, shifts)
    # Bilinear interpolation reproduces a linear ramp exactly: out(r, c) = ramp(r - dy, c - dx) away from the edges.
    inner = (slice(2, -2), slice(2, -2))
    expected = 0.02 * (cols - dx) + 0.03 * (rows - dy)
    assert torch.allclose(out[0, 0][inner], expected[inner], atol=1e-5)
    assert torch.equal(out[0, 1], ramp[0, 1])  # a band with no shift is untouched
    with pytest.raises(ValueError, match="shifts"):
        shift_bands(ramp, torch.zeros(1, 3, 2))


def test_jpeg_round_trip_compresses_but_keeps_quality_90_above_30_db():
    x = smooth_scene()
    q90 = jpeg_compress(x, 90)
    q60 = jpeg_compress(x, 60)
    assert q90.shape == x.shape and q90.dtype == x.dtype and 0 <= q90.min() and q90.max() <= 1
    assert not torch.equal(q90, (x * 255).round() / 255)  # something was lost beyond 8-bit quantisation
    assert psnr(q90, x) > 30
    assert psnr(q60, x) < psnr(q90, x)
    # other band counts go band by band as greyscale JPEG
    four = jpeg_compress(smooth_scene(c=4), 90)
    assert four.shape == (1, 4, 64, 64) and psnr(four, smooth_scene(c=4)) > 30
    with pytest.raises(ValueError, match="quality"):
        jpeg_compress(x, 0)


def test_gaussian_blur_has_the_requested_width():
    impulse = torch.zeros(1, 1, 41, 41)
    impulse[0, 0, 20, 20] = 1.0
    out = gaussian_blur(impulse, 1.5)
    r = torch.arange(41, dtype=torch.float32) - 20
    var_x = float((out[0, 0].sum(0) * r**2).sum())
    assert abs(out.sum().item() - 1.0) < 1e-4 and abs(var_x - 1.5**2) < 0.05
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(gaussian_blur(flat, 0.8), flat, atol=1e-6)


def test_noise_has_read_and_shot_variance():
    x = torch.full((1, 1, 200, 200), 0.5)
    y = add_noise(x, gen(1), read_sigma=0.01, shot=4e-4)
    assert abs(float((y - x).std()) - math.sqrt(0.01**2 + 4e-4 * 0.5)) < 0.001
    assert torch.equal(y, add_noise(x, gen(1), 0.01, 4e-4))


def test_degrade_sensor_changes_only_what_it_returns_and_is_seeded():
    x = smooth_scene(b=3, c=4, h=48, w=40)
    before = x.clone()
    always = SensorPreset(blur_probability=1, noise_probability=1, jpeg_probability=1, misregistration_probability=1)
    y, params = degrade_sensor(x, gen(5), always)
    assert torch.equal(x, before)  # the caller's tensor (the clean target, say) is not modified
    assert y.shape == x.shape and y.dtype == x.dtype and y.min() >= 0 and y.max() <= 1
    assert not torch.equal(y, x)
    y2, params2 = degrade_sensor(x, gen(5), always)
    assert torch.equal(y, y2) and params == params2
    assert all(0.3 <= s <= 1.2 for s in params["blur_sigma"])
    assert all(60 <= q <= 95 for q in params["jpeg_quality"])
    for shifts in params["band_shifts"]:
        moved = [math.hypot(*s) for s in shifts if s != [0.0, 0.0] and any(abs(v) > 0 for v in s)]
        assert 1 <= len(moved) <= 3 and all(0.2 - 1e-9 <= m <= 1.0 + 1e-9 for m in moved)
    never = SensorPreset(blur_probability=0, noise_probability=0, jpeg_probability=0, misregistration_probability=0)
    z, p = degrade_sensor(x, gen(5), never)
    assert torch.equal(z, x) and p["jpeg_quality"] == [None] * 3 and p["band_shifts"] == [None] * 3
