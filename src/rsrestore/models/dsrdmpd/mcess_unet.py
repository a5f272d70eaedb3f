"""Stage 1 of DS-RDMPD: MCESS-UNet, a five-level U-Net that gives a first dehazed estimate.

Zhou, Wang, Zhang, Tao, Ren, "A Dual-Stage Residual Diffusion Model with Perceptual Decoding for Remote Sensing Image
Dehazing", IEEE TGRS 2025.

* Encoder: five MSCA blocks at widths C, 2C, 4C, 8C, 16C (C = ``dim``, 64 in the paper) with 2x max-pooling between
  them. An MSCA block is [conv3x3-BN-ReLU] x 2 followed by a multi-scale inception attention (four C/4 branches:
  1x1->3x3, 1x1->5x5, maxpool3->1x1, 1x1, each with LeakyReLU; concatenated, a 1x1 convolution back to C, then channel
  attention), plus a 1x1 convolution of the block's input as a residual.
* Bottleneck, ASFusion: two depth-wise dilated 3x3 convolutions (dilation 2) describe the scene; from their global
  average, two MLPs (C -> 2C -> C) give a transmission-like t and an airlight-like a, and the output is
  x t + a (1 - t), the form of the atmospheric scattering model.
* Decoder levels: bilinear 2x upsampling + conv3x3-BN-ReLU; ESS on the skip (an efficient attention gate with grouped
  1x1 convolutions, then on the concatenation ECA, scSE and a 7x7 spatial attention), plus a 1x1 adjustment of the
  skip to the concatenated width; then an MSCA block.
* A final 1x1 convolution to the bands, added to the input.

Details the paper leaves open follow the authors' code: the attention gate's grouped convolutions use 32 groups
(here the largest divisor of the width up to ``gate_groups``, so narrow CPU-sized models build too); the gate output
is ``up * psi + up``; scSE keeps the larger of its channel and spatial branches, each with its own 1x1 residual; the
MLPs of ASFusion and the channel squeeze of scSE end in ReLU; the channel attention of the MSCA block is
Linear-Sigmoid-Linear-Sigmoid with reduction 4; ASFusion's dilated convolutions pad by 3 (reflect), so its
description map is 4 pixels larger than x before the global average. At ``dim=64`` and 3 bands the model has
58,716,939 parameters, the count of the authors' ``U_Net(dim=64)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..blocks import pad_to_multiple
from .shared_statistics import shared, spatial_mean

__all__ = ["MCESSUNetConfig", "MCESSUNet", "MSCABlock", "ASFusion", "ESS"]

#: Four 2x max-poolings: inputs are padded to a multiple of this.
STRIDE = 16
#: Parameters of the authors' U_Net(dim=64) for 3 bands (counted from their code).
OFFICIAL_PARAMETERS = 58_716_939


@dataclass
class MCESSUNetConfig:
    """Settings of :class:`MCESSUNet`; the defaults are the paper's (58.7M parameters).

    Attributes:
        in_channels: bands of the input and of the output.
        dim: width of the first level; the encoder doubles it four times (64 .. 1024 in the paper).
        gate_groups: groups of the attention gate's 1x1 convolutions (32 in the authors' code); a width it does not
            divide uses its largest divisor below it.
        cam_reduction: reduction of the MSCA channel attention (4).
    """

    in_channels: int = 3
    dim: int = 64
    gate_groups: int = 32
    cam_reduction: int = 4

    def __post_init__(self) -> None:
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.dim < 4 or self.dim % 4:
            raise ValueError(f"dim must be a positive multiple of 4 (four C/4 inception branches), got {self.dim}")
        if self.gate_groups < 1 or self.cam_reduction < 1 or self.cam_reduction > self.dim:
            raise ValueError(
                f"need gate_groups >= 1 and 1 <= cam_reduction <= dim, got {self.gate_groups}, {self.cam_reduction}"
            )

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.dim * 2**i for i in range(5))


def conv_bn_relu(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ChannelAttention(nn.Module):
    """x * sigmoid(W2 sigmoid(W1 GAP(x))): the MSCA block's channel attention."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels // reduction), nn.Sigmoid(), nn.Linear(channels // reduction, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        w = self.mlp(spatial_mean(self, x))
        return x * w[:, :, None, None]


