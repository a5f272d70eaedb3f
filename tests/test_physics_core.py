import numpy as np
import pytest
import torch
from scipy.ndimage import minimum_filter, uniform_filter

from rsrestore.physics.dark_channel import atmospheric_light, dark_channel, min_filter, transmission_estimate
from rsrestore.physics.guided_filter import box_filter, guided_filter
from rsrestore.physics.scattering import haze_forward, haze_inverse


def test_scattering_forward_closed_form_and_inverse_round_trip():
    g = torch.Generator().manual_seed(0)
    j = torch.rand(2, 3, 17, 23, generator=g)
    t = 0.2 + 0.8 * torch.rand(2, 1, 17, 23, generator=g)
    a = torch.tensor([[0.9, 0.85, 0.8], [0.7, 0.75, 0.95]])
    i = haze_forward(j, t, a)
    expected = j * t + a[:, :, None, None] * (1 - t)
    assert torch.allclose(i, expected)
    assert torch.allclose(haze_inverse(i, t, a, t_min=0.1), j, atol=1e-5)
    # Where t < t_min the inverse is bounded, not exact.
    t_low = torch.full_like(t, 0.05)
    assert not torch.allclose(haze_inverse(haze_forward(j, t_low, a), t_low, a, t_min=0.1), j, atol=1e-3)


def test_scattering_is_differentiable():
    j = torch.rand(1, 3, 8, 8, requires_grad=True)
    t = torch.rand(1, 1, 8, 8, requires_grad=True)
    haze_forward(j, t, 0.9).sum().backward()
    assert j.grad is not None and t.grad is not None
    assert torch.allclose(j.grad, t.expand_as(j.grad))


@pytest.mark.parametrize("patch", [1, 3, 15])
def test_dark_channel_matches_scipy(patch):
    x = torch.rand(2, 4, 40, 33, generator=torch.Generator().manual_seed(1))
    ours = dark_channel(x, patch)
    for b in range(2):
        ref = minimum_filter(x[b].numpy().min(axis=0), size=patch, mode="nearest")
        np.testing.assert_allclose(ours[b, 0].numpy(), ref)


def test_min_filter_rejects_even_patch():
    with pytest.raises(ValueError, match="odd"):
        min_filter(torch.rand(1, 1, 5, 5), 4)


def test_atmospheric_light_picks_brightest_pixel_among_haziest():
    x = torch.full((1, 3, 50, 50), 0.1)
    x[:, :, 18:23, 18:23] = 0.6  # a small hazy region: its 9 interior pixels top the dark channel
    x[:, :, 20, 20] = torch.tensor([0.9, 0.8, 0.7])  # the brightest of the hazy region
    x[:, 0, 40, 40] = 1.0  # a bright red object: high intensity, low dark channel -> must not be chosen
    a = atmospheric_light(x, patch=3, fraction=0.01)
    assert torch.allclose(a, torch.tensor([[0.9, 0.8, 0.7]]))


def test_atmospheric_light_ignores_masked_pixels():
    x = torch.full((1, 3, 30, 30), 0.2)
    x[:, :, 5:12, 5:12] = 0.95
    mask = torch.ones(1, 1, 30, 30, dtype=torch.bool)
    mask[:, :, 5:12, 5:12] = False
    x[:, :, 20, 20] = 0.5
    a = atmospheric_light(x, patch=1, fraction=0.001, mask=mask)
    assert torch.allclose(a, torch.full((1, 3), 0.5))


def test_transmission_closed_form():
    x = torch.rand(1, 3, 21, 21)
    a = torch.tensor([[0.8, 0.9, 1.0]])
    t = transmission_estimate(x, a, omega=0.95, patch=5)
    ref = 1 - 0.95 * minimum_filter((x[0].numpy() / a[0, :, None, None].numpy()).min(axis=0), size=5, mode="nearest")
    np.testing.assert_allclose(t[0, 0].numpy(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("r", [1, 4, 12])
def test_box_filter_matches_clipped_window_mean(r):
    x = torch.rand(1, 2, 37, 29, dtype=torch.float64)
    ours = box_filter(x, r)
    # Clipped-window mean = zero-padded sum / zero-padded count.
    size = 2 * r + 1
    num = uniform_filter(x[0].numpy(), size=(1, size, size), mode="constant")
    den = uniform_filter(np.ones((1, 37, 29)), size=(1, size, size), mode="constant")
    np.testing.assert_allclose(ours[0].numpy(), num / den, rtol=1e-10)


def test_guided_filter_against_numpy_reference_and_properties():
    g = torch.Generator().manual_seed(3)
    guide = torch.rand(1, 1, 40, 40, generator=g, dtype=torch.float64)
    src = torch.rand(1, 1, 40, 40, generator=g, dtype=torch.float64)
    r, eps = 3, 1e-2
    out = guided_filter(guide, src, r, eps)

    def mean(a):
        size = 2 * r + 1
        return uniform_filter(a, size, mode="constant") / uniform_filter(np.ones_like(a), size, mode="constant")

    i, p = guide[0, 0].numpy(), src[0, 0].numpy()
    a = (mean(i * p) - mean(i) * mean(p)) / (mean(i * i) - mean(i) ** 2 + eps)
    b = mean(p) - a * mean(i)
    np.testing.assert_allclose(out[0, 0].numpy(), mean(a) * i + mean(b), rtol=1e-8, atol=1e-10)
    # Filtering the guide with itself at tiny eps keeps its edges: a step edge survives.
    step = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    step[..., 16:] = 1.0
    kept = guided_filter(step, step, 4, 1e-6)
    assert torch.allclose(kept, step, atol=1e-3)
