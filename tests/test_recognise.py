"""The degradation recogniser: features follow the physics, the shipped recogniser reads real scenes, `inspect`,
and `--task auto` routing (a clean scene passes through unchanged, a hazy one goes to dcp, batch records decisions)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.windows import Window
from typer.testing import CliRunner

from conftest import make_geotiff
from rsrestore.cli import app
from rsrestore.physics.clouds import synthesize_clouds
from rsrestore.physics.haze import synthesize_haze
from rsrestore.physics.sanddust import synthesize_dust
import rsrestore
from rsrestore.classical.dcp import omega_for_severity
from rsrestore.recognise import (
    CLASSES,
    FEATURE_NAMES,
    Recognition,
    analysis_image,
    decide,
    features,
    inspect_scene,
    recognise_array,
    rgb_bands,
    route_array,
)

runner = CliRunner()
NAIP = "naip/m_4709963_se_14_1_20180716.tif"


def _naip_crop(shared_data: Path, size: int = 256) -> np.ndarray:
    """A real clean crop: R, G, B of a NAIP scene (farmland), uint8 (3, size, size)."""
    with rasterio.open(shared_data / NAIP) as ds:
        return ds.read([1, 2, 3], window=Window(200, 200, size, size))


def _feature(x: torch.Tensor, name: str) -> float:
    m = torch.ones(1, 1, *x.shape[-2:], dtype=torch.bool)
    return float(features(x, m)[FEATURE_NAMES.index(name)])


def test_features_move_the_way_the_physics_says(shared_data):
    clean = torch.from_numpy(_naip_crop(shared_data)).float()[None] / 255.0
    g = torch.Generator().manual_seed(0)
    hazy = synthesize_haze(clean, g, preset="thick")["input"]
    dusty = synthesize_dust(clean, g, preset="heavy")["input"]
    cloudy = synthesize_clouds(clean, g, kind="thick")["input"]
    # Haze adds airlight to every band: the dark channel rises, contrast falls.
    assert _feature(hazy, "dark_mean") > _feature(clean, "dark_mean") + 0.15
    assert _feature(hazy, "local_std_rel") < _feature(clean, "local_std_rel")
    # Dust casts red-yellow: the red share and CIE b* (yellow) rise, the blue share falls.
    assert _feature(dusty, "red_blue") > _feature(clean, "red_blue") + 0.1
    assert _feature(dusty, "lab_b") > _feature(clean, "lab_b")
    assert _feature(dusty, "chrom_b") < _feature(clean, "chrom_b")
    # Opaque clouds are bright, grey and local: whiteness and coarse patchiness rise.
    assert _feature(cloudy, "white_frac") > _feature(clean, "white_frac") + 0.05
    assert _feature(cloudy, "block_lum_std") > _feature(clean, "block_lum_std")


def test_rgb_bands_by_layout():
    assert rgb_bands(3) == [1, 2, 3]
    assert rgb_bands(4) == [1, 2, 3]  # R, G, B, NIR (NAIP)
    assert rgb_bands(13) == [4, 3, 2]  # Sentinel-2 B1..B12
    with pytest.raises(ValueError, match="--bands"):
        rgb_bands(6)


def test_shipped_recogniser_reads_real_scenes(shared_data):
    clean = _naip_crop(shared_data).astype(np.float32) / 255.0
    assert recognise_array(clean).label == "clean"
    hazy = synthesize_haze(torch.from_numpy(clean)[None], torch.Generator().manual_seed(1), preset="thick")["input"]
    assert recognise_array(hazy[0].numpy()).label == "haze"
    # The Landsat-7 scene's real cumulus (never trained on): its cloudiest tile reads as cloud.
    report, rgb, mask = inspect_scene(shared_data / "landsat7" / "RGB.byte.tif")
    white = ((rgb.min(0) > 0.6) & mask).astype(float)
    rows, cols = len(report.map_labels), len(report.map_labels[0])
    ys = np.linspace(0, mask.shape[0], rows + 1).round().astype(int)
    xs = np.linspace(0, mask.shape[1], cols + 1).round().astype(int)
    share = [[white[ys[i]:ys[i + 1], xs[j]:xs[j + 1]].mean() for j in range(cols)] for i in range(rows)]
    i, j = np.unravel_index(np.argmax(share), (rows, cols))
    assert report.map_labels[i][j] in ("thin_cloud", "thick_cloud")
    # The SEN12MS-CR cloudy patch reads as cloud, its cloud-free target as clean (13 bands: R, G, B = 4, 3, 2).
    cloudy = next((shared_data / "sen12mscr").glob("ROIs1970_fall_s2_cloudy/*/*.tif"))
    target = next((shared_data / "sen12mscr").glob("ROIs1970_fall_s2/*/*.tif"))
    assert inspect_scene(cloudy, with_map=False)[0].scene.label in ("thin_cloud", "thick_cloud")
    assert inspect_scene(target, with_map=False)[0].scene.label == "clean"
    # The Landsat-7 scene is partly cloudy: --task auto reads it as thick cloud (enough of its tiles are) or, at the
    # least, reports the cloudy tiles.
    decision = report.decision()
    assert decision.cloud_tiles > 0
    assert decision.label == "thick_cloud" or "read as thick cloud" in decision.reason


def _rec(label: str, severity: float = 0.5, **probs) -> Recognition:
    p = {c: probs.get(c, 0.0) for c in CLASSES}
    p[label] = probs.get(label, 0.9)
    return Recognition(label, severity, p, {c: severity for c in CLASSES})


def test_routing_rule():
    assert decide(_rec("clean", haze=0.35)).method is None  # clean wins: nothing is touched
    assert decide(_rec("haze")).method == "dcp"
    assert decide(_rec("thin_cloud")).method == "dcp"  # a thin veil is dehazed
    assert decide(_rec("dust")).method == "rop"
    thick = decide(_rec("thick_cloud"))
    assert thick.method is None and "SAR" in thick.reason
    # Several degradations: thick cloud, dust, haze, thin cloud is the order; the first present one decides.
    both = decide(_rec("haze", haze=0.55, dust=0.4))
    assert both.label == "dust" and both.method == "rop" and both.present == ["dust", "haze"]
    assert decide(_rec("haze", haze=0.6, thick_cloud=0.35)).method is None


def test_routing_sets_the_strength_from_the_severity():
    faint, thick = decide(_rec("haze", severity=0.15)), decide(_rec("haze", severity=0.7))
    assert faint.options["omega"] < thick.options["omega"] == 0.95
    assert faint.options["omega"] == omega_for_severity(0.15) and "omega 0.28" in faint.reason
    assert decide(_rec("thin_cloud", severity=0.2)).options == {"omega": omega_for_severity(0.2)}
    assert decide(_rec("dust", severity=0.2)).options == {}  # rop's omega barely moves its result: left as published


def test_a_partly_cloudy_scene_is_routed_by_the_rest_and_says_so():
    clean = decide(_rec("clean"), cloud_tiles=0.1)
    assert clean.method is None and clean.cloud_tiles == 0.1 and "10 % of its tiles read as thick cloud" in clean.reason
    hazy = decide(_rec("haze"), cloud_tiles=0.1)
    assert hazy.method == "dcp" and "10 % of its tiles" in hazy.reason
    assert decide(_rec("haze")).cloud_tiles == 0.0 and "tiles" not in decide(_rec("haze")).reason


def _write_scene(path: Path, data: np.ndarray, **kw) -> Path:
    return make_geotiff(path, data, **kw)


def test_inspect_prints_facts_json_and_map(tmp_path, shared_data):
    src = _write_scene(tmp_path / "naip.tif", _naip_crop(shared_data, 300), nodata=0)
    r = runner.invoke(app, ["inspect", str(src)])
    assert r.exit_code == 0, r.output
    for text in ("300 x 300 px, 3 band(s), uint8", "EPSG:32633", "nodata     0", "scale      255", "degradation clean",
                 "tiles", "--task auto"):
        assert text in r.output
    r = runner.invoke(app, ["inspect", str(src), "--json", "--map", str(tmp_path / "map.png")])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["width"] == 300 and d["bands"] == 3 and d["crs"] == "EPSG:32633" and d["scene"]["label"] in CLASSES
    assert set(d["scene"]["probabilities"]) == set(CLASSES) and abs(sum(d["scene"]["probabilities"].values()) - 1) < 1e-2
    assert len(d["map_labels"]) == 5 and all(v in CLASSES for row in d["map_labels"] for v in row)
    assert d["auto"]["method"] is None
    img = Image.open(tmp_path / "map.png")
    assert img.size[0] == 2 * 300 + 30 and img.size[1] > 300
    # The map half shows the tile colours: clean tiles are green.
    assert tuple(np.asarray(img)[150, 300 + 20 + 150]) == (46, 160, 67)


def test_inspect_errors_are_one_line(tmp_path, geotiff_factory):
    two_bands, _ = geotiff_factory("two.tif", bands=2)
    for args, needle in (([str(tmp_path / "missing.tif")], "not found"),
                         ([str(two_bands)], "--bands"),
                         ([str(two_bands), "--bands", "1,2"], "3 bands"),
                         ([str(two_bands), "--bands", "1,2,3"], "cannot select band 3"),
                         ([str(two_bands), "--map", str(tmp_path / "map.jpg")], ".png")):
        r = runner.invoke(app, ["inspect", *args])
        assert r.exit_code == 2, r.output
        assert needle in r.output and r.output.strip().count("\n") == 0


def test_restore_auto_writes_a_clean_scene_unchanged(tmp_path, shared_data):
    data = _naip_crop(shared_data, 200)
    src = _write_scene(tmp_path / "clean.tif", data, nodata=0, descriptions=("red", "green", "blue"))
    out = tmp_path / "out.tif"
    r = runner.invoke(app, ["restore", str(src), "-o", str(out), "--task", "auto", "-q"])
    assert r.exit_code == 0, r.output
    assert "[unchanged] (recognised as clean: written unchanged)" in r.output
    with rasterio.open(src) as a, rasterio.open(out) as b:
        assert np.array_equal(a.read(), b.read())
        assert (a.crs, a.transform, a.nodata, a.descriptions) == (b.crs, b.transform, b.nodata, b.descriptions)
    # A hazy version of the same ground goes to the haze default (dcp) and is changed.
    hazy = synthesize_haze(torch.from_numpy(data).float()[None] / 255, torch.Generator().manual_seed(2), "thick")
    hz = _write_scene(tmp_path / "hazy.tif", (hazy["input"][0].numpy() * 255).round().astype(np.uint8))
    r = runner.invoke(app, ["restore", str(hz), "-o", str(tmp_path / "dehazed.tif"), "--task", "auto", "-q"])
    assert r.exit_code == 0, r.output
    assert "[dcp] (recognised as haze (severity " in r.output and "restored with dcp, omega 0." in r.output
    with rasterio.open(hz) as a, rasterio.open(tmp_path / "dehazed.tif") as b:
        assert not np.array_equal(a.read(), b.read())


def test_batch_auto_records_each_decision(tmp_path, shared_data):
    from rsrestore.batch import REPORT_NAME, local_cluster, run_batch

    data = _naip_crop(shared_data, 160)
    folder = tmp_path / "in"
    folder.mkdir()
    _write_scene(folder / "clean.tif", data)
    hazy = synthesize_haze(torch.from_numpy(data).float()[None] / 255, torch.Generator().manual_seed(3), "thick")
    _write_scene(folder / "hazy.tif", (hazy["input"][0].numpy() * 255).round().astype(np.uint8))
    out = tmp_path / "out"
    cluster = local_cluster(workers=1)
    try:
        report = run_batch([folder], out, task="auto", scheduler=cluster.scheduler_address, progress=False)
    finally:
        cluster.close()
    assert report.count("done") == 2
    scenes = {Path(s["input"]).name: s for s in json.loads((out / REPORT_NAME).read_text())["scenes"]}
    assert scenes["clean.tif"]["decision"]["label"] == "clean" and scenes["clean.tif"]["method"] == "unchanged"
    assert scenes["hazy.tif"]["decision"]["label"] == "haze" and scenes["hazy.tif"]["method"] == "dcp"
    severity = scenes["hazy.tif"]["decision"]["severity"]
    assert scenes["hazy.tif"]["decision"]["options"] == {"omega": omega_for_severity(severity)}
    with rasterio.open(folder / "clean.tif") as a, rasterio.open(out / "clean.tif") as b:
        assert np.array_equal(a.read(), b.read())


def test_restore_auto_leaves_thick_cloud_unchanged_with_a_warning(tmp_path, shared_data):
    data = _naip_crop(shared_data)
    cloudy = synthesize_clouds(torch.from_numpy(data).float()[None] / 255, torch.Generator().manual_seed(0), "thick")
    src = _write_scene(tmp_path / "cloudy.tif", (cloudy["input"][0].numpy() * 255).round().astype(np.uint8))
    out = tmp_path / "out.tif"
    with pytest.warns(UserWarning, match="thick cloud: no cloud method restores it without SAR"):
        r = runner.invoke(app, ["restore", str(src), "-o", str(out), "--task", "auto", "-q"])
    assert r.exit_code == 0, r.output
    assert "[unchanged] (recognised as thick cloud" in r.output
    with rasterio.open(src) as a, rasterio.open(out) as b:
        assert np.array_equal(a.read(), b.read())


def test_inspect_json_is_strict_json_for_a_nan_nodata(geotiff_factory):
    src, _ = geotiff_factory("float.tif", bands=3, height=120, width=120, dtype="float32", nodata=float("nan"))

    def refuse(name):
        raise AssertionError(f"{name} is not JSON")

    r = runner.invoke(app, ["inspect", str(src), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output, parse_constant=refuse)["nodata"] == "nan"


def _hazy(data: np.ndarray, preset: str, seed: int) -> np.ndarray:
    """A synthetic hazy version of a uint8 (3, H, W) crop, in uint8."""
    x = torch.from_numpy(data).float()[None] / 255
    hazy = synthesize_haze(x, torch.Generator().manual_seed(seed), preset)["input"][0]
    return (hazy.numpy() * 255).round().astype(np.uint8)


def test_a_faint_haze_gets_a_smaller_omega_than_a_thick_one(shared_data):
    data = _naip_crop(shared_data, 128)
    moderate, thick = route_array(_hazy(data, "moderate", 1) / 255.0), route_array(_hazy(data, "thick", 1) / 255.0)
    assert moderate.method == thick.method == "dcp"
    assert moderate.severity < thick.severity and moderate.options["omega"] < thick.options["omega"]


def test_an_explicit_omega_wins_over_the_auto_strength(tmp_path, shared_data):
    from rsrestore.batch import RestoreOptions, Scene, restore_scene

    src = _write_scene(tmp_path / "hazy.tif", _hazy(_naip_crop(shared_data, 128), "moderate", 4))
    auto = restore_scene(Scene(src, tmp_path / "auto.tif"), RestoreOptions(method="auto", device="cpu"), resume=False)
    mine = RestoreOptions(method="auto", device="cpu", model_options=(("omega", 0.5),))
    explicit = restore_scene(Scene(src, tmp_path / "explicit.tif"), mine, resume=False)
    fixed = restore_scene(Scene(src, tmp_path / "fixed.tif"), RestoreOptions(method="dcp", device="cpu",
                                                                            model_options=(("omega", 0.5),)))
    assert auto.status == explicit.status == fixed.status == "done" and auto.method == explicit.method == "dcp"
    assert auto.decision["options"]["omega"] > 0.5  # the severity found asks for more than the omega given
    with rasterio.open(tmp_path / "explicit.tif") as a, rasterio.open(tmp_path / "fixed.tif") as b, \
            rasterio.open(tmp_path / "auto.tif") as c:
        assert np.array_equal(a.read(), b.read()) and not np.array_equal(a.read(), c.read())


def test_python_restore_auto_leaves_a_clean_scene_and_restores_a_hazy_one(tmp_path, shared_data):
    data = _naip_crop(shared_data, 128)
    out = rsrestore.restore(data, task="auto")
    assert out is not data and out.dtype == data.dtype and np.array_equal(out, data)
    tensor = torch.from_numpy(data.astype(np.float32) / 255)
    assert torch.equal(rsrestore.restore(tensor, task="auto"), tensor)
    # A file: copied unchanged, metadata and all.
    src = _write_scene(tmp_path / "clean.tif", data, nodata=0)
    assert rsrestore.restore(src, output=tmp_path / "out.tif", task="auto") == tmp_path / "out.tif"
    assert (tmp_path / "out.tif").read_bytes() == src.read_bytes()
    # A hazy scene: the same decision as the CLI's, restored by dcp at the omega of its severity.
    hazy = _hazy(data, "thick", 2)
    decision = route_array(hazy / 255.0)
    assert decision.method == "dcp"
    expected = rsrestore.restore(hazy, method="dcp", model_options=decision.options)
    assert np.array_equal(rsrestore.restore(hazy, task="auto"), expected) and not np.array_equal(expected, hazy)
