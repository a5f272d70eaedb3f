"""Degradation synthesis: fractal fields, haze, sand-dust (AOSR-Net model, Eq. 5-6) and clouds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rsrestore.physics.clouds import (
    CLOUD_PRESETS,
    SENTINEL2_CLOUD_PARALLAX_PX,
    cloud_parallax_px,
    cloud_reflectance_spectrum,
    synthesize_clouds,
    vapour_transmittance,
)
from rsrestore.physics.haze import (
    HAZE_PRESETS,
    RGB_WAVELENGTHS_NM,
    SENTINEL2_WAVELENGTHS_NM,
    HazePreset,
    synthesize_haze,
)
from rsrestore.physics.noise import _interpolate_lattice, fractal_noise
from rsrestore.physics.sanddust import (
    DUST_COLOURS,
    DUST_PRESETS,
    dust_colour_spectrum,
    dust_forward,
    phi_from_clean,
    phi_target,
    restore_from_phi,
    synthesize_dust,
)
from rsrestore.physics.scattering import haze_inverse
from rsrestore.synthesize import KINDS, PRESETS, synthesize


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clear_image(b: int = 2, c: int = 3, h: int = 33, w: int = 47, seed: int = 123) -> torch.Tensor:
    # Values kept inside (0.05, 0.95) so no synthetic pixel sits exactly on a clipping bound by construction.
    return 0.05 + 0.9 * torch.rand(b, c, h, w, generator=gen(seed))


# ---------------------------------------------------------------------------------------------------------------------
# Fractal noise
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 17, 5), (3, 64, 96), (1, 129, 31)])
def test_fractal_noise_shape_and_range(shape):
    b, h, w = shape
    n = fractal_noise(b, h, w, gen(1), base_scale=max(h, w, 4))
    assert n.shape == (b, 1, h, w) and n.dtype == torch.float32
    assert torch.isfinite(n).all()
    assert n.min() >= 0 and n.max() <= 1
    if h * w > 1:
        flat = n.flatten(1)
        assert torch.allclose(flat.min(1).values, torch.zeros(b)) and torch.allclose(flat.max(1).values, torch.ones(b))


def test_fractal_noise_is_smooth_and_seeded():
    a = fractal_noise(2, 128, 128, gen(5))
    b = fractal_noise(2, 128, 128, gen(5))
    c = fractal_noise(2, 128, 128, gen(6))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a[0], a[1])  # samples of a batch are independent
    # Neighbouring pixels differ far less than in white noise of the same range (mean |diff| = 1/3 there).
    step = (a[..., 1:] - a[..., :-1]).abs().mean()
    assert step < 0.03


def test_fractal_noise_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    fractal_noise(1, 32, 32, gen(0))
    synthesize_haze(clear_image(), gen(0))
    synthesize_dust(clear_image(), gen(0))
    synthesize_clouds(clear_image(), gen(0), "thick")
    assert torch.equal(state, torch.random.get_rng_state())


def test_lattice_interpolation_reproduces_quadratics_and_nodes():
    # Catmull-Rom (Keys a = -0.5) interpolation is exact for polynomials of degree <= 2 and passes through the nodes.
    gh, gw = 9, 11
    i = torch.arange(gh, dtype=torch.float64)[:, None]
    j = torch.arange(gw, dtype=torch.float64)[None, :]
    lattice = (0.3 * i**2 - 1.2 * i * j + 2.0 * j + 0.7)[None]
    uy = torch.linspace(1.0, gh - 2.0, 23, dtype=torch.float64)
    ux = torch.linspace(1.0, gw - 2.0, 19, dtype=torch.float64)
    out = _interpolate_lattice(lattice, uy, ux)[0]
    expect = 0.3 * uy[:, None] ** 2 - 1.2 * uy[:, None] * ux[None, :] + 2.0 * ux[None, :] + 0.7
    assert torch.allclose(out, expect, atol=1e-10)
    rnd = torch.rand(1, gh, gw, generator=gen(2), dtype=torch.float64)
    nodes = _interpolate_lattice(rnd, torch.arange(1.0, gh - 1, dtype=torch.float64),
                                 torch.arange(1.0, gw - 1, dtype=torch.float64))
    assert torch.allclose(nodes[0], rnd[0, 1:-1, 1:-1], atol=1e-12)


def test_fractal_noise_rejects_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        fractal_noise(0, 8, 8, gen())
    with pytest.raises(ValueError, match="persistence"):
        fractal_noise(1, 8, 8, gen(), persistence=1.5)
    with pytest.raises(ValueError, match="base_scale"):
        fractal_noise(1, 8, 8, gen(), base_scale=1.0)


# ---------------------------------------------------------------------------------------------------------------------
# Haze
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(HAZE_PRESETS))
def test_haze_preset_transmission_in_documented_range(name):
    p = HAZE_PRESETS[name]
    out = synthesize_haze(clear_image(b=48, h=40, w=40), gen(11), name)
    mean_t = torch.tensor(out["params"]["mean_t550"])
    lo, hi = p.mean_t_range
    assert ((mean_t >= lo) & (mean_t <= hi)).all(), (mean_t.min(), mean_t.max())
    assert torch.allclose(mean_t.float(), out["transmission_550"].flatten(1).mean(1), atol=1e-6)
    tau = torch.tensor(out["params"]["tau_550"])
    assert ((tau >= p.tau_range[0]) & (tau <= p.tau_range[1])).all()
    # Orthographic haze is still spatially non-uniform: the optical depth varies across every image (a faint veil
    # of the realistic presets only gently).
    od = -out["transmission_550"].log().flatten(1)
    assert (od.std(1) / od.mean(1) > (0.05 if p.field is None else 0.002)).all()


def test_haze_presets_are_ordered():
    x = clear_image(b=32, h=32, w=32)
    means = [np.mean(synthesize_haze(x, gen(3), name)["params"]["mean_t550"]) for name in ("thin", "moderate", "thick")]
    assert means[0] > means[1] > means[2]
    assert HAZE_PRESETS["thin"].mean_t_range[0] >= HAZE_PRESETS["moderate"].mean_t_range[1] - 0.02
    assert HAZE_PRESETS["moderate"].mean_t_range[0] >= HAZE_PRESETS["thick"].mean_t_range[1] - 0.02


def test_haze_follows_scattering_model_and_inverts():
    x = clear_image()
    out = synthesize_haze(x, gen(4), "thick")
    t, a = out["transmission"], out["airlight"]
    assert t.shape == x.shape and a.shape == (2, 3)
    expect = x * t + a[:, :, None, None] * (1 - t)
    assert torch.allclose(out["input"], expect, atol=1e-6)
    assert torch.allclose(haze_inverse(out["input"], t, a, t_min=0.0), x, atol=1e-5)
    # Atmospheric light near white with a small tint.
    assert (a >= 0.6).all() and (a <= 1.0).all()
    assert (a.max(1).values - a.min(1).values < 0.15).all()


def test_haze_blue_band_hazier_than_nir():
    x = clear_image(b=3, c=13, h=24, w=24)
    out = synthesize_haze(x, gen(8), "moderate")
    t = out["transmission"]
    b2, b8, b12 = 1, 7, 12
    assert (t[:, b2] < t[:, b8]).all() and (t[:, b8] < t[:, b12]).all()
    change = (out["input"] - x).abs().mean(dim=(0, 2, 3))
    assert change[b2] > change[b8] > change[b12]
    # The ratio of optical depths is Angstrom's law with the drawn exponent.
    k = torch.tensor(out["params"]["angstrom_k"], dtype=torch.float64)
    ratio = (t[:, b2].log() / t[:, b8].log()).flatten(1).median(1).values.double()
    expect = (SENTINEL2_WAVELENGTHS_NM[b2] / SENTINEL2_WAVELENGTHS_NM[b8]) ** (-k)
    assert torch.allclose(ratio, expect, rtol=1e-4)


def test_haze_rgb_default_wavelengths_and_custom():
    out = synthesize_haze(clear_image(), gen(0))
    assert out["params"]["wavelengths_nm"] == list(RGB_WAVELENGTHS_NM)
    t = out["transmission"]
    assert (t[:, 2] < t[:, 0]).all()  # blue (490 nm) hazier than red (665 nm)
    with pytest.raises(ValueError, match="wavelengths_nm"):
        synthesize_haze(clear_image(c=7), gen(0))
    y = synthesize_haze(clear_image(c=7), gen(0), wavelengths_nm=[450, 500, 550, 600, 700, 800, 900])
    assert y["input"].shape == (2, 7, 33, 47)
    with pytest.raises(ValueError, match="entries"):
        synthesize_haze(clear_image(), gen(0), wavelengths_nm=[500, 600])


def test_haze_custom_preset_and_errors():
    uniform = HazePreset(tau_range=(0.5, 0.5), k_range=(0.0, 0.0), spread_range=(0.0, 0.0), jitter=0.0, tint=0.0)
    out = synthesize_haze(clear_image(), gen(0), uniform)
    assert torch.allclose(out["transmission"], torch.full_like(out["transmission"], float(np.exp(-0.5))), atol=1e-6)
    with pytest.raises(ValueError, match="unknown haze preset"):
        synthesize_haze(clear_image(), gen(0), "smog")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        synthesize_haze(torch.rand(3, 8, 8), gen(0))
    with pytest.raises(ValueError, match="float"):
        synthesize_haze(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), gen(0))


# ---------------------------------------------------------------------------------------------------------------------
# Sand-dust (AOSR-Net)
# ---------------------------------------------------------------------------------------------------------------------


def test_eq5_of_eq6_recovers_clean_to_float_precision():
    x = clear_image(b=3, h=21, w=19).double()
    a = torch.tensor([[0.68, 0.60, 0.42], [0.70, 0.55, 0.38], [0.60, 0.50, 0.38]], dtype=torch.float64)
    t = 0.2 + 0.75 * torch.rand(3, 1, 21, 19, generator=gen(1), dtype=torch.float64)
    i = dust_forward(x, t, a)  # unclipped model output
    phi = phi_target(i, a, t)
    assert torch.allclose(restore_from_phi(i, phi), x, atol=1e-12, rtol=0)
    # Eq. 6 is the same quantity as (J - beta) / (I - alpha).
    assert torch.allclose(phi, phi_from_clean(x, i), atol=1e-12, rtol=0)
    # And in float32.
    x32, i32, phi32 = x.float(), i.float(), phi_target(i.float(), a.float(), t.float())
    assert (restore_from_phi(i32, phi32) - x32).abs().max() < 1e-5


def test_dust_model_matches_paper_equation():
    x = clear_image()
    out = synthesize_dust(x, gen(2), preset="light")
    a = out["airlight"][:, :, None, None]
    t = out["transmission"]
    expect = (a + (x - (1 - a)) * t).clamp(0, 1)  # I = A + (J - A') t, A' = 1 - A
    assert torch.allclose(out["input"], expect, atol=1e-6)
    beta = torch.tensor(out["params"]["beta"])
    assert ((beta >= 0.3) & (beta <= 0.6)).all()
    # The returned Phi restores the (clipped) input exactly through Eq. 5.
    assert (restore_from_phi(out["input"], out["phi"]) - x).abs().max() < 1e-5


def test_dust_supplied_depth_map():
    x = clear_image(b=1)
    depth = torch.linspace(0, 3, 47).expand(1, 1, 33, 47).contiguous()
    out = synthesize_dust(x, gen(0), depth=depth, colour="orange")
    beta = out["params"]["beta"][0]
    assert torch.allclose(out["transmission"], torch.exp(-beta * depth), atol=1e-6)
    assert out["params"]["colour"] == ["orange"]
    with pytest.raises(ValueError, match="depth"):
        synthesize_dust(x, gen(0), depth=torch.ones(1, 1, 5, 5))


def test_dust_colour_library_and_spectrum():
    for name, (r, g, b) in DUST_COLOURS.items():
        assert r > g > b, name
    rgb = DUST_COLOURS["yellow"]
    s = dust_colour_spectrum(rgb, [665, 560, 490])
    assert torch.allclose(s, torch.tensor(rgb, dtype=torch.float64))
    # Linear between anchors, flat beyond red, continuing the B-G slope below blue.
    s2 = dust_colour_spectrum(rgb, [525, 842, 2190, 455])
    assert s2[0].item() == pytest.approx((rgb[1] + rgb[2]) / 2)
    assert s2[1].item() == pytest.approx(rgb[0]) and s2[2].item() == pytest.approx(rgb[0])
    assert s2[3].item() == pytest.approx(rgb[2] - (rgb[1] - rgb[2]) / 2)
    out = synthesize_dust(clear_image(c=13), gen(3), colour="reddish")
    a = out["airlight"][0]
    assert a.shape == (13,) and a[3].item() == pytest.approx(out["params"]["cast_rgb"][0][0], abs=1e-6)


def test_dust_errors():
    with pytest.raises(ValueError, match="colour"):
        synthesize_dust(clear_image(), gen(0), colour="green")
    with pytest.raises(ValueError, match="unknown dust preset"):
        synthesize_dust(clear_image(), gen(0), preset="typhoon")
    with pytest.raises(ValueError, match="alpha"):
        phi_target(torch.rand(1, 3, 4, 4), torch.rand(1, 3), torch.rand(1, 1, 4, 4), alpha=1.0)


def test_dust_presets_ordered_in_transmission():
    x = clear_image(b=16, h=24, w=24)
    means = [np.mean(synthesize_dust(x, gen(5), preset=p)["params"]["mean_t"]) for p in ("light", "moderate", "heavy")]
    assert means[0] > means[1] > means[2]
    assert list(DUST_PRESETS)[:3] == ["light", "moderate", "heavy"]


# ---------------------------------------------------------------------------------------------------------------------
# Clouds
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["thin", "thick"])
def test_cloud_mask_matches_changed_pixels(kind):
    x = clear_image(b=3, h=48, w=40)
    out = synthesize_clouds(x, gen(7), kind, shadow=False)
    mask = out["mask"].bool()
    assert mask.shape == (3, 1, 48, 40)
    changed = (out["input"] != x).any(1, keepdim=True)
    assert not (changed & ~mask).any()  # nothing outside the mask moved
    assert (mask & ~changed).float().mean() < 0.01  # and (all but a rounding sliver of) the mask did
    frac = mask.flatten(1).float().mean(1).double()
    assert torch.allclose(frac, torch.tensor(out["params"]["coverage"], dtype=torch.float64), atol=0.01)
    assert torch.equal(out["shadow"], torch.zeros_like(out["shadow"]))


def test_thick_clouds_are_opaque_and_cast_shadows():
    x1, x2 = clear_image(b=2, h=64, w=64, seed=1), clear_image(b=2, h=64, w=64, seed=2)
    o1 = synthesize_clouds(x1, gen(9), "thick")
    o2 = synthesize_clouds(x2, gen(9), "thick")
    assert torch.equal(o1["mask"], o2["mask"])
    core = (o1["opacity"] >= 1).all(1, keepdim=True).expand_as(x1)
    assert core.any()
    assert torch.equal(o1["input"][core], o2["input"][core])  # the ground does not show through
    shadow = o1["shadow"].bool()
    assert shadow.any() and not (shadow & o1["mask"].bool()).any()
    changed = (o1["input"] != x1).any(1, keepdim=True)
    assert not (changed & ~(o1["mask"].bool() | shadow)).any()
    # Shadows darken.
    sh = shadow.expand_as(x1)
    assert (o1["input"][sh] <= x1[sh] + 1e-7).all()


def aligned(kind: str):
    """The preset without parallax: every band's cloud where B2's is."""
    return dataclasses.replace(CLOUD_PRESETS[kind], parallax_range=(0.0, 0.0))


def test_thin_cloud_brightening_falls_with_wavelength():
    x = clear_image(b=2, c=13, h=32, w=32)
    out = synthesize_clouds(x, gen(4), aligned("thin"))
    # Per image over the whole cloud (the 20 m and 60 m bands see it blurred, which moves opacity but keeps its mean):
    mean = out["opacity"].mean(dim=(2, 3))
    assert (mean[:, 1] > mean[:, 7]).all()  # B2 (490 nm) more opaque than B8 (842 nm)
    assert (mean[:, 7] > mean[:, 11]).all()  # and than B11 (1610 nm)
    s = cloud_reflectance_spectrum([490, 842, 1610, 2190])
    assert s[0] == 1.0 and s[1] == 1.0 and s[2] == pytest.approx(0.75) and s[3] == pytest.approx(0.55)


def _best_shift(ref: torch.Tensor, band: torch.Tensor, reach: int = 6) -> tuple[int, int]:
    """The integer (dy, dx) that best correlates ``band`` moved by it with ``ref`` (2D tensors), borders excluded."""
    best, where = -2.0, (0, 0)
    inner = (slice(reach, -reach), slice(reach, -reach))
    r = ref[inner].flatten()
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            moved = torch.roll(band, shifts=(-dy, -dx), dims=(0, 1))[inner].flatten()
            c = torch.corrcoef(torch.stack([r, moved]))[0, 1].item()
            if c > best:
                best, where = c, (dy, dx)
    return where


def test_sentinel2_cloud_layers_lie_apart_per_band_as_real_ones_do():
    # Thick clouds over black ground, parallax pinned to f = 1.6 along +x: B2's cloud stays, B8A's (2.25 px at f = 1)
    # lies 3.6 px to the right, B4's (1.2) 1.9 px; the ground and the shadow on it do not move.
    black = torch.zeros(1, 13, 96, 96)
    pinned = dataclasses.replace(CLOUD_PRESETS["thick"], parallax_range=(1.6, 1.6))
    g = gen(5)
    out = synthesize_clouds(black, g, pinned, shadow=False)
    ref = synthesize_clouds(black, gen(5), aligned("thick"), shadow=False)
    angle = out["params"]["parallax_angle"][0]
    assert out["params"]["parallax_factor"] == [pytest.approx(1.6)]
    # Everything but the parallax is drawn as without it: B2 is the same cloud.
    assert torch.allclose(out["input"][:, 1], ref["input"][:, 1], atol=1e-5)
    for band, name in ((8, "B8A"), (3, "B4")):
        reach = 1.6 * SENTINEL2_CLOUD_PARALLAX_PX[name]
        expected = (round(reach * np.sin(angle)), round(reach * np.cos(angle)))
        assert _best_shift(out["input"][0, 1], out["input"][0, band]) == expected
        assert _best_shift(ref["input"][0, 1], ref["input"][0, band]) == (0, 0)
    # The mask covers every band's cloud; shadows stay outside it and are not moved with the cloud.
    shaded = synthesize_clouds(clear_image(b=2, c=13, h=64, w=64), gen(6), "thick")
    changed = (shaded["input"] != clear_image(b=2, c=13, h=64, w=64)).any(1, keepdim=True)
    assert not (changed & ~(shaded["mask"].bool() | shaded["shadow"].bool())).any()
    assert not (shaded["mask"].bool() & shaded["shadow"].bool()).any()
    # Only Sentinel-2's 13 bands have a table: RGB clouds are as before.
    assert cloud_parallax_px([665.0, 560.0, 490.0]).eq(0).all() and cloud_parallax_px(
        [443.0, 490.0, 560.0, 665.0, 705.0, 740.0, 783.0, 842.0, 865.0, 945.0, 1375.0, 1610.0, 2190.0]).max() == 2.5
    rgb = synthesize_clouds(torch.zeros(2, 3, 16, 16), gen(2), "thick")
    assert rgb["params"]["parallax_factor"] == [0.0, 0.0]
    assert torch.equal(rgb["input"], synthesize_clouds(torch.zeros(2, 3, 16, 16), gen(2), aligned("thick"))["input"])


def test_clouds_leave_sar_untouched():
    x = clear_image()
    sar = torch.rand(2, 2, 33, 47, generator=gen(3))
    before = sar.clone()
    out = synthesize_clouds(x, gen(1), "thick", sar=sar)
    assert out["sar"] is sar and torch.equal(sar, before)
    with pytest.raises(ValueError, match="sar"):
        synthesize_clouds(x, gen(1), "thick", sar=torch.rand(2, 2, 10, 10))
    with pytest.raises(ValueError, match="unknown cloud kind"):
        synthesize_clouds(x, gen(1), "cumulus")
    assert set(CLOUD_PRESETS) == {"thin", "thick"}


# ---------------------------------------------------------------------------------------------------------------------
# All kinds: seeds, band counts, dispatcher
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bands", [1, 3, 4, 13])
def test_any_band_count_and_seeding(kind, bands):
    x = clear_image(b=2, c=bands, h=19, w=26)
    for preset in PRESETS[kind]:
        a = synthesize(x, kind, gen(3), preset)
        b = synthesize(x, kind, gen(3), preset)
        c = synthesize(x, kind, gen(4), preset)
        y = a["input"]
        assert y.shape == x.shape and y.dtype == x.dtype
        assert y.min() >= 0 and y.max() <= 1
        assert torch.equal(y, b["input"]) and a["params"] == b["params"]
        assert not torch.equal(y, c["input"])
        assert a["target"] is x
        if kind == "dust":
            assert a["phi"].shape == x.shape
        if kind == "cloud":
            assert a["mask"].shape == (2, 1, 19, 26)


def test_float64_input_is_kept():
    x = clear_image().double()
    for kind in KINDS:
        assert synthesize(x, kind, gen(0))["input"].dtype == torch.float64


def test_dispatcher_errors():
    with pytest.raises(ValueError, match="kind"):
        synthesize(clear_image(), "snow", gen(0))
    with pytest.raises(ValueError, match="preset"):
        synthesize(clear_image(), "haze", gen(0), preset="heavy")


def test_cloud_tops_are_dark_in_the_water_vapour_bands_as_real_ones_are():
    # On a black ground the cloud core is the cloud's own reflectance: in B9 (945 nm) at most 0.35 times its NIR level
    # and in B10 (1375 nm) at most 0.01 times (0.05 for thin clouds) its level there without vapour, as in real
    # Sentinel-2 cores (B9 0.20-0.21 and B10 under 0.01 times B2); NIR and SWIR stay in the drawn ranges.
    black = torch.zeros(6, 13, 48, 48)
    for kind, b10_max in (("thick", 0.01), ("thin", 0.05)):
        out = synthesize_clouds(black, gen(11), aligned(kind), shadow=False)  # a pixel: one place in every band
        spectra = torch.tensor(out["params"]["cloud_spectrum"])
        assert spectra.shape == (6, 13)
        assert (spectra[:, 1] == 1.0).all() and (spectra[:, 9] <= 0.35 * spectra[:, 8] + 1e-9).all()
        assert (spectra[:, 10] <= b10_max * 1.35).all()
        assert (spectra[:, 8] >= 1.0).all() and (spectra[:, 8] <= 1.35).all()  # B8A, 865 nm
        assert spectra[:, 8].std() > 0.02 and spectra[:, 11].std() > 0.02  # drawn per cloud, not fixed
        core = out["opacity"][:, 1] >= 0.999 if kind == "thick" else out["mask"][:, 0].bool()
        pixels = out["input"].permute(1, 0, 2, 3)[:, core]  # (13, N)
        assert pixels.shape[1] > 100
        if kind == "thick":  # opaque: the core is the cloud, B9 at most 0.35 x 1.35 times B2 (over the core, since
            # the 60 m bands B9 and B10 see the cloud blurred)
            b9, b10 = (pixels[9].sum() / pixels[1].sum()).item(), (pixels[10].sum() / pixels[1].sum()).item()
            assert b9 <= 0.35 * 1.35 + 1e-3 and b10 < 0.015
    # RGB clouds stay white: no band of an RGB image is in the NIR rise or a vapour band.
    rgb = synthesize_clouds(torch.zeros(4, 3, 16, 16), gen(2), "thick", shadow=False)
    assert torch.tensor(rgb["params"]["cloud_spectrum"]).eq(1.0).all()
    # Band-wise pieces: the vapour bands only, and the spectrum's anchors.
    t = vapour_transmittance([490, 945, 1375, 1610], 0.2, 0.01)
    assert t.tolist() == pytest.approx([1.0, 0.2, 0.01, 1.0])
    s = cloud_reflectance_spectrum([490, 665, 765, 865, 945, 1610, 2190, 2400], nir_rise=1.3, swir_1610=1.1,
                                   swir_2190=0.9)
    assert s.tolist() == pytest.approx([1.0, 1.0, 1.15, 1.3, 1.3, 1.1, 0.9, 0.9])
