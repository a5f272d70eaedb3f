"""DehazeFormer-T, built here only as a speed reference for the benchmarks (never part of the library).

Song, He, Qin, Zhang, Wang, "Vision Transformers for Single Image Dehazing", IEEE TIP 2023. The tiny configuration:
a five-stage U-Net of Swin-style blocks with widths (24, 48, 96, 48, 24), depths (4, 4, 4, 2, 2), heads (2, 4, 6, 1, 1),
MLP ratios (2, 4, 4, 2, 2), window 8 (shifted in every other block), windowed attention in the last
(0, 1/2, 1, 0, 0) of each stage's blocks and a 5x5 depth-wise convolution on the values of every block; RescaleNorm
(a LayerNorm over C, H, W whose mean and std re-enter through 1x1 convolutions), ReLU MLPs of 1x1 convolutions,
patch merging by 2x2 stride-2 convolutions, patch splitting by 1x1 convolution + pixel shuffle, selective-kernel
fusion of the skips, and a 3x3 head predicting K and B of the soft reconstruction ``K * x - B + x``. Written from the
paper's description and tiny configuration; ``benchmarks/bench_rsdehamba.py`` records its parameter count (0.69M in
the paper) and its multiply-add count at 256 x 256 (13.3 GFLOP = 6.65 GMAC in the paper) next to its speed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WIDTHS = (24, 48, 96, 48, 24)
DEPTHS = (4, 4, 4, 2, 2)
HEADS = (2, 4, 6, 1, 1)
MLP_RATIOS = (2.0, 4.0, 4.0, 2.0, 2.0)
ATTN_RATIOS = (0.0, 0.5, 1.0, 0.0, 0.0)
WINDOW = 8


class RescaleNorm(nn.Module):
    """LayerNorm over (C, H, W); returns the normalised map and the 1x1-conv rescale and rebias of its std, mean."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.meta1 = nn.Conv2d(1, dim, 1)
        self.meta2 = nn.Conv2d(1, dim, 1)

    def forward(self, x: Tensor):
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(1, 2, 3), keepdim=True).add(self.eps).sqrt()
        return (x - mean) / std * self.weight + self.bias, self.meta1(std), self.meta2(mean)


class WindowAttention(nn.Module):
    """Multi-head attention inside w x w windows with a relative-position bias from a small MLP on log distances."""

    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.window, self.heads, self.scale = window, heads, (dim // heads) ** -0.5
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).float()
        self.register_buffer("rel_log", torch.sign(rel) * torch.log1p(rel.abs()), persistent=False)
        self.meta = nn.Sequential(nn.Linear(2, 256), nn.ReLU(inplace=True), nn.Linear(256, heads))

    def forward(self, qkv: Tensor) -> Tensor:  # (windows, N, 3C) -> (windows, N, C)
        b, n, c3 = qkv.shape
        c = c3 // 3
        qkv = qkv.view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1) + self.meta(self.rel_log).permute(2, 0, 1).unsqueeze(0)
        return (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)


