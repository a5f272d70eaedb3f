"""The bundled SAR-guided cloud-removal weights (sarcr and dsen2cr): they load through the MODELS table with the config
they were trained with, their metadata records the held-out verdict they shipped on (the cloudy input beaten on PSNR,
SSIM, CIEDE2000, MAE and SAM on the synthetic columns and on the real-Sentinel-1 set, but for the losses listed in
KNOWN_LOSSES), and over the cloud-free SEN12MS-CR patch with its real Sentinel-1 scene (a place and season they never
trained on) they remove synthetic clouds with real cloud-top spectra while leaving the ground the clouds never touched
as it was.
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
from rsrestore.metrics.full_reference import sam
from rsrestore.models.registry import MODELS
from rsrestore.physics.clouds import synthesize_clouds
from rsrestore.raster import sar_to_unit
from rsrestore.tiling import restore_array
from rsrestore.train.cloud_scenes import block_phase, pair_in_blocks

WEIGHTS_DIR = Path(rsrestore.__file__).resolve().parent / "weights"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sen12mscr"
CLEAN = DATA / "ROIs1970_fall_s2" / "s2_139" / "ROIs1970_fall_s2_139_p839.tif"
S1 = DATA / "ROIs1970_fall_s1" / "s1_139" / "ROIs1970_fall_s1_139_p839.tif"

# method: the config keys that must match the weights' metadata
CONFIG_KEYS = {"sarcr": ("width", "patch", "embed_dim", "input_skip"),
               "dsen2cr": ("features", "blocks", "res_scale", "train_on_detected")}
# Largest spectral angle (degrees) allowed on the ground the clouds never touched, and the least factor, per method, by
# which the mean absolute error must fall below the cloudy input's (thick, then thin clouds). The clouds have real
# cloud-top spectra, lie apart band by band as real ones do, and their change in the 20 m and 60 m bands is held in the
# patch's own blocks, as SEN12MS-CR holds those bands. Measured: sarcr (the residual form) 5.65x and 8.48x, the
# untouched ground within 0.01 and 0.17 deg (the non-residual weights bundled before: 3.99x / 8.34x); dsen2cr 2.36x and
# 6.46x, 0.01 and 0.51 deg (the weights before these, trained on smooth coarse bands: 2.42x / 6.25x).
UNTOUCHED_SAM_MAX = 2.0
ERROR_GAIN_MIN = {"sarcr": 4.5, "dsen2cr": 2.25}


def weights_path(method: str) -> Path:
    return WEIGHTS_DIR / f"{method}_cloud_s2.safetensors"


@pytest.fixture(scope="module", params=sorted(CONFIG_KEYS))
def method(request) -> str:
    if not weights_path(request.param).exists():
        pytest.skip(f"bundled weights {weights_path(request.param).name} missing")
    return request.param


@pytest.fixture(scope="module")
def meta(method) -> dict:
    return json.loads(weights_path(method).with_suffix(".json").read_text())


# Deciding scores on which bundled weights lose to the cloudy input, exported anyway (--force-export) because they beat
# the weights bundled before them everywhere (none now; sarcr's weights before these lost SAM on the real-Sentinel-1
# set). Each entry must still be a loss, so this list is corrected when one is won.
KNOWN_LOSSES = {"sarcr": set(), "dsen2cr": set()}


def test_sha256_metadata_and_the_verdict_they_shipped_on(method, meta):
    assert meta["sha256"] == hashlib.sha256(weights_path(method).read_bytes()).hexdigest()
    assert meta["method"] == method and meta["task"] == "cloud" and meta["bands"] == 13
    decision = meta["heldout_decision"]
    assert decision["wins"] == (not KNOWN_LOSSES[method]) and decision["baseline"] == "input"
    assert {"synthetic", "real_sar"} == set(decision["deciding_sets"])
    for name in decision["deciding_sets"]:
        ours, cloudy = meta["scores"][name], meta["baseline_scores"][name]["input"]
        wins = {"psnr": ours["psnr"] > cloudy["psnr"], "ssim": ours["ssim"] > cloudy["ssim"],
                "ciede2000": ours["ciede2000"] < cloudy["ciede2000"], "sam": ours["sam"] < cloudy["sam"]}
        assert {(name, m) for m, won in wins.items() if not won} == {k for k in KNOWN_LOSSES[method] if k[0] == name}


def test_registry_loads_the_config_they_trained_with(method, meta):
    model = rsrestore.load_model(method)
    assert MODELS[method].weights_path == weights_path(method) and MODELS[method].experimental
    assert not model.training and model.cfg.keep_clear
    for key in CONFIG_KEYS[method]:
        assert getattr(model.cfg, key) == meta["config"][key]


def test_clouds_removed_over_real_sentinel1_and_untouched_ground_kept(method):
    if not CLEAN.exists():
        pytest.skip(f"SEN12MS-CR patch 139_p839 not found under {DATA} (the shared data folder is absent)")
    with rasterio.open(CLEAN) as ds:
        clean = np.clip(ds.read().astype(np.float32) / 10000.0, 0.0, 1.0)[:, :128, 128:]
    with rasterio.open(S1) as ds:
        sar = sar_to_unit(ds.read())[:, :128, 128:]
    model = rsrestore.load_model(method)
    phase = block_phase(clean[0])
    gains, kept_sam = [], []
    for seed, kind in ((3, "thick"), (4, "thin")):
        syn = synthesize_clouds(torch.from_numpy(clean)[None], torch.Generator().manual_seed(seed), kind=kind,
                                shadow=True)
        # the clouds' change in the 20 m and 60 m bands held in the patch's own blocks, as SEN12MS-CR holds them
        cloudy, _, _ = pair_in_blocks(syn["input"][0].numpy(), clean, np.zeros((1, 128, 128), np.float32), phase,
                                      clear_in_blocks=True)
        out = np.clip(restore_array(model, cloudy, sar=sar, tile=512, overlap=32), 0.0, 1.0)
        err_in, err_out = np.abs(cloudy - clean).mean(), np.abs(out - clean).mean()
        gains.append(err_in / err_out)
        untouched = (torch.maximum(syn["mask"], syn["shadow"])[0, 0] == 0) & \
            torch.from_numpy(np.abs(cloudy - clean).max(0) == 0)
        kept_sam.append(float(sam(torch.from_numpy(out)[None], torch.from_numpy(clean)[None], mask=untouched[None])[0]))
    assert min(gains) > ERROR_GAIN_MIN[method], gains
    assert max(kept_sam) < UNTOUCHED_SAM_MAX, kept_sam
