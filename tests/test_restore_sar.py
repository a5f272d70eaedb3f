"""Restoring a real cloudy Sentinel-2 patch with its Sentinel-1 scene through `rsrestore restore --sar`.

Uses SEN12MS-CR ROIs1970_fall 139_p839 from ../shared/data (13-band uint16 cloudy optical and 2-band float32 dB SAR
on the same UTM grid) with tiny untrained sarcr / dsen2cr networks saved to safetensors, each with a metadata JSON
beside it that records its config (how `load_model` rebuilds a non-default architecture from a weights path).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine
from safetensors.torch import save_file
from typer.testing import CliRunner

from rsrestore.cli import app
from rsrestore.models.registry import ModelError, get_spec, load_model, sha256_of
from rsrestore.raster import RasterError, from_unit, inspect_raster, sar_to_unit, to_unit
from rsrestore.tiling import open_sar_on_grid

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sen12mscr"
CLOUDY = DATA / "ROIs1970_fall_s2_cloudy" / "s2_cloudy_139" / "ROIs1970_fall_s2_cloudy_139_p839.tif"
S1 = DATA / "ROIs1970_fall_s1" / "s1_139" / "ROIs1970_fall_s1_139_p839.tif"

TINY = {
    "sarcr": {"optical_bands": 13, "sar_bands": 2, "width": 8, "heads": 2, "patch": 4, "stride": 2, "embed_dim": 16,
              "base_blocks": 1, "expand": 2, "ca_reduction": 4},
    "dsen2cr": {"optical_bands": 13, "sar_bands": 2, "features": 8, "blocks": 2},
}
TILING = ["--tile", "128", "--overlap", "16", "-q"]

runner = CliRunner()


@pytest.fixture(scope="module")
def patch() -> tuple[Path, Path]:
    if not (CLOUDY.exists() and S1.exists()):
        pytest.skip(f"SEN12MS-CR patch 139_p839 not found under {DATA} (the shared data folder is absent)")
    return CLOUDY, S1


def save_tiny(folder: Path, name: str, seed: int = 0, sidecar: bool = True) -> tuple[Path, torch.nn.Module]:
    """An untrained tiny model saved as safetensors, with the metadata JSON the trainer would write beside it."""
    torch.manual_seed(seed)
    model = load_model(name, weights=None, config=TINY[name])
    path = folder / f"{name}_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    if sidecar:
        meta = {"method": name, "config": dataclasses.asdict(model.cfg), "sha256": sha256_of(path)}
        path.with_suffix(".json").write_text(json.dumps(meta))
    return path, model


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def _one_line_error(result, *phrases):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for p in phrases:
        assert p in lines[0], lines[0]
    return lines[0]


def shifted_copy(src: Path, dst: Path, cols: int, rows: int) -> Path:
    """The same raster with its origin moved by (cols, rows) pixels (east, south): a different grid."""
    with rasterio.open(src) as ds:
        profile, data = ds.profile, ds.read()
    profile["transform"] = profile["transform"] @ Affine.translation(cols, rows)
    with rasterio.open(dst, "w", **profile) as ds:
        ds.write(data)
    return dst


# --------------------------------------------------------------------------------------------------------------------
# load_model and the weights' metadata JSON


@pytest.mark.parametrize("name", ["sarcr", "dsen2cr"])
def test_load_model_rebuilds_config_from_sidecar(tmp_path, name):
    path, model = save_tiny(tmp_path, name)
    loaded = load_model(name, weights=path)
    assert dataclasses.asdict(loaded.cfg) == dataclasses.asdict(model.cfg)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # An explicit config wins over the sidecar: here the default (paper) config, which the tiny weights do not fit.
    with pytest.raises(ModelError, match="do not fit"):
        load_model(name, weights=path, config={})


def test_load_model_without_sidecar_uses_default_config(tmp_path):
    path, _ = save_tiny(tmp_path, "dsen2cr", sidecar=False)
    with pytest.raises(ModelError, match="pass the config the weights were trained with"):
        load_model("dsen2cr", weights=path)
    assert load_model("dsen2cr", weights=path, config=TINY["dsen2cr"]).cfg.features == 8


def test_sidecar_for_other_weights_or_method_is_an_error(tmp_path):
    path, _ = save_tiny(tmp_path, "dsen2cr")
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "sha256": "0" * 64}))
    with pytest.raises(ModelError, match="sha256"):
        load_model("dsen2cr", weights=path)
    meta_path.write_text(json.dumps({**meta, "method": "sarcr"}))
    with pytest.raises(ModelError, match="holds sarcr weights"):
        load_model("dsen2cr", weights=path)
    meta_path.write_text("{not json")
    with pytest.raises(ModelError, match="cannot read the weights metadata"):
        load_model("dsen2cr", weights=path)
    # A JSON without a config (e.g. unrelated notes) is not metadata: ignored.
    meta_path.write_text(json.dumps({"notes": "x"}))
    with pytest.raises(ModelError, match="do not fit"):
        load_model("dsen2cr", weights=path)


# --------------------------------------------------------------------------------------------------------------------
# rsrestore restore --sar


@pytest.mark.parametrize("name", ["sarcr", "dsen2cr"])
def test_cli_restores_cloudy_scene_with_sar_keeping_georeferencing(patch, tmp_path, name):
    cloudy, s1 = patch
    weights, model = save_tiny(tmp_path, name)
    out = tmp_path / f"{name}.tif"
    _ok(runner.invoke(app, ["restore", str(cloudy), "--sar", str(s1), "--method", name, "--weights", str(weights),
                            "-o", str(out), "--device", "cpu", *TILING]))
    with rasterio.open(cloudy) as a, rasterio.open(out) as b:
        assert (b.crs, b.transform, b.count, b.dtypes, b.shape) == (a.crs, a.transform, a.count, a.dtypes, a.shape)
        raw, restored = a.read(), b.read()
    assert restored.dtype == np.uint16
    assert not np.array_equal(raw, restored)

    # The SAR reaches the network: another SAR scene gives another result.
    flipped = tmp_path / "s1_flipped.tif"
    with rasterio.open(s1) as ds:
        profile, db = ds.profile, ds.read()
    with rasterio.open(flipped, "w", **profile) as ds:
        ds.write(np.ascontiguousarray(db[:, ::-1]))
    out2 = tmp_path / f"{name}_other_sar.tif"
    _ok(runner.invoke(app, ["restore", str(cloudy), "--sar", str(flipped), "--method", name, "--weights",
                            str(weights), "-o", str(out2), "--device", "cpu", *TILING]))
    with rasterio.open(out2) as b:
        assert not np.array_equal(b.read(), restored)


def test_tiled_sar_restore_equals_whole_image_forward(patch, tmp_path):
    """DSen2-CR is local (receptive radius 6 px < the 16 px halo), so tiles read with their SAR windows must give the
    whole-image result exactly, up to one digital number of rounding."""
    cloudy, s1 = patch
    weights, model = save_tiny(tmp_path, "dsen2cr")
    out = tmp_path / "tiled.tif"
    _ok(runner.invoke(app, ["restore", str(cloudy), "--sar", str(s1), "--method", "dsen2cr", "--weights",
                            str(weights), "-o", str(out), "--device", "cpu", *TILING]))
    with rasterio.open(cloudy) as a, rasterio.open(s1) as s, rasterio.open(out) as b:
        x = torch.from_numpy(to_unit(a.read(), 10000.0))[None]
        sar = torch.from_numpy(sar_to_unit(s.read()))[None]
        tiled = b.read().astype(np.int64)
    with torch.no_grad():
        whole = model.eval()(x, sar)[0].numpy()
    expected = from_unit(whole, "uint16", 10000.0).astype(np.int64)
    assert np.abs(tiled - expected).max() <= 1


def test_sar_on_another_grid_is_a_clear_error_and_align_resamples(patch, tmp_path):
    cloudy, s1 = patch
    weights, _ = save_tiny(tmp_path, "dsen2cr")
    moved = shifted_copy(s1, tmp_path / "s1_moved.tif", cols=3, rows=-2)
    args = ["restore", str(cloudy), "--sar", str(moved), "--method", "dsen2cr", "--weights", str(weights),
            "--device", "cpu", *TILING]
    _one_line_error(runner.invoke(app, [*args, "-o", str(tmp_path / "a.tif")]), "not on the optical grid", "--align")
    assert not (tmp_path / "a.tif").exists()

    out = tmp_path / "aligned.tif"
    _ok(runner.invoke(app, [*args, "--align", "-o", str(out)]))
    with rasterio.open(cloudy) as a, rasterio.open(out) as b:
        assert (b.crs, b.transform, b.shape, b.dtypes) == (a.crs, a.transform, a.shape, a.dtypes)

    # What the network saw: the SAR moved back onto the optical grid (exact for a whole-pixel shift), and the strip
    # the moved SAR does not cover as the lowest backscatter (0), not as 0 dB (1).
    with rasterio.open(s1) as ds:
        db = ds.read()
    vrt = open_sar_on_grid(moved, inspect_raster(cloudy), align=True)
    try:
        on_grid = sar_to_unit(vrt.read())
    finally:
        vrt.close()
    np.testing.assert_allclose(on_grid[:, :-2, 3:], sar_to_unit(db)[:, 2:, :-3], atol=1e-6)
    assert on_grid[:, :, :3].max() == 0.0 and on_grid[:, -2:, :].max() == 0.0


@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")  # inside rasterio.warp
def test_align_reprojects_sar_from_another_crs(patch, tmp_path):
    """SAR delivered in geographic coordinates (EPSG:4326) is refused as is and warped onto the UTM grid with --align,
    where it matches the original SAR up to the two resamplings."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    cloudy, s1 = patch
    geographic = tmp_path / "s1_4326.tif"
    with rasterio.open(s1) as src:
        original = src.read()
        transform, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height, *src.bounds)
        profile = {**src.profile, "crs": "EPSG:4326", "transform": transform, "width": w, "height": h}
        with rasterio.open(geographic, "w", **profile) as dst:
            for band in (1, 2):
                reproject(rasterio.band(src, band), rasterio.band(dst, band), resampling=Resampling.nearest)
    weights, _ = save_tiny(tmp_path, "dsen2cr")
    args = ["restore", str(cloudy), "--sar", str(geographic), "--method", "dsen2cr", "--weights", str(weights),
            "--device", "cpu", *TILING]
    _one_line_error(runner.invoke(app, [*args, "-o", str(tmp_path / "a.tif")]), "not on the optical grid")
    out = tmp_path / "aligned.tif"
    _ok(runner.invoke(app, [*args, "--align", "-o", str(out)]))
    with rasterio.open(cloudy) as a, rasterio.open(out) as b:
        assert (b.crs, b.transform, b.shape) == (a.crs, a.transform, a.shape)

    vrt = open_sar_on_grid(geographic, inspect_raster(cloudy), align=True)
    try:
        warped = sar_to_unit(vrt.read())
    finally:
        vrt.close()
    inner = (slice(None), slice(8, -8), slice(8, -8))
    expected = sar_to_unit(original)
    for band in range(2):
        r = np.corrcoef(warped[inner][band].ravel(), expected[inner][band].ravel())[0, 1]
        assert r > 0.95, (band, r)


