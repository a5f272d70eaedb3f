"""Mobile inverted bottleneck block (MBConv) with squeeze-and-excitation.

The block of MobileNetV2 (Sandler et al., CVPR 2018, Sec. 3.3) with the squeeze-and-excitation gate of Hu et al.
(CVPR 2018, Eq. 2-3) as arranged in EfficientNet (Tan & Le, ICML 2019, Sec. 4): expand 1x1 -> depth-wise kxk ->
SE -> project 1x1 (linear), with an identity shortcut when input and output shapes agree.

Normalisation is optional and off by default: restoration nets are trained with batches of a handful of patches,
where batch statistics are noisy and shift the output's absolute radiometry between training and inference.
"""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    """Channel gate s = sigmoid(W2 act(W1 avgpool(x))) applied as x * s (Hu et al. 2018, Eq. 2-3)."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        if channels < 1 or reduced < 1:
            raise ValueError(f"SqueezeExcite needs positive channel counts, got {channels} and {reduced}")
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = nn.SiLU(inplace=True)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        s = torch.sigmoid(self.expand(self.act(self.reduce(s))))
        return x * s


class MBConv(nn.Module):
    """Expand 1x1, depth-wise kxk, squeeze-excitation, project 1x1, residual.

    Args:
        in_ch: input channels.
        out_ch: output channels (defaults to ``in_ch``); the shortcut is used only when ``in_ch == out_ch`` and
            ``stride == 1``, as in MobileNetV2.
        expand: expansion ratio of the hidden width (1 skips the expansion conv).
        kernel: depth-wise kernel size (odd).
        stride: depth-wise stride.
        se_ratio: SE bottleneck width as a fraction of ``in_ch`` (EfficientNet's convention); 0 disables SE.
        norm: insert BatchNorm after each conv.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        expand: int = 4,
        kernel: int = 3,
        stride: int = 1,
        se_ratio: float = 0.25,
        norm: bool = False,
    ):
        super().__init__()
        out_ch = in_ch if out_ch is None else out_ch
        if in_ch < 1 or out_ch < 1:
            raise ValueError(f"MBConv needs positive channel counts, got in_ch={in_ch}, out_ch={out_ch}")
        if expand < 1:
            raise ValueError(f"MBConv expand ratio must be >= 1, got {expand}")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"MBConv kernel must be a positive odd number, got {kernel}")
        if stride not in (1, 2):
            raise ValueError(f"MBConv stride must be 1 or 2, got {stride}")
        if not 0.0 <= se_ratio <= 1.0:
            raise ValueError(f"MBConv se_ratio must be in [0, 1], got {se_ratio}")

        hidden = in_ch * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(in_ch, hidden, 1, bias=not norm)]
            if norm:
                layers += [nn.BatchNorm2d(hidden)]
            layers += [nn.SiLU(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, kernel, stride=stride, padding=kernel // 2, groups=hidden, bias=not norm)]
        if norm:
            layers += [nn.BatchNorm2d(hidden)]
        layers += [nn.SiLU(inplace=True)]
        if se_ratio > 0:
            layers += [SqueezeExcite(hidden, max(1, int(in_ch * se_ratio)))]
        # Linear projection (no activation): MobileNetV2 Sec. 3.2 shows a non-linearity here destroys information
        # in the low-dimensional bottleneck.
        layers += [nn.Conv2d(hidden, out_ch, 1, bias=not norm)]
        if norm:
            layers += [nn.BatchNorm2d(out_ch)]
        self.body = nn.Sequential(*layers)
        self.use_residual = in_ch == out_ch and stride == 1
        self.in_ch, self.out_ch = in_ch, out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_ch:
            raise ValueError(f"MBConv expects (B, {self.in_ch}, H, W), got {tuple(x.shape)}")
        y = self.body(x)
        return x + y if self.use_residual else y
