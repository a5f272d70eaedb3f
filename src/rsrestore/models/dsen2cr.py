"""DSen2-CR: residual SAR-optical cloud removal network.

Meraner, Ebel, Zhu & Schmitt, "Cloud removal in Sentinel-2 imagery using a deep residual neural network and
SAR-optical data fusion", ISPRS J. Photogramm. Remote Sens. 166 (2020), Sec. 3.2 and Fig. 3:
concatenate optical and SAR bands, a 3x3 conv to F features with ReLU, B residual blocks
(conv-ReLU-conv, scaled by a constant before the addition, Eq. (2)), a 3x3 conv back to the optical bands and a
long skip that adds the cloudy optical input, so the network learns only the correction. B = 16, F = 256 and a
residual scale of 0.1 are the paper's settings; train it with :func:`rsrestore.losses.carl.carl_loss`.

Value ranges: this library feeds optical reflectance / 10000 and SAR scaled to [0, 1] (VV clipped to [-25, 0] dB,
VH to [-32.5, 0] dB), as the ``sen12mscr`` loader does. The original code instead divides optical digital numbers
by 2000 and maps SAR to [0, 2]; ``optical_gain`` and ``sar_gain`` reproduce those internal ranges so weights and
learning rates carry over, and the output is mapped back to the library's [0, 1] scale.

Clear pixels (``keep_clear``, on by default): the output is the network's only on cloud and cloud shadow and the input
elsewhere, bit for bit (:mod:`rsrestore.models.clear_pixels`): with the ``mask`` passed to ``forward`` (known in
training on synthetic clouds), else with a mask detected on the input from the rule-based cloud score and shadow test
the CARL loss uses (with a hysteresis, and shadows only in scenes with cloud).
This is not in the paper, whose CARL loss only pulls clear pixels toward the input; it adds no parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .clear_pixels import KeepsClearPixels, compose


@dataclass
class DSen2CRConfig:
    optical_bands: int = 13
    sar_bands: int = 2
    features: int = 256
    blocks: int = 16
    res_scale: float = 0.1
    # 10000 / 2000: the paper's optical scaling relative to reflectance in [0, 1].
    optical_gain: float = 5.0
    # The paper's SAR range is [0, 2] (``max_val_sar = 2``).
    sar_gain: float = 2.0
    # Output = input on pixels without cloud or shadow (module docstring); the detector's lower cloud-score
    # threshold, which counts within a few pixels of confident cloud (rsrestore.models.clear_pixels).
    keep_clear: bool = True
    clear_threshold: float = 0.1
    # In training with a known cloud mask, also hand the pixels the detector flags to the network (and so to the
    # loss): it learns to leave as they are the clear pixels the detector takes for cloud when it restores.
    train_on_detected: bool = False


class ResBlock(nn.Module):
    """x + res_scale * Conv(ReLU(Conv(x))), Meraner et al. (2020) Eq. (2); scaling keeps deep stacks stable
    without batch normalisation (Lim et al., EDSR, 2017)."""

    def __init__(self, features: int, res_scale: float):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(self.act(self.conv1(x)))


class DSen2CR(KeepsClearPixels, nn.Module):
    """DSen2-CR restorer: ``forward(x, sar)`` returns the cloud-free estimate with the shape of ``x``.

    Fully convolutional with stride 1, so any H, W works without padding.
    """

    def __init__(self, cfg: DSen2CRConfig | None = None):
        super().__init__()
        cfg = cfg or DSen2CRConfig()
        if cfg.optical_bands < 1 or cfg.sar_bands < 0:
            raise ValueError(f"need optical_bands >= 1 and sar_bands >= 0, got {cfg.optical_bands}, {cfg.sar_bands}")
        if cfg.features < 1 or cfg.blocks < 0:
            raise ValueError(f"need features >= 1 and blocks >= 0, got {cfg.features}, {cfg.blocks}")
        if cfg.optical_gain <= 0 or cfg.sar_gain <= 0:
            raise ValueError(f"gains must be positive, got {cfg.optical_gain}, {cfg.sar_gain}")
        self.cfg = cfg
        self.head = nn.Sequential(
            nn.Conv2d(cfg.optical_bands + cfg.sar_bands, cfg.features, 3, padding=1), nn.ReLU(inplace=True)
        )
        self.body = nn.Sequential(*[ResBlock(cfg.features, cfg.res_scale) for _ in range(cfg.blocks)])
        self.tail = nn.Conv2d(cfg.features, cfg.optical_bands, 3, padding=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Keras' he_uniform with zero biases, as in the reference implementation: U(-sqrt(6/fan_in), sqrt(6/fan_in)).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, sar: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                stats: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Cloud-free estimate of ``x``; ``mask`` (B, 1, H, W), 1 = cloud or shadow, when known; ``stats`` from
        :meth:`scene_statistics` of the whole scene when ``x`` is a tile of it."""
        cfg = self.cfg
        if x.ndim != 4 or x.shape[1] != cfg.optical_bands:
            raise ValueError(f"DSen2CR expects optical input (B, {cfg.optical_bands}, H, W), got {tuple(x.shape)}")
        opt = x * cfg.optical_gain
        if cfg.sar_bands > 0:
            if sar is None:
                raise ValueError(f"DSen2CR was built with sar_bands={cfg.sar_bands} and needs a SAR tensor")
            if sar.ndim != 4 or sar.shape[1] != cfg.sar_bands or sar.shape[0] != x.shape[0] or sar.shape[2:] != x.shape[2:]:
                raise ValueError(
                    f"SAR must be (B, {cfg.sar_bands}, H, W) matching optical {tuple(x.shape)}, got {tuple(sar.shape)}"
                )
            inp = torch.cat([opt, sar.to(x.dtype) * cfg.sar_gain], dim=1)
        else:
            if sar is not None:
                raise ValueError("DSen2CR was built with sar_bands=0 but a SAR tensor was given")
            inp = opt
        y = self.tail(self.body(self.head(inp))) + opt
        return compose(y / cfg.optical_gain, x, enabled=cfg.keep_clear, mask=mask, stats=stats,
                       threshold=cfg.clear_threshold, with_detected=cfg.train_on_detected and self.training)