def test_sar_of_another_size_or_crs_is_rejected_without_align(patch, tmp_path):
    cloudy, s1 = patch
    with rasterio.open(s1) as ds:
        profile, db = ds.profile, ds.read()
    small = tmp_path / "s1_small.tif"
    with rasterio.open(small, "w", **{**profile, "width": 200, "height": 200}) as ds:
        ds.write(db[:, :200, :200])
    other_crs = tmp_path / "s1_crs.tif"
    with rasterio.open(other_crs, "w", **{**profile, "crs": "EPSG:32651"}) as ds:
        ds.write(db)
    info = inspect_raster(cloudy)
    for path in (small, other_crs):
        with pytest.raises(RasterError, match="not on the optical grid"):
            open_sar_on_grid(path, info, align=False)


def test_sar_method_without_sar_is_a_clear_error(patch, tmp_path):
    cloudy, _ = patch
    weights, _ = save_tiny(tmp_path, "sarcr")
    out = tmp_path / "o.tif"
    _one_line_error(runner.invoke(app, ["restore", str(cloudy), "--method", "sarcr", "--weights", str(weights),
                                        "-o", str(out), "-q"]), "needs a co-registered SAR", "--sar")
    assert not out.exists()
    assert get_spec("sarcr").needs_sar and get_spec("dsen2cr").needs_sar


