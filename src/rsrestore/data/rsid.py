"""RSID: remote sensing image dehazing pairs (hazy / ground truth).

Chi, Yuan and Wang, "Trinity-Net: Gradient-Guided Swin Transformer-Based Remote Sensing Image Dehazing and Beyond",
IEEE TGRS 61 (2023), doi:10.1109/TGRS.2023.3285228. 1000 real hazy RGB images with ground truth, released already
split into ``train/`` and ``test/``.

Layout, as released::

    root/{train,test}/hazy/NAME.ext
    root/{train,test}/GT/NAME.ext

Inputs and targets pair by file stem.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .common import check_choice
from .paired import PairedDataset

SPLITS: tuple[str, ...] = ("train", "test")


class RSIDDataset(PairedDataset):
    """RSID pairs from ``root/<split>/{hazy,GT}``.

    Args:
        root: folder holding ``train/`` and ``test/``.
        split: ``"train"`` or ``"test"``.
        crop, flip, seed, bands, scale: see :class:`~rsrestore.data.common.RestorationDataset`.

    Items: ``{"input", "target", "valid", "meta": {"name", "path", "target_path"}}``, RGB in ``[0, 1]``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        crop: int | None = None,
        flip: bool = False,
        seed: int = 0,
        bands: Sequence[int] | str | None = None,
        scale: float | None = None,
    ) -> None:
        check_choice("split", split, SPLITS)
        super().__init__(
            root,
            split,
            crop=crop,
            flip=flip,
            seed=seed,
            bands=bands,
            scale=scale,
            input_dirs=("hazy",),
            target_dirs=("GT", "gt"),
            load_phi=False,
            load_mask=False,
        )
