"""Detail metrics against closed forms: a blur's |H|^2, a checkerboard's amplitude, identity, masks."""

import math

import pytest
import torch
import torch.nn.functional as F

from rsrestore.metrics.detail import (
    ENERGY_FLOOR,
    checkerboard_energy_ratio,
    detail_scores,
    gradient_energy,
    gradient_energy_ratio,
    nyquist_energy,
    nyquist_energy_map,
)


def _grid(h, w):
    return torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")


def _smooth(h=48, w=64, bands=3):
    y, x = _grid(h, w)
    base = 0.45 + 0.12 * torch.sin(0.21 * x + 0.3) + 0.08 * torch.cos(0.17 * y) + 0.05 * (x * y) / (h * w)
    return torch.stack([base * (0.8 + 0.1 * c) for c in range(bands)])[None]


def _checker(h=48, w=64):
    y, x = _grid(h, w)
    return ((-1.0) ** (x + y))[None, None]


def test_identity_gives_one():
    img = torch.rand(2, 4, 32, 40, generator=torch.Generator().manual_seed(0))
    assert torch.equal(gradient_energy_ratio(img, img), torch.ones(2, dtype=torch.float64))
    assert torch.equal(checkerboard_energy_ratio(img, img), torch.ones(2, dtype=torch.float64))


def test_blur_of_a_sinusoid_scales_gradient_energy_by_its_response_squared():
    # cos(w x) (period 16, width 64, circular) blurred by [1/4, 1/2, 1/4] is exactly ((1 + cos w) / 2) cos(w x).
    w = 2 * math.pi / 16
    _, x = _grid(32, 64)
    img = (0.5 + 0.3 * torch.cos(w * x))[None, None]
    k = torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64).view(1, 1, 1, 3)
    blurred = F.conv2d(F.pad(img, (1, 1, 0, 0), mode="circular"), k)
    gain = (1 + math.cos(w)) / 2
    e = float(gradient_energy(img)[0])
    expected = (gain**2 * e + ENERGY_FLOOR) / (e + ENERGY_FLOOR)
    assert float(gradient_energy_ratio(blurred, img)[0]) == pytest.approx(expected, rel=1e-12)
    assert expected < 0.95


def test_any_blur_lowers_both_energies():
    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    g = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    blurred = F.conv2d(F.pad(img, (2, 2, 2, 2), mode="circular"), (g[:, None] * g[None, :]).expand(3, 1, 5, 5),
                       groups=3)
    assert float(gradient_energy_ratio(blurred, img)[0]) < 0.5
    assert float(checkerboard_energy_ratio(blurred, img)[0]) < 1e-2


def test_gradient_energy_of_a_ramp_is_its_slope_squared():
    y, x = _grid(20, 30)
    ramp = (0.01 * x + 0.02 * y)[None, None]
    assert float(gradient_energy(ramp)[0]) == pytest.approx(0.01**2 + 0.02**2, rel=1e-12)


@pytest.mark.parametrize("b, a", [(0.004, 0.02), (0.01, -0.003), (0.0, 0.05)])
def test_added_checkerboard_raises_the_ratio_by_the_predicted_amount(b, a):
    # A smooth image carrying b (-1)^(x+y); adding a (-1)^(x+y) moves the local amplitude from b to a + b exactly,
    # and the smooth part leaks nothing through the binomial low-pass (cos^12 vanishes at frequency 0).
    ref = _smooth() + b * _checker()
    out = ref + a * _checker()
    expected = ((a + b) ** 2 + ENERGY_FLOOR) / (b**2 + ENERGY_FLOOR)
    assert float(checkerboard_energy_ratio(out, ref)[0]) == pytest.approx(expected, rel=1e-9)
    per = nyquist_energy(out, per_component=True)[0]
    assert float(per[0]) == pytest.approx((a + b) ** 2, rel=1e-9, abs=1e-20)
    assert float(per[1:].abs().max()) < 1e-20


def test_row_and_column_stripes_land_in_their_components():
    y, x = _grid(40, 40)
    smooth = _smooth(40, 40, 1)
    stripes = smooth + 0.03 * ((-1.0) ** x)[None, None] + 0.04 * ((-1.0) ** y)[None, None]
    per = nyquist_energy(stripes, per_component=True)[0]
    assert per.tolist() == pytest.approx([0.0, 0.03**2, 0.04**2], abs=1e-15)