def test_wrong_band_count_for_sar_model_is_a_clear_error(patch, tmp_path):
    cloudy, s1 = patch
    weights, _ = save_tiny(tmp_path, "dsen2cr")
    _one_line_error(runner.invoke(app, ["restore", str(cloudy), "--sar", str(s1), "--method", "dsen2cr", "--weights",
                                        str(weights), "--bands", "4,3,2", "-o", str(tmp_path / "o.tif"), "-q"]),
                    "13 band(s)")


# --------------------------------------------------------------------------------------------------------------------
# Train on the real patch, then restore with the trained weights: the weights' metadata carries the config.


def test_trained_weights_restore_through_cli_without_restating_config(patch, tmp_path):
    """A tiny DSen2-CR overfits the real SEN12MS-CR triplet through the trainer (CARL loss, rule-based mask); the run's
    final.safetensors + final.json then restore the scene with its SAR by path alone, closer to the cloud-free
    target than the cloudy input is."""
    from rsrestore.train import parse_config, train

    cloudy, s1 = patch
    cfg = parse_config({
        "model": {"name": "dsen2cr", "config": TINY["dsen2cr"]},
        "data": {"train": {"kind": "sen12mscr", "root": str(DATA), "options": {"missing_target": "skip"}},
                 "batch_size": 1},
        "optim": {"lr": 3e-3},
        "loss": {"name": "carl"},
        "run": {"out_dir": str(tmp_path / "run"), "steps": 60, "log_every": 1, "ckpt_every": 0, "device": "cpu",
                "progress": False, "seed": 0},
    })
    with pytest.warns(UserWarning, match="without a cloud-free target"):
        result = train(cfg)
    assert result.finished and result.final_weights is not None
    with open(tmp_path / "run" / "log.csv", newline="") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert len(losses) == 60
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses

    out = tmp_path / "restored.tif"
    _ok(runner.invoke(app, ["restore", str(cloudy), "--sar", str(s1), "--method", "dsen2cr", "--weights",
                            str(result.final_weights), "-o", str(out), "--device", "cpu", *TILING]))
    clear = DATA / "ROIs1970_fall_s2" / "s2_139" / "ROIs1970_fall_s2_139_p839.tif"
    with rasterio.open(cloudy) as a, rasterio.open(clear) as c, rasterio.open(out) as b:
        x, y, t = (np.clip(d.read().astype(np.float64), 0, 10000) / 10000 for d in (a, b, c))
    assert np.abs(y - t).mean() < np.abs(x - t).mean()


