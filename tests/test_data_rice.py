"""RICE1 / RICE2 on tiny generated trees in the release layout, and the documented 80/20 split."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from rsrestore.data import RICEDataset, build_dataset
from rsrestore.data.rice import rice_split

RNG = np.random.default_rng(3)


def write_png(path: Path, array: np.ndarray) -> None:
    array = array if array.ndim == 3 else array[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", height=array.shape[1], width=array.shape[2],
                           count=array.shape[0], dtype=array.dtype) as dst:
            dst.write(array)


def make_rice(root: Path, n1=10, n2=7, size=6):
    values = {}
    for version, n in ((1, n1), (2, n2)):
        base = root / f"RICE{version}"
        for i in range(n):
            cloudy = RNG.integers(0, 256, (3, size, size), dtype=np.uint8)
            clear = RNG.integers(0, 256, (3, size, size), dtype=np.uint8)
            write_png(base / "cloud" / f"{i}.png", cloudy)
            write_png(base / "label" / f"{i}.png", clear)
            values[(version, str(i))] = {"input": cloudy, "target": clear}
            if version == 2:
                mask = (RNG.random((size, size)) > 0.6).astype(np.uint8) * 255
                write_png(base / "mask" / f"{i}.png", mask)
                values[(version, str(i))]["mask"] = mask
    return values


def test_rice1_values_and_split(tmp_path):
    values = make_rice(tmp_path / "RICE_DATASET")
    train = RICEDataset(tmp_path / "RICE_DATASET", version=1)
    test = RICEDataset(tmp_path / "RICE_DATASET", "test", version=1)
    names_train = [train[i]["meta"]["name"] for i in range(len(train))]
    names_test = [test[i]["meta"]["name"] for i in range(len(test))]
    # natural order 0..9: the first 8 train, the last 2 test (not the string order 0, 1, 10, ...)
    assert names_train == [str(i) for i in range(8)] and names_test == ["8", "9"]
    s = test[1]
    assert s["meta"]["version"] == 1 and "mask" not in s
    np.testing.assert_allclose(s["input"].numpy(), values[(1, "9")]["input"] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(s["target"].numpy(), values[(1, "9")]["target"] / 255.0, rtol=1e-6)
    assert len(RICEDataset(tmp_path / "RICE_DATASET", "all", version=1)) == 10


def test_rice2_mask_and_root_is_version_folder(tmp_path):
    values = make_rice(tmp_path / "RICE_DATASET")
    ds = build_dataset("rice", tmp_path / "RICE_DATASET" / "RICE2", split="all")
    assert ds.version == 2 and len(ds) == 7
    for i in range(7):
        s = ds[i]
        assert s["mask"].shape == (1, 6, 6)
        np.testing.assert_array_equal(s["mask"].numpy()[0], values[(2, str(i))]["mask"] / 255.0)
    # 7 pairs: round(5.6) = 6 train, 1 test
    assert len(RICEDataset(tmp_path / "RICE_DATASET" / "RICE2")) == 6
    assert len(RICEDataset(tmp_path / "RICE_DATASET" / "RICE2", "test")) == 1
    # a renamed RICE2 folder is recognised by its cloud/label/mask folders
    renamed = (tmp_path / "RICE_DATASET" / "RICE2").rename(tmp_path / "rice_two")
    assert RICEDataset(renamed, "all").version == 2
    # only RICE1 left under the dataset root: version inferred
    assert RICEDataset(tmp_path / "RICE_DATASET", "all").version == 1


def test_split_is_disjoint_complete_and_deterministic():
    stems = [str(i) for i in range(500)]
    shuffled = list(RNG.permutation(stems))
    train, test = rice_split(shuffled, "train"), rice_split(list(reversed(stems)), "test")
    assert len(train) == 400 and len(test) == 100
    assert set(train).isdisjoint(test) and set(train) | set(test) == set(stems)
    assert test == [str(i) for i in range(400, 500)]
    assert rice_split(stems, "train", 0.5) == [str(i) for i in range(250)]


def test_errors(tmp_path):
    make_rice(tmp_path)
    with pytest.raises(ValueError, match="holds RICE1 and RICE2: pass version=1 or version=2"):
        RICEDataset(tmp_path)
    with pytest.raises(ValueError, match="is a RICE1 folder but version=2"):
        RICEDataset(tmp_path / "RICE1", version=2)
    with pytest.raises(ValueError, match="version must be one of"):
        RICEDataset(tmp_path, version=3)
    with pytest.raises(ValueError, match="split must be one of"):
        RICEDataset(tmp_path, "val", version=1)
    with pytest.raises(ValueError, match="train_fraction"):
        RICEDataset(tmp_path, version=1, train_fraction=1.0)
    with pytest.raises(FileNotFoundError, match="expected RICE1/ or RICE2/"):
        RICEDataset(tmp_path / "RICE1" / "cloud")
    (tmp_path / "RICE2" / "mask" / "3.png").unlink()
    with pytest.raises(FileNotFoundError, match="lacks a mask file for 1 of 7"):
        RICEDataset(tmp_path, "all", version=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RICEDataset(tmp_path / "nothing")