def test_masked_pixels_never_count():
    ref = _smooth()
    out = ref + 0.02 * _checker()
    mask = torch.zeros(1, 1, 48, 64, dtype=torch.bool)
    mask[..., :, :30] = True
    # The right part holds NaN and a grid in pred; only the left, identical part is measured.
    pred = torch.where(mask, ref, out)
    pred[..., :, 50:] = float("nan")
    assert float(checkerboard_energy_ratio(pred, ref, mask)[0]) == 1.0
    assert float(gradient_energy_ratio(pred, ref, mask)[0]) == 1.0
    assert float(checkerboard_energy_ratio(pred.nan_to_num(), ref)[0]) > 10


def test_detail_scores_against_reference_and_input():
    ref = _smooth()
    inp = 0.5 * ref + 0.3  # hazier: half the contrast
    out = ref + 0.01 * _checker()
    s = detail_scores(out, ref, inp)
    assert list(s) == ["gradient_ratio", "checkerboard_ratio", "gradient_ratio_input", "checkerboard_ratio_input"]
    assert s["gradient_ratio_input"][0] > 3.5  # the output has twice the input's contrast: ~4x the energy
    assert s["checkerboard_ratio"][0] == pytest.approx((1e-4 + ENERGY_FLOOR) / ENERGY_FLOOR, rel=1e-6)
    assert list(detail_scores(out, inp=inp)) == ["gradient_ratio_input", "checkerboard_ratio_input"]


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="at least 13x13"):
        nyquist_energy(torch.zeros(1, 1, 12, 40))
    with pytest.raises(ValueError, match="same shape"):
        gradient_energy_ratio(torch.zeros(1, 1, 20, 20), torch.zeros(1, 2, 20, 20))
    with pytest.raises(ValueError, match="NaN"):
        gradient_energy(torch.full((1, 1, 20, 20), float("nan")))


def test_energy_map_locates_a_grid_and_averages_to_the_energy():
    img = _smooth(64, 64)
    img[..., 30:40, 20:44] += 0.02 * _checker(10, 24)
    emap = nyquist_energy_map(img)[0]
    assert emap.shape == (64, 64) and bool(emap[:6].isnan().all()) and bool(emap[6:-6, 6:-6].isfinite().all())
    peak = divmod(int(emap.nan_to_num(-1).argmax()), 64)
    assert 30 <= peak[0] < 40 and 20 <= peak[1] < 44
    assert float(emap.nanmean()) == pytest.approx(float(nyquist_energy(img)[0]), rel=1e-12)


def test_block_edge_contrast_finds_the_blocks_of_a_grid_where_they_are():
    from rsrestore.metrics.detail import block_edge_contrast

    g = torch.Generator().manual_seed(0)
    noise = torch.rand(1, 3, 60, 60, generator=g)
    # 6-pixel blocks whose edges lie before rows 4 + 6k and columns 1 + 6k, over a little noise
    coarse = torch.rand(1, 3, 12, 12, generator=g).repeat_interleave(6, -2).repeat_interleave(6, -1)
    blocks = coarse[..., 2 : 2 + 60, 5 : 5 + 60] + 0.05 * noise
    assert block_edge_contrast(blocks, 6, (4, 1)).item() > 5
    assert block_edge_contrast(blocks, 6, (1, 4)).item() < 1  # another grid: its "edges" are mostly inside blocks
    assert abs(block_edge_contrast(noise, 6, (4, 1)).item() - 1) < 0.1  # content that does not know the grid
    # only valid pixels count: with the blocked half masked out, the noise half decides
    half = torch.cat([blocks[..., :30], noise[..., 30:]], dim=-1)
    mask = torch.zeros(1, 1, 60, 60, dtype=torch.bool)
    mask[..., 30:] = True
    assert abs(block_edge_contrast(half, 6, (4, 1), mask).item() - 1) < 0.15
    assert block_edge_contrast(half, 6, (4, 1)).item() > 1.5  # unmasked, the blocked half shows
