"""Datasets read in the folder layouts they are published in.

Every dataset returns dicts ``{"input": (C, H, W) float32 in [0, 1], "target": ..., "sar"?: (2, H, W),
"mask"?: (1, H, W), "phi"?: ..., "meta": {"name", "path", ...}}`` and takes the options ``crop``, ``flip``, ``seed``
and ``bands`` (see :class:`~rsrestore.data.common.RestorationDataset`).

``DATASETS`` maps a kind to its class (an explicit table: grep a name to find the class). Use
:func:`build_dataset` to build one from a kind name, e.g. ``build_dataset("rice", "RICE_DATASET", split="test",
version=2)``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .common import RestorationDataset, read_image, read_mask, read_phi
from .paired import PairedDataset
from .rice import RICEDataset
from .rsid import RSIDDataset
from .satehaze1k import SateHaze1KDataset
from .sen12mscr import SEN12MSCRDataset

from .synthetic import SyntheticDataset

DATASETS: dict[str, type[Dataset]] = {
    "paired": PairedDataset,
    "satehaze1k": SateHaze1KDataset,
    "rice": RICEDataset,
    "rsid": RSIDDataset,
    "sen12mscr": SEN12MSCRDataset,
    "synthetic": SyntheticDataset,
}


def dataset_options(kind: str) -> list[str]:
    """Options that ``build_dataset(kind, root, ...)`` accepts besides ``root`` (the first argument) and ``split``."""
    params = list(inspect.signature(_lookup(kind).__init__).parameters.values())[2:]
    return [p.name for p in params if p.name != "split" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _lookup(kind: str) -> type[Dataset]:
    key = kind.lower() if isinstance(kind, str) else kind
    if key not in DATASETS:
        raise ValueError(f"unknown dataset kind {kind!r}; known kinds: {', '.join(sorted(DATASETS))}")
    return DATASETS[key]


def build_dataset(kind: str, root: str | Path, /, split: str | None = None, **options: Any) -> Dataset:
    """Build the dataset ``kind`` (a key of :data:`DATASETS`) from ``root``.

    ``root`` is the dataset folder (for kinds whose first argument is something else, that argument).
    ``split=None`` keeps the dataset's own default (``"train"`` for SateHaze1K, RICE and RSID, ``"all"`` for
    SEN12MS-CR, no split folder for ``paired``). Unknown options raise a ValueError that lists the accepted ones.
    """
    cls = _lookup(kind)
    params = inspect.signature(cls.__init__).parameters
    accepted = dataset_options(kind)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(options) - set(accepted))
    if unknown and not takes_any:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for dataset {kind!r};"
            f" accepted: {', '.join(accepted)}"
        )
    if split is not None:
        if "split" not in params:
            raise ValueError(f"dataset {kind!r} takes no split")
        options["split"] = split
    return cls(root, **options)


__all__ = [
    "DATASETS",
    "PairedDataset",
    "RICEDataset",
    "RSIDDataset",
    "RestorationDataset",
    "SEN12MSCRDataset",
    "SateHaze1KDataset",
    "build_dataset",
    "dataset_options",
    "read_image",
    "read_mask",
    "read_phi",
]
