"""Recognise what degrades a scene -- clean, haze, dust, thin cloud or thick cloud -- and route it to a method.

The recogniser looks at the visible bands only (R, G, B; see :func:`rgb_bands`) of a decimated read of the whole scene
(at most ``SCENE_SIDE`` pixels a side, :meth:`rsrestore.tiling.RasterSource.decimated`), and of tiles of that read for
a coarse map. It computes hand-made features that mean the same thing whatever the sensor (:func:`features`):

* dark channel statistics (He et al. 2011): haze and thin cloud add airlight to every band, so the darkest band of
  every patch rises;
* brightness, contrast (local standard deviation, gradient energy) and its spread: a veil compresses the histogram;
* saturation and the colour cast in CIE Lab and in chromaticity: dust pushes a* and b* towards red-yellow, haze and
  cloud towards grey;
* whiteness: the share of bright, unsaturated pixels (clouds), their texture, and how patchy brightness is at a coarse
  scale (8 x 8 blocks): opaque clouds are local, haze is spread out;
* what a veil does to the darkest pixels, whatever the ground: it lifts the black point relative to the median
  (shadows and water stop being dark), turns the darkest pixels towards the airlight's grey-blue (less saturated, blue
  over red), and raises the darkest pixels of every tile of a 4 x 4 grid (a clear scene has a dark spot in most tiles;
  a veil lifts them all, a thin cloud some). The dark channel in units of the airlight (``dcp_haze``) is the prior's own
  estimate of 1 - t; the airlight's saturation tells a grey veil from a bright coloured surface;
* how brightness and the dark channel vary together over the 8 x 8 blocks (a cloud is bright where its dark channel is
  high), and the share of the contrast that is fine-scale (a veil removes fine contrast first).

A small network (one hidden layer, :class:`RecogniserNet`) maps the standardised features to the five class
probabilities and to a severity in [0, 1] per class (what the degradation would amount to if it is that class: 1 -
mean transmission for haze and dust, mean opacity for thin clouds, cloud cover for thick clouds). It is trained on the
project's own synthesis over clean imagery of many sources (``scripts/train_recogniser.py``); its parameters, the
feature normalisation, the training data, the sources' licences and the leave-one-source-out confusion matrices ship in
``rsrestore/weights/recogniser.{safetensors,json}``.

Two rules sit on top of the network, both for doing no harm: a picture whose clean probability is at least
``CLEAN_FLOOR`` reads clean (restoring a clean scene harms it; leaving a faint veil costs little), and a scene with at
least ``CLOUD_TILE_SHARE`` of its map tiles read as thick cloud is called thick cloud (a few cumulus barely move
whole-scene statistics; the tiles see them). A partly cloudy scene, with fewer such tiles, is routed by what the rest
of it needs, and its decision reports the share of cloudy tiles (:func:`decide`).

Routing (:func:`route`): a clean scene is left unchanged; haze goes to the haze task's default method, dust to the dust
task's; a thin cloud veil is an additive, nearly grey airlight term like haze, so it goes to the haze method too; thick
cloud has no default method (it needs SAR, see ``rsrestore models``), so such a scene is left unchanged with a warning.
When several degradations are likely (probability >= ``PRESENT``), they are considered in the order thick cloud, dust,
haze, thin cloud, and the first decides: opaque cloud cannot be dehazed, and a dust cast must be corrected before a
haze method would read it as airlight. One method runs per scene; chaining methods compounds their artefacts.

Strength (:func:`auto_strength`): the method runs as strongly as the severity found calls for, where its paper has a
strength to set. The dark channel prior's omega follows the severity (:func:`rsrestore.classical.dcp.omega_for_severity`),
so a faint veil gets a small omega and thick haze the paper's 0.95. The rank-one prior's omega is left at the paper's
0.8: its per-band stretch decides the result (lowering omega from 0.8 to 0.2 moves PSNR by under 0.3 dB on synthetic
dust and under 0.5 dB on clean scenes; see :mod:`rsrestore.classical.rop`). A setting the caller gives (``RestoreOptions.model_options``) always wins.
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .physics.dark_channel import dark_channel

CLASSES = ("clean", "haze", "dust", "thin_cloud", "thick_cloud")
SCENE_SIDE = 512  # the whole scene is read decimated to at most this many pixels a side
ANALYSIS_SIDE = 192  # features are computed on at most this many pixels a side (area-averaged)
MAP_TILE = 64  # tile of the coarse map, in pixels of the decimated read
COARSE_BLOCKS = 8  # blocks per side for the coarse-scale features
PRESENT = 0.3  # a degradation with at least this probability counts as present when routing
# A picture reads "clean" when P(clean) is at least CLEAN_FLOOR, even if a degradation is more likely: restoring a clean
# scene does harm, leaving a faint veil does little (chosen on the leave-one-source-out check, see train_recogniser).
CLEAN_FLOOR = 0.2
# Opaque clouds over a small part of a scene barely move whole-scene statistics; the tile map sees them. A scene with
# at least this share of its (valid) tiles read as thick cloud is called thick cloud, its severity that share -- when
# the map has at least CLOUD_TILE_MIN tiles (a few small tiles alone are too easily wrong).
CLOUD_TILE_SHARE = 0.15
CLOUD_TILE_MIN = 12
ROUTE_ORDER = ("thick_cloud", "dust", "haze", "thin_cloud")  # the first present one decides
WEIGHTS_NAME = "recogniser.safetensors"

FEATURE_NAMES = (
    "dark_mean", "dark_p10", "dark_p50", "dark_p90", "dark_over_bright",
    "lum_mean", "lum_std", "lum_p02", "lum_p98", "lum_range",
    "sat_mean", "sat_p50", "sat_p90",
    "lab_a", "lab_b", "lab_chroma", "chrom_r", "chrom_b", "red_blue",
    "local_std", "local_std_rel", "grad", "grad_rel",
    "white_frac", "bright_frac", "dark_high_frac", "white_texture",
    "block_lum_std", "block_dark_std", "block_peak", "block_white_frac", "block_dark_range",
    "black_lift", "min_band_lift", "darkest_sat", "darkest_blue_red", "dcp_haze", "airlight_sat",
    "tile_dark_p05_min", "tile_dark_p05_med", "tile_dark_p05_max", "block_lum_dark_corr", "fine_contrast_share",
)


class RecogniserError(ValueError):
    """A scene the recogniser cannot look at (too few bands, no valid pixel, no weights), in one line."""


# --------------------------------------------------------------------------------------------------------------------
# Bands and the picture the features are computed on


def rgb_bands(count: int) -> list[int]:
    """The 1-based R, G, B bands of a scene with `count` bands, by the usual layouts: 3 bands are R,G,B; 4 bands
    R,G,B,NIR (NAIP, PlanetScope 4-band); 13 bands Sentinel-2 B1..B12 (R,G,B = B4,B3,B2 = bands 4,3,2). Other layouts
    need the bands named (``--bands``)."""
    if count in (3, 4):
        return [1, 2, 3]
    if count == 13:
        return [4, 3, 2]
    raise RecogniserError(
        f"cannot tell which of the scene's {count} band(s) are red, green and blue; name them with --bands R,G,B "
        f"(e.g. --bands 3,2,1)"
    )


def analysis_image(rgb: np.ndarray, mask: np.ndarray | None = None, side: int = ANALYSIS_SIDE) -> tuple[Tensor, Tensor]:
    """(3, H, W) float in [0, 1] and its valid mask -> (1, 3, h, w) tensor area-averaged to at most `side` pixels a
    side, and the (1, 1, h, w) bool mask of output pixels made only of valid input pixels."""
    x = torch.as_tensor(np.ascontiguousarray(rgb[:3]), dtype=torch.float32)[None]
    m = torch.ones(1, 1, *x.shape[-2:]) if mask is None else torch.as_tensor(np.asarray(mask), dtype=torch.float32)[None, None]
    x = torch.nan_to_num(x).clamp(0.0, 1.0) * m  # invalid pixels do not enter the averages below
    h, w = x.shape[-2:]
    f = max(1, math.ceil(max(h, w) / side))
    if f > 1:
        # Averaging f x f blocks, weighted by validity, so a block's value is the mean of its valid pixels.
        size = (max(1, h // f), max(1, w // f))
        x = F.adaptive_avg_pool2d(x, size)
        frac = F.adaptive_avg_pool2d(m, size)
        x = x / frac.clamp_min(1e-6)
        m = frac > 0.999
    else:
        m = m > 0.5
    return x.clamp(0.0, 1.0), m


# --------------------------------------------------------------------------------------------------------------------
# Features


def _box(x: Tensor, r: int) -> Tensor:
    return F.avg_pool2d(F.pad(x, (r, r, r, r), mode="replicate"), 2 * r + 1, stride=1)


def _quantiles(v: Tensor, qs: tuple[float, ...]) -> list[float]:
    if v.numel() > 16_384:  # a strided subsample estimates a percentile as well, and sorts far faster
        v = v[:: math.ceil(v.numel() / 16_384)]
    return torch.quantile(v, torch.tensor(qs, dtype=v.dtype)).tolist()


def features(x: Tensor, mask: Tensor) -> np.ndarray:
    """The recogniser's features (``FEATURE_NAMES``) of one (1, 3, h, w) image in [0, 1] with its (1, 1, h, w) valid
    mask (see :func:`analysis_image`). Statistics run over valid pixels only."""
    from kornia.color import rgb_to_lab  # CIE Lab from a maintained implementation (sRGB linearisation included)

    valid = mask[0, 0]
    if int(valid.sum()) < 16:
        raise RecogniserError("the scene has (almost) no valid pixels to look at")
    h, w = x.shape[-2:]
    mean_colour = x[0][:, valid].mean(dim=1)
    filled = torch.where(mask, x, mean_colour.view(1, 3, 1, 1))  # so filters see no invalid pixel

    patch = max(3, 2 * (min(h, w) // 48) + 1)  # the dark-channel patch grows with the picture: ~1/24 of its side
    dark = dark_channel(torch.where(mask, x, torch.ones_like(x)), patch)[0, 0]  # invalid pixels never the minimum
    mx = filled.amax(dim=1)[0]
    mn = filled.amin(dim=1)[0]
    lum = (0.299 * filled[:, 0] + 0.587 * filled[:, 1] + 0.114 * filled[:, 2])[0]
    sat = (mx - mn) / mx.clamp_min(1e-3)
    lab = rgb_to_lab(filled)[0]
    total = filled[0].sum(dim=0).clamp_min(1e-3)

    lum_v = lum[valid]
    dark_v = dark[valid]
    sat_v = sat[valid]
    d10, d50, d90 = _quantiles(dark_v, (0.1, 0.5, 0.9))
    l02, l98 = _quantiles(lum_v, (0.02, 0.98))
    s50, s90 = _quantiles(sat_v, (0.5, 0.9))
    lum_mean = float(lum_v.mean())

    l1 = lum[None, None]
    local_std = (_box(l1 * l1, 2) - _box(l1, 2) ** 2).clamp_min(0).sqrt()[0, 0]
    gy, gx = torch.gradient(lum)
    grad = (gx * gx + gy * gy).sqrt()
    white = (mn > 0.55) & (sat < 0.2)
    white_v = white[valid]
    white_texture = float(local_std[valid & white].mean()) if bool((valid & white).any()) else 0.0

    blocks = (max(1, min(COARSE_BLOCKS, h)), max(1, min(COARSE_BLOCKS, w)))
    vmask = valid[None, None].float()
    bweight = F.adaptive_avg_pool2d(vmask, blocks).clamp_min(1e-6)
    block_lum = (F.adaptive_avg_pool2d(l1 * vmask, blocks) / bweight).flatten()
    block_dark = (F.adaptive_avg_pool2d(dark[None, None] * vmask, blocks) / bweight).flatten()
    block_white = (F.adaptive_avg_pool2d((white[None, None] & valid[None, None]).float(), blocks) / bweight).flatten()
    used = F.adaptive_avg_pool2d(vmask, blocks).flatten() > 0.5
    if not bool(used.any()):
        used = torch.ones_like(used)
    block_lum, block_dark, block_white = block_lum[used], block_dark[used], block_white[used]

    values = [
        float(dark_v.mean()), d10, d50, d90, float(dark_v.mean()) / max(float(mx[valid].mean()), 1e-3),
        lum_mean, float(lum_v.std()) if lum_v.numel() > 1 else 0.0, l02, l98, l98 - l02,
        float(sat_v.mean()), s50, s90,
        float(lab[1][valid].mean()) / 100.0, float(lab[2][valid].mean()) / 100.0,
        float(lab[1:].pow(2).sum(0).sqrt()[valid].mean()) / 100.0,
        float((filled[0, 0] / total)[valid].mean()), float((filled[0, 2] / total)[valid].mean()),
        float(((filled[0, 0] - filled[0, 2]) / (filled[0, 0] + filled[0, 2]).clamp_min(1e-3))[valid].mean()),
        float(local_std[valid].mean()), float(local_std[valid].mean()) / max(lum_mean, 1e-3),
        float(grad[valid].mean()), float(grad[valid].mean()) / max(lum_mean, 1e-3),
        float(white_v.float().mean()), float((mn[valid] > 0.7).float().mean()), float((dark_v > 0.5).float().mean()),
        white_texture,
        float(block_lum.std()) if block_lum.numel() > 1 else 0.0,
        float(block_dark.std()) if block_dark.numel() > 1 else 0.0,
        float(block_lum.max() - block_lum.median()),
        float((block_white > 0.5).float().mean()),
        float(block_dark.max() - block_dark.min()),
        *_veil_features(filled, valid, dark, lum, mn, sat, block_lum, block_dark, local_std),
    ]
    return np.asarray(values, dtype=np.float32)


def _veil_features(x: Tensor, valid: Tensor, dark: Tensor, lum: Tensor, mn: Tensor, sat: Tensor, block_lum: Tensor,
                   block_dark: Tensor, local_std: Tensor) -> list[float]:
    """The features from ``black_lift`` to ``fine_contrast_share`` (see the module docstring)."""
    lum_v, mn_v = lum[valid], mn[valid]
    l02, l50 = _quantiles(lum_v, (0.02, 0.5))
    m01, m50 = _quantiles(mn_v, (0.01, 0.5))
    darkest = valid & (lum <= _quantiles(lum_v, (0.1,))[0])
    r, b = x[0, 0][darkest], x[0, 2][darkest]
    blue_red = float(((b - r) / (b + r).clamp_min(1e-3)).mean()) if r.numel() else 0.0
    # The prior's airlight (mean colour of the brightest 0.1 % of the dark channel) and dark(I / A) = min_c I_c / A_c.
    dark_v = dark[valid]
    top = valid & (dark >= _quantiles(dark_v, (0.999,))[0])
    airlight = x[0][:, top].mean(dim=1).clamp_min(1e-3)
    dcp_haze = float((x[0] / airlight.view(3, 1, 1)).amin(dim=0)[valid].clamp(0, 1).mean())
    airlight_sat = float((airlight.max() - airlight.min()) / airlight.max())
    # 5th percentile of the pixel-wise band minimum in each tile of a 4 x 4 grid (tiles at least half valid).
    h, w = mn.shape
    ys = np.linspace(0, h, 5).round().astype(int)
    xs = np.linspace(0, w, 5).round().astype(int)
    tile_p05 = []
    for i in range(4):
        for j in range(4):
            m = valid[ys[i]:ys[i + 1], xs[j]:xs[j + 1]]
            if m.numel() and float(m.float().mean()) >= 0.5:
                tile_p05.append(_quantiles(mn[ys[i]:ys[i + 1], xs[j]:xs[j + 1]][m], (0.05,))[0])
    tiles = torch.tensor(tile_p05 or [m01])
    if block_lum.numel() > 2 and float(block_lum.std()) > 1e-6 and float(block_dark.std()) > 1e-6:
        corr = float(torch.corrcoef(torch.stack([block_lum, block_dark]))[0, 1])
    else:
        corr = 0.0
    fine = float(local_std[valid].mean()) / max(float(lum_v.std()) if lum_v.numel() > 1 else 0.0, 1e-3)
    return [
        l02 / max(l50, 1e-3), m01 / max(m50, 1e-3), float(sat[darkest].mean()) if bool(darkest.any()) else 0.0,
        blue_red, dcp_haze, airlight_sat,
        float(tiles.min()), float(tiles.median()), float(tiles.max()), corr, min(fine, 2.0),
    ]


# --------------------------------------------------------------------------------------------------------------------
# The classifier


class RecogniserNet(nn.Module):
    """Standardised features -> class logits and per-class severities (sigmoid), through one hidden layer."""

    def __init__(self, n_features: int = len(FEATURE_NAMES), hidden: int = 32, n_classes: int = len(CLASSES)):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.hidden = nn.Linear(n_features, hidden)
        self.classes = nn.Linear(hidden, n_classes)
        self.severity = nn.Linear(hidden, n_classes)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        z = torch.tanh(self.hidden((feats - self.mean) / self.std))
        return self.classes(z), torch.sigmoid(self.severity(z))


@dataclass
class Recognition:
    """What the recogniser sees in one picture: the most likely class, its severity, and every class's probability
    and severity (the severity a class would have if the picture were of that class)."""

    label: str
    severity: float
    probabilities: dict[str, float]
    severities: dict[str, float]

    def as_dict(self) -> dict:
        return asdict(self)


def weights_path() -> Path:
    from .models.registry import WEIGHTS_DIR  # bundled weights live together

    return WEIGHTS_DIR / WEIGHTS_NAME


@lru_cache(maxsize=2)
def load_recogniser(path: str | None = None) -> RecogniserNet:
    """The shipped recogniser (or one saved by ``scripts/train_recogniser.py`` at `path`), in eval mode."""
    from safetensors.torch import load_file

    p = Path(path) if path is not None else weights_path()
    if not p.exists():
        raise RecogniserError(f"recogniser weights not found: {p}; train them with scripts/train_recogniser.py")
    state = load_file(str(p))
    hidden = state["hidden.weight"].shape[0]
    net = RecogniserNet(n_features=state["mean"].numel(), hidden=hidden)
    net.load_state_dict(state)
    return net.eval()


def classify(feats: np.ndarray, net: RecogniserNet | None = None) -> list[Recognition]:
    """Recognitions of an (N, F) feature array."""
    net = net or load_recogniser()
    # New features are only ever appended to FEATURE_NAMES, so weights trained on fewer take the first ones.
    feats = np.atleast_2d(feats)[:, : net.mean.numel()]
    with torch.no_grad():
        logits, sev = net(torch.as_tensor(feats, dtype=torch.float32))
    probs = logits.softmax(dim=1).numpy()
    sev = sev.numpy()
    out = []
    for p, s in zip(probs, sev):
        k = 0 if p[0] >= CLEAN_FLOOR else int(p.argmax())
        sevs = {c: round(float(v), 3) for c, v in zip(CLASSES, s)}
        sevs["clean"] = 0.0  # a clean scene has nothing to restore
        out.append(Recognition(CLASSES[k], sevs[CLASSES[k]], {c: round(float(v), 4) for c, v in zip(CLASSES, p)}, sevs))
    return out


def recognise_array(rgb: np.ndarray, mask: np.ndarray | None = None, net: RecogniserNet | None = None) -> Recognition:
    """Recognise a (3, H, W) R, G, B float image in [0, 1] (with an optional (H, W) valid mask)."""
    x, m = analysis_image(rgb, mask)
    return classify(features(x, m), net)[0]


# --------------------------------------------------------------------------------------------------------------------
# Scenes on disk


@dataclass
class SceneInspection:
    """A scene's facts and what the recogniser sees in it, whole and per tile of the decimated read."""

    path: str
    width: int
    height: int
    bands: int
    dtype: str
    crs: str | None
    nodata: float | None
    nodata_share: float
    scale: float
    rgb_bands: list[int]
    scene: Recognition
    tile_pixels: int  # side of a map tile in scene pixels
    map_labels: list[list[str | None]] = field(default_factory=list)  # None where a tile holds no valid pixel
    map_severity: list[list[float | None]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def decision(self) -> Decision:
        """What `--task auto` does with this scene."""
        return decide(self.scene, cloud_share(self.map_labels))

    def label_shares(self) -> dict[str, float]:
        """Share of the valid map tiles per class."""
        flat = [v for row in self.map_labels for v in row if v is not None]
        return {c: round(flat.count(c) / len(flat), 3) for c in CLASSES if flat and flat.count(c)}


def _read_scene(path: str | Path, bands, scale) -> tuple:
    from .raster import inspect_raster
    from .tiling import RasterSource

    info = inspect_raster(path, bands, scale)  # checks a given band selection against the file
    chosen = info.bands if bands else rgb_bands(info.count)
    if len(chosen) != 3:
        raise RecogniserError(f"--bands must name 3 bands (R,G,B) for the recogniser; got {bands!r}")
    info.bands = chosen
    source = RasterSource(info)
    try:
        rgb, mask = source.decimated(SCENE_SIDE)
    finally:
        source.close()
    return info, rgb, mask


def recognise_read(rgb: np.ndarray, mask: np.ndarray, with_map: bool = True, where: str = "the scene",
                   net: RecogniserNet | None = None):
    """The whole-scene recognition of a decimated read (3, h, w) of a scene's R, G, B and its valid mask, with the
    class and severity of each ``MAP_TILE`` tile when `with_map` (None where a tile is mostly invalid), and the thick
    cloud rule of the module docstring applied. Returns (recognition, tile labels, tile severities). `net`: the
    shipped recogniser unless given."""
    net = net or load_recogniser()
    if not mask.any():
        raise RecogniserError(f"{where}: every pixel is nodata; nothing to recognise")
    scene = recognise_array(rgb, mask, net)
    h, w = mask.shape
    labels: list[list[str | None]] = []
    sev: list[list[float | None]] = []
    if with_map:
        rows, cols = max(1, round(h / MAP_TILE)), max(1, round(w / MAP_TILE))
        ys = np.linspace(0, h, rows + 1).round().astype(int)
        xs = np.linspace(0, w, cols + 1).round().astype(int)
        feats, cells = [], []
        for i in range(rows):
            for j in range(cols):
                m = mask[ys[i]:ys[i + 1], xs[j]:xs[j + 1]]
                if m.mean() < 0.25:
                    continue
                x, mm = analysis_image(rgb[:, ys[i]:ys[i + 1], xs[j]:xs[j + 1]], m)
                if int(mm.sum()) < 16:
                    continue
                feats.append(features(x, mm))
                cells.append((i, j))
        labels = [[None] * cols for _ in range(rows)]
        sev = [[None] * cols for _ in range(rows)]
        if feats:
            for (i, j), r in zip(cells, classify(np.stack(feats), net)):
                labels[i][j], sev[i][j] = r.label, r.severity
        cloudy = cloud_share(labels)
        if sum(v is not None for row in labels for v in row) >= CLOUD_TILE_MIN and cloudy >= CLOUD_TILE_SHARE \
                and scene.label != "thick_cloud":
            scene = Recognition("thick_cloud", round(cloudy, 3), scene.probabilities,
                                dict(scene.severities, thick_cloud=round(cloudy, 3)))
    return scene, labels, sev


def cloud_share(labels: list[list[str | None]]) -> float:
    """Share of the valid map tiles read as thick cloud."""
    flat = [v for row in labels for v in row if v is not None]
    return flat.count("thick_cloud") / max(len(flat), 1)


def inspect_scene(path: str | Path, bands: str | list[int] | None = None, scale: float | None = None,
                  with_map: bool = True, net: RecogniserNet | None = None) -> tuple[SceneInspection, np.ndarray, np.ndarray]:
    """Recognise a scene on disk: the whole scene and, with `with_map`, each ``MAP_TILE`` tile of its decimated read.
    Returns the inspection, the decimated R, G, B read (3, h, w) and its valid mask (for pictures)."""
    info, rgb, mask = _read_scene(path, bands, scale)
    scene, labels, sev = recognise_read(rgb, mask, with_map, where=str(path), net=net)
    if labels:
        rows, cols = len(labels), len(labels[0])
        tile_pixels = round(max(info.height / rows, info.width / cols))
    else:
        tile_pixels = 0
    nodata_share = 1.0 - float(mask.mean())
    report = SceneInspection(
        path=str(path), width=info.width, height=info.height, bands=info.count, dtype=info.dtype,
        crs=info.crs.to_string() if info.crs else None, nodata=info.nodata, nodata_share=round(nodata_share, 4),
        scale=info.scale, rgb_bands=list(info.bands), scene=scene, tile_pixels=tile_pixels, map_labels=labels,
        map_severity=sev,
    )
    return report, rgb, mask


CLASS_COLOURS = {  # map colours (R, G, B)
    "clean": (46, 160, 67), "haze": (150, 150, 220), "dust": (222, 150, 40), "thin_cloud": (200, 200, 200),
    "thick_cloud": (255, 255, 255), None: (0, 0, 0),
}


def check_map_path(path: str | Path) -> Path:
    """The --map output must be a .png in an existing folder (checked before any work)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise RecogniserError(f"--map writes a PNG; give a file name ending in .png, not {path.name}")
    if not path.parent.is_dir():
        raise RecogniserError(f"--map folder does not exist: {path.parent}")
    return path


def write_map(report: SceneInspection, rgb: np.ndarray, mask: np.ndarray, path: str | Path) -> Path:
    """A PNG: the scene's thumbnail beside its coarse class map (one colour per class, black where a tile holds no
    valid pixel), with a legend."""
    from PIL import Image, ImageDraw

    path = check_map_path(path)
    # The thumbnail gets a 2-98 % stretch so dark reflectance scenes (e.g. Sentinel-2 L1C) are visible.
    v = rgb[:, mask] if mask.any() else rgb.reshape(3, -1)
    lo, hi = np.percentile(v, 2), np.percentile(v, 98)
    thumb = np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1)
    thumb = (np.where(mask[None], thumb, 0) * 255).astype(np.uint8).transpose(1, 2, 0)
    h, w = thumb.shape[:2]
    rows, cols = len(report.map_labels), len(report.map_labels[0]) if report.map_labels else 0
    cmap = np.zeros((max(rows, 1), max(cols, 1), 3), np.uint8)
    for i in range(rows):
        for j in range(cols):
            cmap[i, j] = CLASS_COLOURS[report.map_labels[i][j]]
    map_img = Image.fromarray(cmap).resize((w, h), Image.NEAREST)
    legend_h = 18 * (len(CLASSES) + 1) + 8
    canvas = Image.new("RGB", (2 * w + 30, h + legend_h), (40, 40, 40))
    canvas.paste(Image.fromarray(thumb), (10, 0))
    canvas.paste(map_img, (w + 20, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((10, h + 4), f"scene: {report.scene.label} (severity {report.scene.severity:.2f})", fill=(255, 255, 255))
    for k, c in enumerate(CLASSES):
        y = h + 22 + 18 * k
        draw.rectangle([10, y, 24, y + 12], fill=CLASS_COLOURS[c], outline=(0, 0, 0))
        draw.text((30, y), c, fill=(255, 255, 255))
    canvas.save(path)
    return path


# --------------------------------------------------------------------------------------------------------------------
# Routing


@dataclass
class Decision:
    """What `--task auto` does with a scene: restore it with `method` built with the config overrides `options` (its
    strength for the severity found), or leave it unchanged (`method` None)."""

    label: str
    severity: float
    method: str | None
    reason: str
    present: list[str]
    probabilities: dict[str, float]
    options: dict = field(default_factory=dict)
    cloud_tiles: float = 0.0  # share of the scene's map tiles read as thick cloud

    def as_dict(self) -> dict:
        return asdict(self)


def decide(rec: Recognition, cloud_tiles: float = 0.0) -> Decision:
    """The routing rule (see the module docstring) applied to a recognition; `cloud_tiles` is the share of the scene's
    map tiles read as thick cloud. A partly cloudy scene (some thick cloud tiles, fewer than ``CLOUD_TILE_SHARE``) is
    routed by what the rest of it needs, and the decision says how much of it is cloud: no method here restores
    opaque cloud without SAR, and leaving a hazy or dusty scene as it is for a few cumulus would help nobody."""
    decision = _decide(rec)
    decision.cloud_tiles = round(cloud_tiles, 3)
    if cloud_tiles > 0 and decision.label != "thick_cloud":
        decision.reason += f"; {100 * cloud_tiles:.0f} % of its tiles read as thick cloud (not restored without SAR)"
    return decision


def _decide(rec: Recognition) -> Decision:
    from .models.registry import ModelError, default_method

    probs = rec.probabilities
    present = [c for c in ROUTE_ORDER if probs[c] >= PRESENT or c == rec.label]
    if rec.label == "clean":
        return Decision("clean", 0.0, None, "recognised as clean: written unchanged", [], probs)
    first = present[0]
    task = {"haze": "haze", "thin_cloud": "haze", "dust": "dust", "thick_cloud": "cloud"}[first]
    severity = rec.severities[first]
    try:
        method = default_method(task)
    except ModelError:
        return Decision(first, severity, None, f"recognised as {first.replace('_', ' ')}: no {task} method restores "
                        f"it without SAR, written unchanged (try --method dsen2cr --sar S1.tif)", present, probs)
    options = auto_strength(method, severity)
    how = "".join(f", {k} {v:g}" for k, v in options.items())
    return Decision(first, severity, method, f"recognised as {first.replace('_', ' ')} (severity {severity:.2f}): "
                    f"restored with {method}{how}", present, probs, options)


def auto_strength(method: str, severity: float) -> dict:
    """The config overrides that scale `method` to a scene of this severity (see the module docstring): dcp's omega;
    nothing for the other methods."""
    if method == "dcp":
        from .classical.dcp import omega_for_severity

        return {"omega": omega_for_severity(severity)}
    return {}


def route(path: str | Path, bands: str | list[int] | None = None, scale: float | None = None) -> Decision:
    """The `--task auto` decision for a scene on disk (its recognition, tile map included)."""
    report, _, _ = inspect_scene(path, bands=bands, scale=scale, with_map=True)
    return report.decision()


def route_array(image: np.ndarray, bands: str | list[int] | None = None) -> Decision:
    """The `--task auto` decision for an in-memory (C, H, W) image in [0, 1] (NaN = invalid pixel), made as for a
    file: R, G, B (`bands` when they name three, else :func:`rgb_bands`) of a read decimated to ``SCENE_SIDE``."""
    from .raster import parse_bands
    from .tiling import ArraySource

    chosen = parse_bands(bands)
    chosen = chosen if chosen and len(chosen) == 3 else rgb_bands(image.shape[0])
    rgb, mask = ArraySource(np.asarray(image)[[b - 1 for b in chosen]]).decimated(SCENE_SIDE)
    scene, labels, _ = recognise_read(np.nan_to_num(rgb), mask, where="the array")
    return decide(scene, cloud_share(labels))


AUTO = "auto"  # the method name `--task auto` runs under until the recogniser has picked one per scene


def route_scene(scene, options) -> tuple[Decision, object]:
    """`--task auto` for one scene of a restore or batch run (``rsrestore.batch.restore_scene``): see
    :func:`route_file`. Returns the decision and the run's options for this scene (``rsrestore.batch.RestoreOptions``):
    the method picked and its strength for the severity found, under the caller's own ``model_options``."""
    import dataclasses

    decision = route_file(scene.input, scene.output, options.bands, options.scale, options.overwrite)
    strength = tuple((k, v) for k, v in decision.options.items() if k not in dict(options.model_options))
    return decision, dataclasses.replace(options, method=decision.method or "unchanged",
                                         model_options=strength + tuple(options.model_options))


