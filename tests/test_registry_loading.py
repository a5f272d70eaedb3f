"""Loading weights through the CLI: damaged, renamed or unsafe files, side-car configs that do not fit, devices that
are not there, and weights given to a method that takes none. Each is one line and exit status 2, and nothing is
allocated for a config before it is known to fit."""

import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from _one_line_errors import user_error
from rsrestore import load_model
from rsrestore.cli import app
from rsrestore.models.registry import ModelError, resolve_device, weights_shapes

runner = CliRunner()


@pytest.fixture
def small_weights(tmp_path):
    """aosrnet weights of width 8 (the default is wider), saved as safetensors."""
    model = load_model("aosrnet", weights=None, config={"width": 8})
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "w8.safetensors"
    save_file(state, str(path))
    return path, state


def _restore(scene, out, *extra):
    return runner.invoke(app, ["restore", str(scene), "-o", str(out), "-q", *extra])


def test_truncated_safetensors(small_weights, geotiff_factory, tmp_path):
    path, _ = small_weights
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    src, _ = geotiff_factory()
    out = tmp_path / "o.tif"
    user_error(_restore(src, out, "--method", "aosrnet", "--weights", str(truncated)),
                "cut.safetensors", "not a valid safetensors file", "truncated")
    assert not out.exists()


def test_pickle_renamed_safetensors_says_what_it_is(small_weights, geotiff_factory, tmp_path):
    _, state = small_weights
    renamed = tmp_path / "ckpt.safetensors"
    torch.save(state, renamed)
    src, _ = geotiff_factory()
    user_error(_restore(src, tmp_path / "o.tif", "--method", "aosrnet", "--weights", str(renamed)),
                "ckpt.safetensors", "not a safetensors file", "PyTorch checkpoint", ".pth")


def test_checkpoint_with_python_objects_points_to_safetensors_not_to_unsafe_loading(geotiff_factory, tmp_path):
    unsafe = tmp_path / "full.pth"
    torch.save({"model": object()}, unsafe)
    src, _ = geotiff_factory()
    line = user_error(_restore(src, tmp_path / "o.tif", "--method", "aosrnet", "--weights", str(unsafe)),
                       "full.pth", "safetensors")
    assert "weights_only" not in line and "trust the source" not in line


def test_sidecar_with_a_huge_width_is_refused_before_allocating(small_weights, geotiff_factory, tmp_path):
    path, _ = small_weights
    path.with_suffix(".json").write_text(json.dumps({"config": {"width": 10_000_000}}))
    src, _ = geotiff_factory()
    # Building a width-1e7 model would try to allocate petabytes ("not enough memory"); the header says first that
    # the weights are of width 8.
    user_error(_restore(src, tmp_path / "o.tif", "--method", "aosrnet", "--weights", str(path)),
                "weights do not fit aosrnet", "(8,) vs (10000000,)", "w8.json")


def test_absurd_config_without_weights_is_refused_by_its_size():
    with pytest.raises(ModelError, match="not enough memory for aosrnet"):
        load_model("aosrnet", weights=None, config={"width": 10_000_000})


def test_sidecar_value_of_the_wrong_type(small_weights, geotiff_factory, tmp_path):
    path, _ = small_weights
    path.with_suffix(".json").write_text(json.dumps({"config": {"width": "wide"}}))
    src, _ = geotiff_factory()
    user_error(_restore(src, tmp_path / "o.tif", "--method", "aosrnet", "--weights", str(path)),
                "'width'", "int", "'wide'", "w8.json")


def test_sidecar_that_fits_loads(small_weights, geotiff_factory, tmp_path):
    path, state = small_weights
    path.with_suffix(".json").write_text(json.dumps({"config": {"width": 8}}))
    model = load_model("aosrnet", weights=path)
    assert torch.equal(model.state_dict()["conv1.0.bias"], state["conv1.0.bias"])
    assert weights_shapes(path)["conv1.0.bias"] == (8,)


def test_weights_for_a_training_free_method(geotiff_factory, tmp_path):
    src, _ = geotiff_factory()
    out = tmp_path / "o.tif"
    user_error(_restore(src, out, "--method", "dcp", "--weights", "w.safetensors"), "dcp", "takes no weights")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(geotiff_factory, tmp_path):
    src, _ = geotiff_factory()
    out = tmp_path / "o.tif"
    user_error(_restore(src, out, "--method", "dcp", "--device", "cuda"), "CUDA is not available", "cpu")
    assert not out.exists()
    with pytest.raises(ModelError, match="CUDA is not available"):
        load_model("dcp", device="cuda:0")


def test_device_names():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelError, match="unknown device 'gpu'"):
        resolve_device("gpu")


def test_gpu_index_beyond_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == "cuda:0" and resolve_device("auto") == "cuda"
    with pytest.raises(ModelError, match=r"1 CUDA device\(s\) \(cuda:0 to cuda:0\)"):
        resolve_device("cuda:3")