class Attention(nn.Module):
    """Token mixer: V by 1x1 conv, a 5x5 depth-wise conv on V, plus shifted-window attention when used."""

    def __init__(self, depth_total: int, dim: int, heads: int, window: int, shift: int, use_attn: bool):
        super().__init__()
        self.dim, self.window, self.shift, self.use_attn = dim, window, shift, use_attn
        self.V = nn.Conv2d(dim, dim, 1)
        self.conv = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, padding_mode="reflect")
        if use_attn:
            self.QK = nn.Conv2d(dim, dim * 2, 1)
            self.attn = WindowAttention(dim, window, heads)
        self.proj = nn.Conv2d(dim, dim, 1)
        gain = (8 * depth_total) ** (-1 / 4)  # the paper's depth-scaled initialisation (speed does not depend on it)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = float(m.weight.shape[0] + m.weight.shape[1])
                nn.init.trunc_normal_(m.weight, std=gain * math.sqrt(2.0 / fan))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        v = self.V(x)
        out = self.conv(v)
        if self.use_attn:
            qkv = torch.cat([self.QK(x), v], dim=1)
            ws, s = self.window, self.shift
            ph, pw = (-h) % ws, (-w) % ws
            qkv = F.pad(qkv, (s, (ws - s + pw) % ws, s, (ws - s + ph) % ws), mode="reflect")
            hp, wp = qkv.shape[2:]
            win = qkv.permute(0, 2, 3, 1).view(b, hp // ws, ws, wp // ws, ws, 3 * c)
            win = win.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, 3 * c)
            att = self.attn(win).view(b, hp // ws, wp // ws, ws, ws, c).permute(0, 5, 1, 3, 2, 4)
            att = att.reshape(b, c, hp, wp)[:, :, s : s + h, s : s + w]
            out = out + att
        return self.proj(out)


class Block(nn.Module):
    def __init__(self, depth_total, dim, heads, mlp_ratio, window, shift, use_attn):
        super().__init__()
        self.use_attn = use_attn
        self.norm = RescaleNorm(dim) if use_attn else None
        self.attn = Attention(depth_total, dim, heads, window, shift, use_attn)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if self.use_attn:
            y, rescale, rebias = self.norm(x)
        y = self.attn(y)
        if self.use_attn:
            y = y * rescale + rebias
        x = x + y
        return x + self.mlp(x)


class Stage(nn.Module):
    def __init__(self, depth_total, dim, depth, heads, mlp_ratio, attn_ratio):
        super().__init__()
        attn_from = depth - int(attn_ratio * depth)  # attention in the last blocks of the stage
        self.blocks = nn.Sequential(*[
            Block(depth_total, dim, heads, mlp_ratio, WINDOW, 0 if i % 2 == 0 else WINDOW // 2, i >= attn_from)
            for i in range(depth)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class SKFusion(nn.Module):
    def __init__(self, dim: int, height: int = 2, reduction: int = 8):
        super().__init__()
        self.height = height
        d = max(dim // reduction, 4)
        self.mlp = nn.Sequential(nn.Conv2d(dim, d, 1, bias=False), nn.ReLU(), nn.Conv2d(d, dim * height, 1, bias=False))

    def forward(self, feats: list[Tensor]) -> Tensor:
        b, c, h, w = feats[0].shape
        x = torch.stack(feats, 1)
        attn = self.mlp(x.sum(1).mean((2, 3), keepdim=True)).view(b, self.height, c, 1, 1).softmax(1)
        return (x * attn).sum(1)


class DehazeFormerT(nn.Module):
    def __init__(self, in_chans: int = 3):
        super().__init__()
        total = sum(DEPTHS)
        w = WIDTHS
        self.embed = nn.Conv2d(in_chans, w[0], 3, padding=1, padding_mode="reflect")
        self.stages = nn.ModuleList(
            Stage(total, w[i], DEPTHS[i], HEADS[i], MLP_RATIOS[i], ATTN_RATIOS[i]) for i in range(5))
        self.merge1 = nn.Conv2d(w[0], w[1], 2, stride=2)
        self.merge2 = nn.Conv2d(w[1], w[2], 2, stride=2)
        self.split1 = nn.Sequential(nn.Conv2d(w[2], w[3] * 4, 1), nn.PixelShuffle(2))
        self.split2 = nn.Sequential(nn.Conv2d(w[3], w[4] * 4, 1), nn.PixelShuffle(2))
        self.skip1, self.skip2 = nn.Conv2d(w[0], w[0], 1), nn.Conv2d(w[1], w[1], 1)
        self.fusion1, self.fusion2 = SKFusion(w[3]), SKFusion(w[4])
        self.head = nn.Conv2d(w[4], 4, 3, padding=1, padding_mode="reflect")

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[2:]
        pad = ((-h) % 4, (-w) % 4)
        xp = F.pad(x, (0, pad[1], 0, pad[0]), mode="reflect") if any(pad) else x
        f = self.stages[0](self.embed(xp))
        s1 = f
        f = self.stages[1](self.merge1(f))
        s2 = f
        f = self.stages[2](self.merge2(f))
        f = self.split1(f)
        f = self.fusion1([f, self.skip2(s2)]) + f
        f = self.stages[3](f)
        f = self.split2(f)
        f = self.fusion2([f, self.skip1(s1)]) + f
        f = self.stages[4](f)
        k, b = self.head(f).split((1, 3), dim=1)
        out = k * xp - b + xp
        return out[:, :, :h, :w]


def count_macs(model: nn.Module, x: Tensor) -> int:
    """Multiply-adds of convolutions, linear layers and attention matrix products in one forward (the usual count)."""
    macs = 0

    def conv_hook(m, inp, out):
        nonlocal macs
        macs += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    def linear_hook(m, inp, out):
        nonlocal macs
        macs += out.numel() * m.in_features

    def attn_hook(m, inp, out):
        nonlocal macs
        windows, n, c = out.shape
        macs += 2 * windows * n * n * c  # q k^T and attn v

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, WindowAttention):
            hooks.append(m.register_forward_hook(attn_hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return macs