def route_file(src: str | Path, dst: str | Path, bands=None, scale: float | None = None,
               overwrite: bool = False) -> Decision:
    """`--task auto` for a scene on disk: recognise it on its R, G, B (`bands` when they name three, else
    :func:`rgb_bands`) and, when no method applies, write it unchanged to `dst` (thick cloud with a warning). The
    caller restores it with ``decision.method`` otherwise."""
    from .raster import parse_bands

    chosen = parse_bands(bands)
    decision = route(src, bands=chosen if chosen and len(chosen) == 3 else None, scale=scale)
    if decision.method is None:
        warn_unchanged(decision, src)
        write_unchanged(src, dst, overwrite)
    return decision


def warn_unchanged(decision: Decision, where) -> None:
    """A degraded scene left unchanged (thick cloud) says so; a clean one is left unchanged silently."""
    if decision.method is None and decision.label != "clean":
        warnings.warn(f"{where}: {decision.reason}", stacklevel=3)


def write_unchanged(src: str | Path, dst: str | Path, overwrite: bool = False) -> Path:
    """Write a scene that needs no restoring to `dst` with every pixel value and the metadata as they are: a byte copy
    when the format stays, else a GDAL copy into the output's format. Goes through a hidden temporary beside `dst`, so
    a file under the final name is always whole."""
    import os

    import rasterio.shutil

    from .raster import check_output_format, check_output_path, inspect_raster

    dst = check_output_path(src, dst, overwrite)
    info = inspect_raster(src)
    driver = check_output_format(info, dst)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.partial{dst.suffix}")
    try:
        if driver == info.driver:
            shutil.copyfile(src, tmp)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PNG/JPEG without georeferencing warn on every copy
                rasterio.shutil.copy(str(src), str(tmp), driver=driver)
            aux = Path(str(tmp) + ".aux.xml")
            if aux.exists():
                os.replace(aux, str(dst) + ".aux.xml")
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst


def format_inspection(report: SceneInspection) -> str:
    """The text `rsrestore inspect` prints."""
    r = report.scene
    lines = [
        f"{report.path}",
        f"  size       {report.width} x {report.height} px, {report.bands} band(s), {report.dtype}",
        f"  crs        {report.crs or 'none (not georeferenced)'}",
        f"  nodata     {report.nodata if report.nodata is not None else 'none'}; "
        f"{100 * report.nodata_share:.1f} % of the pixels invalid",
        f"  scale      {report.scale:g} (value / scale -> [0, 1]; --scale overrides)",
        f"  rgb bands  {','.join(map(str, report.rgb_bands))}",
        f"  degradation {r.label} (severity {r.severity:.2f})",
        "  probabilities " + ", ".join(f"{c} {p:.2f}" for c, p in r.probabilities.items()),
    ]
    if report.map_labels:
        rows, cols = len(report.map_labels), len(report.map_labels[0])
        shares = ", ".join(f"{c} {100 * s:.0f} %" for c, s in report.label_shares().items())
        lines.append(f"  tiles      {rows} x {cols} of ~{report.tile_pixels} px: {shares}")
    d = report.decision()
    lines.append(f"  --task auto {d.reason}")
    return "\n".join(lines)


def inspection_json(report: SceneInspection) -> str:
    d = report.as_dict()
    if d["nodata"] is not None and not math.isfinite(d["nodata"]):
        d["nodata"] = str(d["nodata"])  # "nan": JSON has no NaN
    d["auto"] = report.decision().as_dict()
    return json.dumps(d, indent=2)
