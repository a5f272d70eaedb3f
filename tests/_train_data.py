"""Small training runs for the trainer's tests: a folder of paired scenes and a config that trains on it in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image


def make_pairs(root: Path, n: int = 8, size: int = 32, seed: int = 0) -> Path:
    """A `paired` folder of smooth RGB scenes and a dusty version of each (a colour cast and lower contrast)."""
    rng = np.random.default_rng(seed)
    (root / "input").mkdir(parents=True)
    (root / "target").mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        freq = rng.uniform(1, 3, 3)
        phase = rng.uniform(0, 2 * np.pi, 3)
        clean = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * f * (xx + yy / 2) + p) for f, p in zip(freq, phase)], -1)
        clean = np.clip(clean + rng.normal(0, 0.03, clean.shape), 0, 1)
        dusty = 0.55 * clean + 0.45 * np.array([0.8, 0.6, 0.35])
        Image.fromarray((clean * 255).round().astype(np.uint8)).save(root / "target" / f"{i:02d}.png")
        Image.fromarray((dusty * 255).round().astype(np.uint8)).save(root / "input" / f"{i:02d}.png")
    return root


def base_config(pairs: Path, out: Path, **run) -> dict:
    return {
        "model": {"name": "aosrnet", "config": {"width": 4, "num_res_blocks": 1}},
        "data": {"train": {"kind": "paired", "root": str(pairs)}, "batch_size": 2},
        "optim": {"name": "adam", "lr": 3e-3},
        "run": {"out_dir": str(out), "steps": 4, "log_every": 1, "val_every": 0, "ckpt_every": 0,
                "device": "cpu", "progress": False, **run},
    }


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path
