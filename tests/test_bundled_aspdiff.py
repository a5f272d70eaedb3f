"""The bundled ASPDiff haze weights (Zhang et al., IEEE TGRS 2022, in this project's residual form): they load through
the MODELS table with the config they were trained with, their metadata records the held-out verdict they shipped on,
and on the shipped sample scenes (Rocky Mountain NP, a source they never trained on, and NAIP) they leave clear
crops alone (the paper's form, sampling the image from noise, left them about 24 dB from their input) while still
removing synthetic haze.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _sample_crops import clear_sample_crops

import rsrestore
from rsrestore.metrics.full_reference import compute_metrics
from rsrestore.models.registry import MODELS
from rsrestore.physics.haze import synthesize_haze

WEIGHTS = Path(rsrestore.__file__).resolve().parent / "weights" / "aspdiff_haze_rgb.safetensors"
META = WEIGHTS.with_suffix(".json")

pytestmark = pytest.mark.skipif(not WEIGHTS.exists(), reason="bundled weights aspdiff_haze_rgb.safetensors missing")


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads(META.read_text())


@pytest.fixture(scope="module")
def model():
    return rsrestore.load_model("aspdiff")


@pytest.fixture(scope="module")
def sample_crops() -> torch.Tensor:
    return clear_sample_crops()


def test_sha256_metadata_and_the_verdict_they_shipped_on(meta):
    assert meta["sha256"] == hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()
    assert meta["method"] == "aspdiff" and meta["task"] == "haze" and meta["bands"] == 3
    decision = meta["heldout_decision"]
    assert decision["wins"] and decision["baseline"] == "dcp"
    assert {"neon", "eurosat", "planet", "landsat8_toa"} == set(decision["deciding_sets"])
    for name in decision["deciding_sets"]:
        ours, dcp = meta["scores"][name], meta["baseline_scores"][name]["dcp"]
        assert ours["psnr"] > dcp["psnr"] and ours["ssim"] > dcp["ssim"] and ours["ciede2000"] < dcp["ciede2000"]


def test_registry_loads_the_residual_form_they_trained_in(model, meta):
    assert MODELS["aspdiff"].weights_path == WEIGHTS and MODELS["aspdiff"].experimental
    assert not model.training
    assert model.cfg.residual and model.cfg.prediction == "pred_x0" == meta["config"]["prediction"]
    assert model.cfg.steps == meta["config"]["steps"] == 2


def test_bundled_weights_leave_clean_scenes_alone(model, sample_crops):
    with torch.inference_mode():
        psnr = compute_metrics(model(sample_crops).clamp(0, 1), sample_crops, names=("psnr",))["psnr"]
    # Measured 44.7-54.0 dB (the weights of the paper's form: 21.6-28.0).
    assert min(psnr) >= 40.0 and float(np.mean(psnr)) >= 44.0, psnr


def test_bundled_weights_remove_haze(model, sample_crops):
    gains = []
    for j, preset in enumerate(("moderate", "thick")):
        hazy = synthesize_haze(sample_crops, torch.Generator().manual_seed(50 + j), preset=preset)["input"]
        with torch.inference_mode():
            after = compute_metrics(model(hazy).clamp(0, 1), sample_crops, names=("psnr",))["psnr"]
        gains += list(np.subtract(after, compute_metrics(hazy, sample_crops, names=("psnr",))["psnr"]))
    # Measured: 9.5 dB on average, 3.6-17.4 under thick haze (the weights of the paper's form: 9.6, 4.7-15.2).
    assert np.mean(gains) > 5.0 and min(gains[len(gains) // 2:]) > 2.0, gains