# --------------------------------------------------------------------------------------------------------------------
# Bundled cloud weights (present once trained with `rsrestore train configs/{sarcr,dsen2cr}_synthetic_clouds_cpu.yaml`)


def held_out_against_input(meta: dict) -> tuple[dict, dict]:
    """(the weights' scores, the cloudy input's) on the synthetic held-out set, in either metadata layout: the
    training pipeline's (`scores` / `baseline_scores` per held-out set) or the earlier `held_out` record."""
    if "held_out" in meta:
        return meta["held_out"]["scores"], meta["held_out"]["cloudy_input_scores"]
    return meta["scores"]["synthetic"], meta["baseline_scores"]["synthetic"]["input"]


@pytest.mark.parametrize("name", ["sarcr", "dsen2cr"])
def test_bundled_cloud_weights_metadata_and_default_restore(patch, tmp_path, name):
    spec = get_spec(name)
    if spec.weights_path is None:
        pytest.skip(f"no bundled weights for {name}")
    meta = spec.weights_metadata()
    assert meta["sha256"] == sha256_of(spec.weights_path)
    assert meta["config"]["optical_bands"] == 13 and meta["config"]["sar_bands"] == 2
    for key in ("steps", "wall_time_s", "trained_on", "limits"):
        assert key in meta, key
    ours, cloudy = held_out_against_input(meta)
    for k in ("psnr", "ssim"):
        assert ours[k] > cloudy[k]
    for k in ("mae", "sam"):
        assert ours[k] < cloudy[k]

    cloudy, s1 = patch
    out = tmp_path / "default.tif"
    _ok(runner.invoke(app, ["restore", str(cloudy), "--sar", str(s1), "--method", name, "-o", str(out),
                            "--device", "cpu", *TILING]))
    with rasterio.open(cloudy) as a, rasterio.open(out) as b:
        assert (b.crs, b.transform, b.dtypes) == (a.crs, a.transform, a.dtypes)
        assert not np.array_equal(a.read(), b.read())
