import json

import numpy as np
import rasterio
from typer.testing import CliRunner

from _one_line_errors import user_error as _user_error  # the name other test modules import from here
from rsrestore.cli import app

runner = CliRunner()


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def test_help_has_examples():
    r = _ok(runner.invoke(app, ["restore", "--help"]))
    assert "rsrestore restore scene.tif -o restored.tif" in r.output
    assert "--tile" in r.output and "--bands" in r.output and "--device" in r.output


def test_models_json_lists_required_fields():
    r = _ok(runner.invoke(app, ["models", "--json"]))
    rows = json.loads(r.output)
    names = {row["name"] for row in rows}
    assert {"dcp", "rop", "aosrnet", "rsdehamba", "sarcr", "dsen2cr"} <= names
    for row in rows:
        assert {"name", "task", "bands", "weights"} <= set(row)
    assert next(r for r in rows if r["name"] == "dcp")["task"] == "haze"


def test_restore_default_method_keeps_georeferencing(geotiff_factory, tmp_path):
    src, data = geotiff_factory(height=80, width=90)
    out = tmp_path / "restored.tif"
    _ok(runner.invoke(app, ["restore", str(src), "-o", str(out), "-q"]))
    with rasterio.open(src) as a, rasterio.open(out) as b:
        assert (a.crs, a.transform, a.count, a.dtypes) == (b.crs, b.transform, b.count, b.dtypes)
        assert not np.array_equal(a.read(), b.read())


def test_restore_many_inputs_and_folder_into_output_folder(geotiff_factory, tmp_path):
    a, _ = geotiff_factory("a.tif", height=40, width=40)
    folder = tmp_path / "scenes"
    folder.mkdir()
    geotiff_factory("scenes/b.tif", height=30, width=50)
    png = tmp_path / "c.png"
    with rasterio.open(png, "w", driver="PNG", dtype="uint8", count=3, height=20, width=30) as ds:
        ds.write(np.full((3, 20, 30), 120, np.uint8))
    out = tmp_path / "out"
    _ok(runner.invoke(app, ["restore", str(a), str(png), str(folder), "-o", str(out), "--method", "dcp",
                            "--tile", "32", "--overlap", "8", "-q"]))
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".aux.xml")) == ["a.tif", "b.tif", "c.png"]


def test_clear_errors(geotiff_factory, tmp_path):
    src, _ = geotiff_factory()
    _user_error(runner.invoke(app, ["restore", str(tmp_path / "missing.tif"), "-o", str(tmp_path / "o.tif")]),
                "not found")
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 64)
    _user_error(runner.invoke(app, ["restore", str(bad), "-o", str(tmp_path / "o.tif")]), "cannot read")
    i32, _ = geotiff_factory("int32.tif", dtype="int32")
    _user_error(runner.invoke(app, ["restore", str(i32), "-o", str(tmp_path / "o.tif")]), "unsupported data type")
    _user_error(runner.invoke(app, ["restore", str(src), "-o", str(src)]), "is the input itself")
    existing = tmp_path / "exists.tif"
    existing.write_bytes(b"x")
    _user_error(runner.invoke(app, ["restore", str(src), "-o", str(existing)]), "--overwrite")
    _user_error(runner.invoke(app, ["restore", str(src), "-o", str(tmp_path / "o.tif"), "--bands", "9"]), "band")
    _user_error(runner.invoke(app, ["restore", str(src), "-o", str(tmp_path / "o.tif"), "--method", "nope"]),
                "unknown method")
    _user_error(runner.invoke(app, ["restore", str(src), "-o", str(tmp_path / "o.tif"), "--method", "aosrnet",
                                    "--weights", str(tmp_path / "missing.safetensors")]), "weights file not found")


def test_band_count_the_method_cannot_take(geotiff_factory, tmp_path):
    import torch
    from safetensors.torch import save_file

    from rsrestore import load_model

    model = load_model("aosrnet", weights=None, config={"width": 8})
    w = tmp_path / "aosr.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(w))
    src4, _ = geotiff_factory("four.tif", bands=4)
    # The saved weights are for width 8: a default-width model does not fit them -> a clear error too.
    _user_error(runner.invoke(app, ["restore", str(src4), "-o", str(tmp_path / "o.tif"), "--method", "aosrnet",
                                    "--weights", str(w)]), "weights do not fit")
    torch.manual_seed(0)
    default_model = load_model("aosrnet", weights=None)
    w2 = tmp_path / "aosr_default.safetensors"
    save_file({k: v.contiguous() for k, v in default_model.state_dict().items()}, str(w2))
    _user_error(runner.invoke(app, ["restore", str(src4), "-o", str(tmp_path / "o.tif"), "--method", "aosrnet",
                                    "--weights", str(w2)]), "takes 3 band")


def test_learned_method_without_bundled_weights_is_a_clear_error(monkeypatch, geotiff_factory, tmp_path):
    import dataclasses

    from rsrestore.models import registry

    spec = registry.MODELS["aosrnet"]
    monkeypatch.setitem(registry.MODELS, "aosrnet", dataclasses.replace(spec, weights="absent.safetensors"))
    src, _ = geotiff_factory()
    _user_error(runner.invoke(app, ["restore", str(src), "-o", str(tmp_path / "o.tif"), "--method", "aosrnet"]),
                "no bundled weights")
