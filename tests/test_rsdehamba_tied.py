"""RSDehamba's tied last up-sampling: the mean of the 2x2 transposed convolution's taps, so no 2-pixel grid."""

import torch
import torch.nn.functional as F

from rsrestore.models.registry import load_model
from rsrestore.models.rsdehamba import RSDehamba, RSDehambaConfig


def _small(tied: bool) -> RSDehamba:
    torch.manual_seed(0)
    cfg = RSDehambaConfig(embed_dim=8, depths=(1, 1, 1), d_state=4, scan_impl="chunked", tied_last_upsampling=tied)
    return RSDehamba(cfg).eval()


def test_tied_upsampling_is_the_block_mean_of_the_untied_one():
    model = _small(True)
    x = torch.randn(2, 16, 5, 7)
    tied = model._last_upsampling(x)
    untied = model.up1(x)
    block_mean = F.interpolate(F.avg_pool2d(untied, 2), scale_factor=2, mode="nearest")
    torch.testing.assert_close(tied, block_mean, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(untied, block_mean, atol=1e-3)  # the free taps do make a period-2 pattern


def test_tied_upsampling_keeps_a_flat_map_flat():
    model = _small(True)
    flat = torch.ones(1, 16, 4, 4) * torch.randn(1, 16, 1, 1)
    out = model._last_upsampling(flat)
    assert out.std(dim=(2, 3)).max() < 1e-6
    assert model.up1(flat).std(dim=(2, 3)).max() > 1e-3


def test_same_parameters_either_way_and_the_option_changes_the_output():
    a, b = _small(False), _small(True)
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x), atol=1e-4)


def test_bundled_weights_use_the_tied_upsampling():
    model = load_model("rsdehamba")
    assert model.cfg.tied_last_upsampling is True
