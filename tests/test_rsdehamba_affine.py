"""RSDehamba's affine head: a per-pixel gain beside the residual, J = (1 + g) I + r."""

import pytest
import torch
import torch.nn.functional as F

from rsrestore.metrics.detail import gradient_energy
from rsrestore.models.rsdehamba import RSDehamba, RSDehambaConfig
from rsrestore.train.loop import load_init_weights


def _small(head: str, map_smoothing: float = 0.0) -> RSDehamba:
    torch.manual_seed(0)
    return RSDehamba(RSDehambaConfig(embed_dim=8, depths=(1, 1, 1), d_state=4, scan_impl="chunked", head=head,
                                     map_smoothing=map_smoothing))


def _fine_energy(x: torch.Tensor) -> float:
    """Mean squared neighbour difference: the energy of the finest detail."""
    return float(gradient_energy(x).mean())


def _hazy_scene_with_fine_detail() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    detail = (torch.rand(3, 32, 32) - 0.5) * 0.3
    clear = (torch.stack([0.3 + 0.2 * torch.sin(5 * xx + k) * torch.cos(3 * yy) for k in range(3)]) + detail)[None]
    t = 0.4 + 0.3 * xx
    return clear * t + 0.9 * (1 - t), clear


def _fit(model: RSDehamba, hazy: torch.Tensor, clear: torch.Tensor, steps: int = 60) -> torch.Tensor:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = F.l1_loss(model(hazy), clear)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return model(hazy)


def test_the_affine_head_starts_as_the_residual_model_and_loads_its_weights(tmp_path):
    from safetensors.torch import save_file

    residual, affine = _small("residual").eval(), _small("affine").eval()
    path = tmp_path / "residual.safetensors"
    save_file(residual.state_dict(), str(path))
    info = load_init_weights(affine, str(path))
    assert info["tensors_not_in_file"] == 2  # the gain convolution's weight and bias
    x = torch.rand(2, 3, 20, 28)
    with torch.no_grad():
        assert torch.equal(affine(x), residual(x))


def test_the_gain_multiplies_the_input():
    model = _small("affine").eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        model.gain_head.bias.fill_(0.5)  # g = 0.5 everywhere: the output gains half the input
        after = model(x)
    torch.testing.assert_close(after - before, 0.5 * x)


def test_an_unknown_head_is_refused():
    with pytest.raises(ValueError, match="head must be one of"):
        RSDehambaConfig(head="gain")


def test_the_affine_head_learns_a_haze_inversion_faster_and_sharper():
    """On a hazy scene with fine detail, the same few steps take the affine head further than the residual one."""
    hazy, clear = _hazy_scene_with_fine_detail()
    errors = {head: F.l1_loss(_fit(_small(head), hazy, clear), clear).item() for head in ("residual", "affine")}
    assert errors["affine"] < 0.8 * errors["residual"], errors
    assert errors["affine"] < 0.3 * F.l1_loss(hazy, clear).item(), errors


def test_map_smoothing_blurs_the_maps_and_keeps_a_uniform_gain_exact():
    sharp, smooth = _small("affine").eval(), _small("affine", map_smoothing=2.0).eval()
    smooth.load_state_dict(sharp.state_dict())  # no parameters of its own: the same weights load
    x = torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        offsets = {m: m(x) - x for m in (sharp, smooth)}  # the gain starts at zero: output - input is the offset
        assert _fine_energy(offsets[smooth]) < 0.2 * _fine_energy(offsets[sharp])
        # a uniform map is its own blur, to the image's edges: the gain still multiplies the input exactly
        smooth.gain_head.bias.fill_(0.5)
        torch.testing.assert_close(smooth(x) - x - offsets[smooth], 0.5 * x)


def test_map_smoothing_needs_the_affine_head():
    with pytest.raises(ValueError, match="map_smoothing"):
        RSDehambaConfig(map_smoothing=2.0)
    with pytest.raises(ValueError, match="map_smoothing"):
        RSDehambaConfig(head="affine", map_smoothing=-1.0)


def test_smoothed_maps_still_learn_a_haze_inversion_and_amplify_the_detail():
    """With maps as smooth as haze, the model still trains, and the detail it gives back is the input's, amplified."""
    hazy, clear = _hazy_scene_with_fine_detail()
    out = _fit(_small("affine", map_smoothing=1.5), hazy, clear)
    assert F.l1_loss(out, clear).item() < 0.3 * F.l1_loss(hazy, clear).item()
    assert _fine_energy(out) > 1.5 * _fine_energy(hazy), (_fine_energy(out), _fine_energy(hazy))