class InceptionAttention(nn.Module):
    """Four C/4 branches (1x1->3x3, 1x1->5x5, maxpool3->1x1, 1x1), concatenated, 1x1 back to C, channel attention."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        f = channels // 4
        act = nn.LeakyReLU
        self.branch3 = nn.Sequential(nn.Conv2d(channels, f, 1), act(), nn.Conv2d(f, f, 3, padding=1), act())
        self.branch5 = nn.Sequential(nn.Conv2d(channels, f, 1), act(), nn.Conv2d(f, f, 5, padding=2), act())
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(channels, f, 1), act())
        self.branch1 = nn.Sequential(nn.Conv2d(channels, f, 1), act())
        self.merge = nn.Conv2d(4 * f, channels, 1)
        self.attention = ChannelAttention(channels, reduction)

    def forward(self, x: Tensor) -> Tensor:
        # PyTorch's CPU max pooling is about 4x faster on a channels_last map than on a contiguous one
        pooled = self.branch_pool(x.contiguous(memory_format=torch.channels_last))
        y = torch.cat([self.branch3(x), self.branch5(x), pooled, self.branch1(x)], dim=1)
        return self.attention(self.merge(y))


class MSCABlock(nn.Module):
    """Multi-scale channel attention block: [conv3x3-BN-ReLU] x 2, inception attention, plus a 1x1 residual."""

    def __init__(self, cin: int, cout: int, reduction: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(cin, cout), conv_bn_relu(cout, cout), InceptionAttention(cout, reduction))
        self.residual = nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.residual(x)


class ASFusion(nn.Module):
    """Atmospheric-scattering fusion at the bottleneck: x * t + a * (1 - t), t and a from global descriptors."""

    PAD = 3  # the authors' padding for the dilated 3x3 (effective 5x5): the map grows by 2 pixels per convolution

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.describe = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(channels, channels, 3, dilation=2, groups=channels),
                    nn.BatchNorm2d(channels),
                    nn.ReLU(inplace=True),
                )
                for _ in range(2)
            ]
        )
        self.mlp_t = self._mlp(channels)
        self.mlp_a = self._mlp(channels)

    @staticmethod
    def _mlp(c: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(c, 2 * c, bias=False), nn.ReLU(inplace=True), nn.Linear(2 * c, c, bias=False),
                             nn.ReLU(inplace=True))

    def describe_globally(self, x: Tensor) -> Tensor:
        """The (B, C) global average of the two dilated convolutions' description of x."""
        mid = x
        for conv in self.describe:
            # Reflect padding needs a side longer than the pad; a tiny bottleneck (a small tile) replicates instead.
            mode = "reflect" if min(mid.shape[-2:]) > self.PAD else "replicate"
            mid = conv(F.pad(mid, (self.PAD,) * 4, mode=mode))
        return mid.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        # shared across the tiles of a scene; replayed, the description is not computed at all
        g = shared(self, "description", lambda: self.describe_globally(x), x.shape[0])
        t = self.mlp_t(g)[:, :, None, None]
        a = self.mlp_a(g)[:, :, None, None]
        return x * t + a * (1 - t)


class AttentionGate(nn.Module):
    """Efficient attention gate: psi = sigmoid(BN(1x1(ReLU(gconv(skip) + gconv(up))))); returns up * psi + up."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        groups = max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)

        def branch() -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(channels, channels, 1, groups=groups), nn.BatchNorm2d(channels),
                                 nn.ReLU(inplace=True))

        self.from_skip = branch()
        self.from_up = branch()
        self.psi = nn.Sequential(nn.Conv2d(channels, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, skip: Tensor, up: Tensor) -> Tensor:
        psi = self.psi(F.relu(self.from_skip(skip) + self.from_up(up)))
        return up * psi + up


class EfficientChannelAttention(nn.Module):
    """ECA (Wang et al. 2020): a 1-D convolution across the pooled channels, kernel from log2(C)."""

    def __init__(self, channels: int, gamma: int = 2, b: int = 1) -> None:
        super().__init__()
        k = int(abs((math.log2(channels) + b) / gamma))
        k = k if k % 2 else k + 1
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        w = self.conv(spatial_mean(self, x)[:, None, :])  # (B, 1, C)
        return x * torch.sigmoid(w)[:, 0, :, None, None]


class SCSE(nn.Module):
    """Concurrent spatial and channel squeeze-excitation; the larger response of the two branches at each element.

    Each branch adds its own 1x1 convolution of the input, and so does the block (as in the authors' code).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.channel_squeeze = nn.Sequential(
            nn.Conv2d(channels, half, 1, bias=False), nn.ReLU(inplace=True), nn.Conv2d(half, 1, 1, bias=False),
            nn.ReLU(inplace=True),
        )
        self.spatial_squeeze = nn.Sequential(
            nn.Conv2d(channels, half, 1, bias=False), nn.ReLU(inplace=True), nn.Conv2d(half, 1, 1, bias=False),
            nn.Sigmoid(),
        )
        self.channel_residual = nn.Conv2d(channels, channels, 1, bias=False)
        self.spatial_residual = nn.Conv2d(channels, channels, 1, bias=False)
        self.residual = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        res = self.residual(x)
        c = x * self.channel_squeeze(spatial_mean(self, x)[:, :, None, None]) + self.channel_residual(x)
        s = x * self.spatial_squeeze(x) + self.spatial_residual(x)
        return torch.maximum(c + res, s + res)


