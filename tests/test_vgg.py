"""VGG19 feature extractor: torchvision layout, strict weight loading, activations against a functional reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from _random_vgg import random_vgg

from rsrestore.vgg import DEFAULT_TAPS, IMAGENET_MEAN, IMAGENET_STD, VGG19_LAYERS, VGG19Features, load_vgg19

# Conv indices of torchvision's vgg19().features and their output channels.
CONV_OUT = {0: 64, 2: 64, 5: 128, 7: 128, 10: 256, 12: 256, 14: 256, 16: 256,
            19: 512, 21: 512, 23: 512, 25: 512, 28: 512, 30: 512, 32: 512, 34: 512}
POOLS = (4, 9, 18, 27, 36)




@pytest.fixture(scope="module")
def vgg() -> VGG19Features:
    return random_vgg()


def test_layout_matches_torchvision_indices():
    vgg = VGG19Features()
    assert len(vgg.features) == 37
    for i, layer in enumerate(vgg.features):
        if i in CONV_OUT:
            assert isinstance(layer, nn.Conv2d) and layer.out_channels == CONV_OUT[i] and layer.kernel_size == (3, 3)
        elif i in POOLS:
            assert isinstance(layer, nn.MaxPool2d)
        else:
            assert isinstance(layer, nn.ReLU)
    expected_keys = {f"features.{i}.{p}" for i in CONV_OUT for p in ("weight", "bias")}
    assert set(vgg.state_dict()) == expected_keys  # normalisation buffers stay out of the state dict
    assert [VGG19_LAYERS[t] for t in DEFAULT_TAPS] == [1, 6, 11, 20, 29]


def test_activations_match_functional_reference(vgg):
    x = torch.rand(1, 3, 16, 48)
    feats = vgg(x)
    assert [f.shape[1:] for f in feats] == [
        (64, 16, 48), (128, 8, 24), (256, 4, 12), (512, 2, 6), (512, 1, 3)
    ]
    sd = vgg.state_dict()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def conv_relu(h, i):
        return F.relu(F.conv2d(h, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1))

    h = conv_relu((x - mean) / std, 0)
    refs = [h]
    h = F.max_pool2d(conv_relu(h, 2), 2)
    h = conv_relu(h, 5)
    refs.append(h)
    h = F.max_pool2d(conv_relu(h, 7), 2)
    h = conv_relu(h, 10)
    refs.append(h)
    for i in (12, 14, 16):
        h = conv_relu(h, i)
    h = conv_relu(F.max_pool2d(h, 2), 19)
    refs.append(h)
    for i in (21, 23, 25):
        h = conv_relu(h, i)
    h = conv_relu(F.max_pool2d(h, 2), 28)
    refs.append(h)
    for got, ref in zip(feats, refs):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_single_band_is_repeated_and_other_counts_refused(vgg):
    g = torch.rand(1, 1, 16, 16)
    for a, b in zip(vgg(g), vgg(g.expand(-1, 3, -1, -1))):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="3 \\(RGB\\) or 1 band"):
        vgg(torch.rand(1, 4, 16, 16))
    with pytest.raises(ValueError, match="unknown VGG19 taps"):
        VGG19Features(taps=("relu9_9",))


def test_safetensors_round_trip_is_frozen_and_exact(tmp_path, vgg):
    path = tmp_path / "vgg19.safetensors"
    save_file(vgg.state_dict(), str(path))
    loaded = load_vgg19(path)
    assert not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())
    for k, v in vgg.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    x = torch.rand(1, 3, 24, 24)
    for a, b in zip(vgg(x), loaded(x)):
        torch.testing.assert_close(a, b)


def test_torchvision_style_pth_files_load(tmp_path, vgg):
    sd = vgg.state_dict()
    # Whole-model state dict as torchvision writes it: the classifier head is ignored (small stand-ins here).
    full = dict(sd)
    full.update({"classifier.0.weight": torch.zeros(8, 8), "classifier.0.bias": torch.zeros(8),
                 "classifier.6.weight": torch.zeros(10, 8), "classifier.6.bias": torch.zeros(10)})
    torch.save(full, tmp_path / "vgg19_full.pth")
    # Only the `features` part, keys "0.weight", ...
    torch.save({k[len("features."):]: v for k, v in sd.items()}, tmp_path / "vgg19_features.pth")
    # DataParallel leftovers.
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "vgg19_module.pth")
    x = torch.rand(1, 3, 16, 16)
    ref = vgg(x)
    for name in ("vgg19_full.pth", "vgg19_features.pth", "vgg19_module.pth"):
        loaded = load_vgg19(tmp_path / name)
        for a, b in zip(ref, loaded(x)):
            torch.testing.assert_close(a, b)


def test_wrong_files_are_refused_clearly(tmp_path, vgg):
    sd = vgg.state_dict()

    missing = {k: v for k, v in sd.items() if not k.startswith("features.34.")}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match=r"VGG19 weights: missing \[features.34.bias, features.34.weight\]"):
        load_vgg19(tmp_path / "missing.safetensors")

    # VGG16's features: convs at 0,2,5,7,10,12,14,17,19,21,24,26,28.
    vgg16_cfg = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
                 (14, 256, 256), (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512),
                 (28, 512, 512)]
    vgg16 = {}
    for i, cin, cout in vgg16_cfg:
        vgg16[f"features.{i}.weight"] = torch.zeros(cout, cin, 3, 3)
        vgg16[f"features.{i}.bias"] = torch.zeros(cout)
    torch.save(vgg16, tmp_path / "vgg16.pth")
    with pytest.raises(ValueError, match="does not hold torchvision VGG19 weights"):
        load_vgg19(tmp_path / "vgg16.pth")

    bad_shape = dict(sd)
    bad_shape["features.0.weight"] = torch.zeros(64, 4, 3, 3)
    save_file(bad_shape, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ValueError, match=r"shape mismatch \[features.0.weight: file \(64, 4, 3, 3\)"):
        load_vgg19(tmp_path / "shape.safetensors")

    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ValueError, match="could not be read"):
        load_vgg19(tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_vgg19(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="not found"):
        load_vgg19(tmp_path / "absent.safetensors")
