"""VGG19 feature extractor for perceptual and contrastive losses.

The layer list is exactly torchvision's ``vgg19().features`` (Simonyan & Zisserman, "Very Deep Convolutional Networks
for Large-Scale Image Recognition", ICLR 2015, configuration E), so its parameters are named ``features.N.weight`` /
``features.N.bias`` with torchvision's indices ``N``. A state dict saved from torchvision's ``vgg19`` (the whole model
or only its ``features`` part) therefore loads here with strict key and shape checking, without torchvision installed.

No weights ship with the project and none are downloaded: :func:`load_vgg19` reads a file the user provides.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

# Configuration "E" of the VGG paper: output channels of each 3x3 conv, "M" for a 2x2 max-pool.
_VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, 256, "M",
    512, 512, 512, 512, "M",
    512, 512, 512, 512, "M",
)

#: Index in ``features`` of the ReLU that produces each named activation (torchvision numbering).
VGG19_LAYERS: dict[str, int] = {
    "relu1_1": 1, "relu1_2": 3,
    "relu2_1": 6, "relu2_2": 8,
    "relu3_1": 11, "relu3_2": 13, "relu3_3": 15, "relu3_4": 17,
    "relu4_1": 20, "relu4_2": 22, "relu4_3": 24, "relu4_4": 26,
    "relu5_1": 29, "relu5_2": 31, "relu5_3": 33, "relu5_4": 35,
}

#: The taps used by the contrastive regularisation of AECR-Net (Wu et al., CVPR 2021).
DEFAULT_TAPS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")

# torchvision's ImageNet statistics; the pretrained filters expect inputs normalised with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _make_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for item in _VGG19_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.Conv2d(in_ch, int(item), kernel_size=3, padding=1))
            # Not in-place: a tapped activation must not be overwritten by a later layer.
            layers.append(nn.ReLU(inplace=False))
            in_ch = int(item)
    return nn.Sequential(*layers)


class VGG19Features(nn.Module):
    """The convolutional part of VGG19, returning activations at chosen ReLUs.

    Args:
        taps: names from :data:`VGG19_LAYERS` whose activations ``forward`` returns, in this order. Defaults to
            relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (feature indices 1, 6, 11, 20, 29).
        normalize: if True, inputs are images in [0, 1] and ImageNet mean/std normalisation is applied inside.

    The full ``features`` stack (37 layers) is kept even though the default taps stop at index 29, so that a
    torchvision state dict matches key for key; ``forward`` only runs the layers it needs.
    """

    def __init__(self, taps: Sequence[str] = DEFAULT_TAPS, normalize: bool = True) -> None:
        super().__init__()
        unknown = [t for t in taps if t not in VGG19_LAYERS]
        if unknown or not taps:
            raise ValueError(f"unknown VGG19 taps {unknown or list(taps)}; choose from {sorted(VGG19_LAYERS)}")
        self.taps = tuple(taps)
        self.tap_indices = tuple(VGG19_LAYERS[t] for t in self.taps)
        self.normalize = normalize
        self.features = _make_features()
        # Non-persistent: the state dict must hold exactly torchvision's keys for strict loading. Explicitly on the
        # CPU so that they hold real values when the layers are built on the meta device (see load_vgg19).
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, device="cpu").view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD, device="cpu").view(1, 3, 1, 1), persistent=False)

    def freeze(self) -> "VGG19Features":
        """Stop gradients into the weights and switch to eval mode; returns self."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def forward(self, x: Tensor) -> list[Tensor]:
        """Activations at ``self.taps`` for a (B, 3, H, W) image batch (a single band is repeated to three)."""
        if x.ndim != 4:
            raise ValueError(f"VGG19Features expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(
                f"VGG19Features needs 3 (RGB) or 1 band, got {x.shape[1]}; select three bands first "
                "(e.g. the `bands` argument of ContrastiveLoss)"
            )
        if self.normalize:
            x = (x - self.mean.to(x)) / self.std.to(x)
        wanted = dict(zip(self.tap_indices, range(len(self.tap_indices))))
        out: list[Tensor | None] = [None] * len(self.tap_indices)
        last = max(self.tap_indices)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in wanted:
                out[wanted[i]] = x
            if i == last:
                break
        return out  # type: ignore[return-value]


def _read_state_dict(path: Path) -> Mapping[str, Tensor]:
    if not path.is_file():
        raise ValueError(f"VGG19 weights file not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(16)
    # A safetensors file starts with a little-endian u64 header size followed by a JSON object.
    looks_safetensors = len(head) > 8 and head[8:9] == b"{"
    if path.suffix == ".safetensors" or looks_safetensors:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for non-checkpoint files
        raise ValueError(
            f"{path} could not be read as safetensors or as a weights-only torch checkpoint (.pth): {exc}"
        ) from exc
    # Training checkpoints often nest the weights one level down.
    if isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    return obj


def _normalise_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map torchvision-style keys onto ``features.N.*``.

    Accepts the whole ``vgg19`` state dict (its ``classifier.*`` entries are dropped: this module has no head), the
    ``features`` part on its own (keys ``N.weight``), and ``module.`` prefixes left by DataParallel.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise ValueError(f"state dict entry {key!r} is not a tensor ({type(value).__name__})")
        k = key
        while k.startswith("module."):
            k = k[len("module."):]
        if k.startswith("classifier."):
            continue
        if k.split(".", 1)[0].isdigit():
            k = "features." + k
        out[k] = value
    return out


def load_vgg19(
    path: str | os.PathLike[str], taps: Sequence[str] = DEFAULT_TAPS, normalize: bool = True
) -> VGG19Features:
    """Build :class:`VGG19Features` from a weights file, frozen and in eval mode.

    Args:
        path: a ``.safetensors`` file, or a ``.pth`` read with ``torch.load(weights_only=True)``, holding
            torchvision ``vgg19`` weights (whole model or its ``features`` part).
        taps, normalize: passed to :class:`VGG19Features`.

    Raises:
        ValueError: the file is missing or unreadable, or its keys/shapes are not those of VGG19's features
            (for example a VGG16 or a batch-norm VGG19 checkpoint).
    """
    path = Path(path)
    state = _normalise_keys(_read_state_dict(path))
    # Built on the meta device: a random initialisation of 20 M weights that are overwritten anyway costs a second.
    with torch.device("meta"):
        model = VGG19Features(taps=taps, normalize=normalize)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state), key=_key_order)
    unexpected = sorted(set(state) - set(expected), key=_key_order)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not hold torchvision VGG19 weights: "
            f"missing {_abbrev(missing)}, unexpected {_abbrev(unexpected)}"
        )
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs VGG19 {tuple(v.shape)}"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(f"{path} does not hold torchvision VGG19 weights: shape mismatch {_abbrev(wrong)}")
    model.load_state_dict({k: v.float().contiguous() for k, v in state.items()}, strict=True, assign=True)
    return model.freeze()


def _key_order(key: str) -> tuple[int, str]:
    parts = key.split(".")
    idx = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else -1
    return idx, key


def _abbrev(items: list[str], n: int = 6) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}] ({len(items)} in all)"
