"""SAR-guided cloud removal network: base fusion, directional fusion (SG-BAFM + SAR-guided transformer) and a
deep feature integration network (DFIN).

The network takes a cloudy optical image (13 Sentinel-2 bands by default, any count allowed) and a co-registered
SAR image (Sentinel-1 VV, VH) and predicts the cloud-free optical image. Stages, in the paper's terms:

1. Base fusion. The optical and SAR bands are concatenated and passed through MBConv blocks (expand 1x1,
   depth-wise 3x3, squeeze-excitation, project 1x1, residual).
2. Directional fusion. Each modality has its own feature extractor (strided conv + ReLU). The SAR-guided bi-modal
   attention fusion module gates the SAR features,

       F_sar <- F_sar * sigmoid(Conv(ReLU(Conv(F_opt) + Conv(F_sar)))),

   so that SAR regions the optical branch cannot explain (under clouds) are emphasised. A transformer then attends
   over patch tokens of the feature map (16x16 patches in the paper): queries and keys come from the gated SAR
   features, values from the optical features, so SAR structure decides which (possibly cloud-free) optical
   patches are copied where. A 1x1 conv maps the result back to the feature map, followed by an MBConv.
3. DFIN. Each stream F (base fusion, and the upsampled directional fusion) is refined as
   F_hat = Conv(Attention(F) + Pyramid(F) + F), with a channel attention and a two-level U-Net feature pyramid.
   The two refined streams are concatenated, a conv maps them to two candidate feature maps of which an
   element-wise max selects one per element, the selection is concatenated again with both streams, and a final
   MBConv maps to the optical band count.

Clear pixels (``keep_clear``, on by default): the output is the network's only on cloud and cloud shadow and the input
elsewhere, bit for bit (:mod:`rsrestore.models.clear_pixels`): with the ``mask`` passed to ``forward`` (known in
training on synthetic clouds), else with a mask detected on the input from DSen2-CR's rule-based cloud score and
shadow test (with a hysteresis, and shadows only in scenes with cloud). It adds no parameter.

Where the description leaves details open (widths, the form of the max selection, positional encoding) the
choices are documented on the config and in the modules below. Inputs of any H, W are reflect-padded to a multiple
of ``stride * patch`` (and of 4, for the pyramid) and cropped back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .blocks import pad_to_multiple
from .clear_pixels import KeepsClearPixels, compose

from rsrestore.models.mbconv import MBConv


@dataclass
class SARCRConfig:
    optical_bands: int = 13
    sar_bands: int = 2
    # Feature channels of every stream.
    width: int = 64
    # Attention heads of the SAR-guided transformer; must divide ``width`` and ``embed_dim``.
    heads: int = 8
    # Side of the square patch that forms one token, on the directional feature map.
    patch: int = 16
    # Total downsampling of the per-modality feature extractors (1, 2, 4 or 8).
    stride: int = 2
    # Smooth the directional stream after its sub-pixel upsampling with a fixed (stride x stride box)^2 filter, which
    # is zero at every frequency the pixel shuffle's phases alias to. Without it the upsampled stream carries a
    # checkerboard of period ``stride`` (on the real SEN12MS-CR patch 139_p839, its period-2 components were thousands
    # of times the stream's mean spectral density, and the output kept 6x). Off by default for the weights trained
    # without it; it adds no parameter.
    smooth_upsampling: bool = False
    # Width of the SAR patch embedding from which queries and keys are projected.
    embed_dim: int = 256
    # MBConv blocks in the base fusion stage.
    base_blocks: int = 2
    # MBConv expansion ratio and squeeze-excitation ratio (EfficientNet's defaults).
    expand: int = 4
    se_ratio: float = 0.25
    # Expansion of the final MBConv. Its input is already the 3 * width concatenation, so widening it further
    # would put the largest tensor of the network at full resolution for little gain.
    out_expand: int = 1
    # Reduction of the DFIN channel attention MLP (CBAM's default).
    ca_reduction: int = 16
    # Add a fixed 2D sinusoidal position code to the SAR tokens, so attention can prefer nearby patches while
    # staying valid for any token grid size.
    pos_encoding: bool = True
    # Add the cloudy input to the output (the network then predicts a correction, as DSen2-CR does). Off by
    # default: the architecture described maps features straight to the optical bands.
    input_skip: bool = False
    # Output = input on pixels without cloud or shadow (module docstring); the detector's lower cloud-score
    # threshold, which counts within a few pixels of confident cloud (rsrestore.models.clear_pixels).
    keep_clear: bool = True
    clear_threshold: float = 0.1
    # In training with a known cloud mask, also hand the pixels the detector flags to the network (and so to the
    # loss): it learns to leave as they are the clear pixels the detector takes for cloud when it restores.
    train_on_detected: bool = False


def _check_pair(x: torch.Tensor, sar: torch.Tensor | None, optical_bands: int, sar_bands: int) -> None:
    if x.ndim != 4 or x.shape[1] != optical_bands:
        raise ValueError(f"optical input must be (B, {optical_bands}, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"optical input must be a float tensor in [0, 1], got dtype {x.dtype}")
    if sar is None:
        raise ValueError("this network is SAR-guided: pass the SAR tensor (B, sar_bands, H, W) as `sar`")
    if sar.ndim != 4 or sar.shape[1] != sar_bands:
        raise ValueError(f"SAR input must be (B, {sar_bands}, H, W), got {tuple(sar.shape)}")
    if sar.shape[0] != x.shape[0] or sar.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"optical {tuple(x.shape)} and SAR {tuple(sar.shape)} must share batch size and spatial size"
        )




def _sincos_2d(gh: int, gw: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Fixed 2D sine-cosine position code (Vaswani et al. 2017, Sec. 3.5, per axis), shape (gh * gw, dim)."""
    quarter = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(quarter, device=device, dtype=torch.float32) / max(quarter, 1)))
    ys = torch.arange(gh, device=device, dtype=torch.float32)[:, None] * omega[None]
    xs = torch.arange(gw, device=device, dtype=torch.float32)[:, None] * omega[None]
    code = torch.cat(
        [
            ys.sin()[:, None].expand(gh, gw, quarter),
            ys.cos()[:, None].expand(gh, gw, quarter),
            xs.sin()[None].expand(gh, gw, quarter),
            xs.cos()[None].expand(gh, gw, quarter),
        ],
        dim=-1,
    )
    return code.reshape(gh * gw, 4 * quarter).to(dtype)


