"""Real images and graded blur / noise series shared by the no-reference metric tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SSEQ_EXAMPLE = DATA / "sseq" / "img.bmp"


def neon_plots(*plots: tuple[str, str]) -> list[Path]:
    return [DATA / "neon" / site / f"{site}_{plot}.png" for site, plot in plots]


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real test data not found at {path} (expected the shared data folder beside the repository)")
    return path


def load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(need(path)).convert("RGB"), dtype=np.float64) / 255.0


def to_tensor(stack: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(stack)).permute(0, 3, 1, 2).float()


def blurred(a: np.ndarray, sigmas) -> torch.Tensor:
    return to_tensor([ndimage.gaussian_filter(a, (s, s, 0)) if s else a for s in sigmas])


def noisy(a: np.ndarray, stds, seed: int = 0) -> torch.Tensor:
    z = np.random.default_rng(seed).standard_normal(a.shape)  # one draw, scaled: levels differ only in strength
    return to_tensor([np.clip(a + s * z, 0.0, 1.0) for s in stds])
