"""A VGG19 with random He-initialised weights for the VGG and contrastive-loss tests.

No pretrained weights can be fetched offline; He initialisation keeps deep activations at a usable scale.
"""

from __future__ import annotations

import torch
from torch import nn

from rsrestore.vgg import VGG19Features


def random_vgg(seed: int = 0) -> VGG19Features:
    torch.manual_seed(seed)
    vgg = VGG19Features()
    for m in vgg.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.uniform_(m.bias, -0.05, 0.05)
    return vgg