class ChannelAttention(nn.Module):
    """CBAM channel attention (Woo et al., ECCV 2018, Eq. 2): x * sigmoid(MLP(avgpool x) + MLP(maxpool x))."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean(dim=(2, 3), keepdim=True)
        mx = x.amax(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.mlp(avg) + self.mlp(mx))


class UNetPyramid(nn.Module):
    """Two-level U-Net feature pyramid (Ronneberger et al., MICCAI 2015): two strided encoder levels, a decoder
    that upsamples and fuses each level with its skip; output at the input resolution and width.
    Needs H and W divisible by 4."""

    def __init__(self, channels: int):
        super().__init__()
        c2 = 2 * channels
        self.down1 = nn.Sequential(nn.Conv2d(channels, c2, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.down2 = nn.Sequential(nn.Conv2d(c2, c2, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.up1 = nn.Sequential(nn.Conv2d(2 * c2, c2, 3, padding=1), nn.ReLU(inplace=True))
        self.up0 = nn.Conv2d(c2 + channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(d1)
        u1 = self.up1(torch.cat([F.interpolate(d2, size=d1.shape[-2:], mode="bilinear", align_corners=False), d1], 1))
        return self.up0(torch.cat([F.interpolate(u1, size=x.shape[-2:], mode="bilinear", align_corners=False), x], 1))


class DFINBlock(nn.Module):
    """Deep feature integration of one stream: F_hat = Conv(Attention(F) + Pyramid(F) + F)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.attention = ChannelAttention(channels, reduction)
        self.pyramid = UNetPyramid(channels)
        self.fuse = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.attention(x) + self.pyramid(x) + x)