class SpatialAttention(nn.Module):
    """x * sigmoid(conv7x7([mean_c(x), max_c(x)]))."""

    def __init__(self, kernel: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class ESS(nn.Module):
    """Skip fusion of a decoder level: gate the upsampled map by the skip, concatenate, ECA, scSE, spatial attention."""

    def __init__(self, channels: int, gate_groups: int) -> None:
        super().__init__()
        self.gate = AttentionGate(channels, gate_groups)
        self.eca = EfficientChannelAttention(2 * channels)
        self.scse = SCSE(2 * channels)
        self.spatial = SpatialAttention(7)

    def forward(self, skip: Tensor, up: Tensor) -> Tensor:
        y = torch.cat([self.gate(skip, up), skip], dim=1)
        return self.spatial(self.scse(self.eca(y)))


class DecoderLevel(nn.Module):
    """Bilinear 2x up + conv3x3-BN-ReLU to C; ESS(skip, up) + 1x1(skip) at 2C; MSCA block back to C."""

    def __init__(self, channels: int, cfg: MCESSUNetConfig) -> None:
        super().__init__()
        self.up = conv_bn_relu(2 * channels, channels)
        self.ess = ESS(channels, cfg.gate_groups)
        self.adjust = nn.Conv2d(channels, 2 * channels, 1)
        self.fuse = MSCABlock(2 * channels, channels, cfg.cam_reduction)

    def forward(self, deep: Tensor, skip: Tensor) -> Tensor:
        up = self.up(F.interpolate(deep, scale_factor=2, mode="bilinear", align_corners=True))
        return self.fuse(self.ess(skip, up) + self.adjust(skip))


class MCESSUNet(nn.Module):
    """Stage 1 of DS-RDMPD: ``forward(x)`` maps a hazy (B, C, H, W) image in [0, 1] to a first estimate.

    Any H, W: the input is reflect-padded to a multiple of 16 and the output cropped back. The output is not
    clipped: stage 2 takes it as it is, and the training loss sees every pixel.
    """

    stride = STRIDE

    def __init__(self, cfg: MCESSUNetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or MCESSUNetConfig()
        w = cfg.widths
        self.encoder = nn.ModuleList(
            [MSCABlock(cin, cout, cfg.cam_reduction) for cin, cout in zip((cfg.in_channels,) + w[:-1], w)]
        )
        self.neck = ASFusion(w[-1])
        self.decoder = nn.ModuleList([DecoderLevel(c, cfg) for c in reversed(w[:-1])])
        self.head = nn.Conv2d(w[0], cfg.in_channels, 1)

    def forward(self, x: Tensor, sar: Tensor | None = None) -> Tensor:
        del sar  # optical only; accepted for the common restorer interface
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"MCESSUNet expects (B, {self.cfg.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        xp, _ = pad_to_multiple(x, STRIDE)
        skips = []
        y = xp
        for i, block in enumerate(self.encoder):
            y = block(F.max_pool2d(y, 2) if i else y)
            skips.append(y)
        y = self.neck(skips.pop())
        for level in self.decoder:
            y = level(y, skips.pop())
        return (self.head(y) + xp)[..., :h, :w]