class SGBAFM(nn.Module):
    """SAR-guided bi-modal attention fusion module: F_sar * sigmoid(Conv(ReLU(Conv(F_opt) + Conv(F_sar)))).

    The additive gate has the form of the attention gate of Oktay et al. (Attention U-Net, 2018, Eq. 1-2), with
    the optical features as the gating signal for the SAR features: the gate opens where the two disagree in a
    way the learned convs find informative (typically under clouds, where only SAR sees the ground).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.from_opt = nn.Conv2d(channels, channels, 3, padding=1)
        self.from_sar = nn.Conv2d(channels, channels, 3, padding=1)
        self.gate = nn.Conv2d(channels, channels, 1)

    def gate_map(self, f_opt: torch.Tensor, f_sar: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate(F.relu(self.from_opt(f_opt) + self.from_sar(f_sar))))

    def forward(self, f_opt: torch.Tensor, f_sar: torch.Tensor) -> torch.Tensor:
        if f_opt.shape != f_sar.shape:
            raise ValueError(f"SGBAFM needs equal feature shapes, got {tuple(f_opt.shape)} and {tuple(f_sar.shape)}")
        return f_sar * self.gate_map(f_opt, f_sar)


class SARGuidedPatchAttention(nn.Module):
    """Multi-head attention over patch tokens with SAR queries/keys and optical values.

    Tokens are non-overlapping ``patch x patch`` cells of the feature map. Queries and keys are linear projections
    of a SAR patch embedding (a ``patch``-strided conv, as in ViT, Dosovitskiy et al. 2021, Eq. 1), so the
    attention weights depend on SAR only. Values are the optical features of each whole patch (a 1x1 conv, then
    the patch's C/heads x patch x patch samples per head), so each output patch is a SAR-weighted blend of optical
    patches at full feature resolution: Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V (Vaswani et al. 2017,
    Eq. 1). A 1x1 conv maps the result back to the feature map.
    """

    def __init__(self, channels: int, heads: int, patch: int, embed_dim: int, pos_encoding: bool = True):
        super().__init__()
        if channels % heads or embed_dim % heads:
            raise ValueError(f"heads ({heads}) must divide width ({channels}) and embed_dim ({embed_dim})")
        if pos_encoding and embed_dim % 4:
            raise ValueError(f"embed_dim must be a multiple of 4 for the 2D position code, got {embed_dim}")
        self.heads, self.patch, self.embed_dim, self.pos_encoding = heads, patch, embed_dim, pos_encoding
        self.embed = nn.Conv2d(channels, embed_dim, patch, stride=patch)
        self.norm = nn.LayerNorm(embed_dim)
        self.to_q = nn.Linear(embed_dim, embed_dim)
        self.to_k = nn.Linear(embed_dim, embed_dim)
        self.to_v = nn.Conv2d(channels, channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def _queries_keys(self, f_sar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        tokens = self.embed(f_sar)
        gh, gw = tokens.shape[-2:]
        tokens = self.norm(rearrange(tokens, "b d gy gx -> b (gy gx) d"))
        if self.pos_encoding:
            tokens = tokens + _sincos_2d(gh, gw, self.embed_dim, tokens.device, tokens.dtype)
        q = rearrange(self.to_q(tokens), "b n (h d) -> b h n d", h=self.heads)
        k = rearrange(self.to_k(tokens), "b n (h d) -> b h n d", h=self.heads)
        return q, k, gh, gw

    def attention_weights(self, f_sar: torch.Tensor) -> torch.Tensor:
        """Softmax attention weights (B, heads, N, N); computed from SAR features alone."""
        q, k, _, _ = self._queries_keys(f_sar)
        return torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]), dim=-1)

    def forward(
        self, f_opt: torch.Tensor, f_sar: torch.Tensor, return_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if f_opt.shape != f_sar.shape:
            raise ValueError(f"attention needs equal feature shapes, got {tuple(f_opt.shape)} and {tuple(f_sar.shape)}")
        h, w = f_opt.shape[-2:]
        if h % self.patch or w % self.patch:
            raise ValueError(f"feature map {h}x{w} is not a multiple of the patch size {self.patch}")
        q, k, gh, gw = self._queries_keys(f_sar)
        v = rearrange(
            self.to_v(f_opt), "b (h c) (gy py) (gx px) -> b h (gy gx) (c py px)", h=self.heads, py=self.patch, px=self.patch
        )
        if return_weights:
            weights = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]), dim=-1)
            out = weights @ v
        else:
            # The fused kernel never materialises N x N weights, which matters for large scenes (many tokens).
            out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(
            out, "b h (gy gx) (c py px) -> b (h c) (gy py) (gx px)", gy=gh, gx=gw, py=self.patch, px=self.patch
        )
        out = self.proj(out)
        return (out, weights) if return_weights else out


class AliasFreeSmoothing(nn.Module):
    """A fixed depth-wise filter, the box of ``factor`` pixels convolved with itself (``[1, 2, 1] / 4`` for 2) along
    each axis, replicate-padded: symmetric (no shift), and zero at the frequencies k / factor (k = 1 .. factor - 1),
    where a pixel shuffle by ``factor`` puts the differences between its phases (Sugawara et al., "Checkerboard
    artifacts free convolutional neural networks", APSIPA 2019, smooth the same way after sub-pixel convolution)."""

    def __init__(self, factor: int):
        super().__init__()
        box = torch.ones(factor, dtype=torch.float64)
        taps = F.conv1d(box.view(1, 1, -1), box.view(1, 1, -1), padding=factor - 1).flatten()
        taps = (taps / taps.sum()).float()
        self.register_buffer("kernel", torch.outer(taps, taps)[None, None], persistent=False)
        self.pad = factor - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = F.pad(x, (self.pad,) * 4, mode="replicate")
        return F.conv2d(x, self.kernel.to(x.dtype).expand(c, 1, -1, -1), groups=c)


def _extractor(in_ch: int, width: int, stride: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, width, 3, padding=1), nn.ReLU(inplace=True)]
    for _ in range(int(math.log2(stride))):
        layers += [nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class SARCloudRemoval(KeepsClearPixels, nn.Module):
    """SAR-guided cloud removal restorer; ``forward(x, sar)`` returns the cloud-free image with the shape of ``x``."""

    def __init__(self, cfg: SARCRConfig | None = None):
        super().__init__()
        cfg = cfg or SARCRConfig()
        if cfg.optical_bands < 1 or cfg.sar_bands < 1:
            raise ValueError(f"need optical_bands >= 1 and sar_bands >= 1, got {cfg.optical_bands}, {cfg.sar_bands}")
        if cfg.stride not in (1, 2, 4, 8):
            raise ValueError(f"stride must be 1, 2, 4 or 8, got {cfg.stride}")
        if cfg.patch < 1 or cfg.width < 1 or cfg.base_blocks < 0:
            raise ValueError(f"need patch >= 1, width >= 1, base_blocks >= 0, got {cfg}")
        self.cfg = cfg
        c, s = cfg.width, cfg.stride

        # Base fusion: early fusion of the stacked bands.
        self.base_in = nn.Conv2d(cfg.optical_bands + cfg.sar_bands, c, 3, padding=1)
        self.base = nn.Sequential(*[MBConv(c, c, cfg.expand, se_ratio=cfg.se_ratio) for _ in range(cfg.base_blocks)])

        # Directional fusion at 1/stride resolution.
        self.opt_extractor = _extractor(cfg.optical_bands, c, s)
        self.sar_extractor = _extractor(cfg.sar_bands, c, s)
        self.sgbafm = SGBAFM(c)
        self.attention = SARGuidedPatchAttention(c, cfg.heads, cfg.patch, cfg.embed_dim, cfg.pos_encoding)
        self.dir_mbconv = MBConv(c, c, cfg.expand, se_ratio=cfg.se_ratio)
        # Sub-pixel upsampling (Shi et al., CVPR 2016) back to the input resolution.
        self.dir_up = nn.Sequential(nn.Conv2d(c, c * s * s, 1), nn.PixelShuffle(s)) if s > 1 else nn.Identity()
        if s > 1 and cfg.smooth_upsampling:
            self.dir_up.append(AliasFreeSmoothing(s))

        # Deep feature integration.
        self.dfin_base = DFINBlock(c, cfg.ca_reduction)
        self.dfin_dir = DFINBlock(c, cfg.ca_reduction)
        self.select = nn.Conv2d(2 * c, 2 * c, 3, padding=1)
        self.out = MBConv(3 * c, cfg.optical_bands, cfg.out_expand, se_ratio=cfg.se_ratio)

    @property
    def pad_multiple(self) -> int:
        # Tokens need stride * patch; the pyramid halves the full-resolution streams twice.
        return math.lcm(self.cfg.stride * self.cfg.patch, 4)

    def directional(self, x: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        f_opt = self.opt_extractor(x)
        f_sar = self.sgbafm(f_opt, self.sar_extractor(sar))
        f = f_opt + self.attention(f_opt, f_sar)
        return self.dir_up(self.dir_mbconv(f))

    def forward(self, x: torch.Tensor, sar: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                stats: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Cloud-free estimate of ``x`` (``mask``: known cloud/shadow, 1 = cloud; ``stats``: the scene's for a tile)."""
        cfg = self.cfg
        _check_pair(x, sar, cfg.optical_bands, cfg.sar_bands)
        h, w = x.shape[-2:]
        m = self.pad_multiple
        xp = pad_to_multiple(x, m)[0]
        sp = pad_to_multiple(sar.to(x.dtype), m)[0]

        base = self.base(self.base_in(torch.cat([xp, sp], dim=1)))
        a = self.dfin_base(base)
        b = self.dfin_dir(self.directional(xp, sp))
        # Element-wise max between two candidate fusions of the streams (a maxout unit, Goodfellow et al. 2013).
        cand = self.select(torch.cat([a, b], dim=1))
        selected = torch.maximum(cand[:, : cfg.width], cand[:, cfg.width :])
        y = self.out(torch.cat([selected, a, b], dim=1))
        if cfg.input_skip:
            y = y + xp
        return compose(y[..., :h, :w], x, enabled=cfg.keep_clear, mask=mask, stats=stats,
                       threshold=cfg.clear_threshold, with_detected=cfg.train_on_detected and self.training)
