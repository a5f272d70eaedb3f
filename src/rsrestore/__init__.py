"""rsrestore: restore remote-sensing images degraded by haze, sand-dust and clouds.

The small public API::

    import rsrestore
    rsrestore.restore("hazy.tif", output="restored.tif")            # default method for haze, tiled, georeferenced
    restored = rsrestore.restore(array_chw, method="dcp")           # in memory: (C, H, W), see `restore`
    rsrestore.restore("scene.tif", output="out.tif", task="auto")    # recognised first; a clean scene is copied
    model = rsrestore.load_model("dcp")                              # an nn.Module
    rsrestore.list_models()                                          # what `rsrestore models --json` prints
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

__all__ = ["restore", "load_model", "list_models", "__version__"]


def load_model(name: str, weights="default", config=None, device="cpu", **overrides):
    """Build method `name` with weights "default" (bundled), a path, or None (untrained); returns an nn.Module."""
    from .models.registry import load_model as _load

    return _load(name, weights=weights, config=config, device=device, **overrides)


def list_models() -> list[dict]:
    from .models.registry import describe_models

    return describe_models()


def restore(
    path_or_array,
    method: str | None = None,
    *,
    task: str = "haze",
    output: str | Path | None = None,
    weights="default",
    bands=None,
    scale: float | None = None,
    sar=None,
    align: bool = False,
    tile: int = 512,
    overlap: int = 32,
    batch_size: int = 4,
    device: str = "cpu",
    amp: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    model_options: dict | None = None,
    max_memory: float | None = None,
):
    """Restore a raster file (written to `output`; returns its path) or a (C, H, W) array (returns an array).

    An array is a NumPy array or a torch Tensor (a Tensor comes back as a Tensor on the same device). Float arrays hold
    values in [0, 1]; integer arrays (uint8, uint16, int16) are file values, divided by `scale` (default: the dtype's,
    as for files: 255, 10000, 10000) and returned in the same dtype. NaN and infinite pixels are left as they were.
    `method` defaults to the default method of `task` (`registry.DEFAULT_METHODS`; `rsrestore models` marks it).
    `model_options` override fields of the method's config (e.g. ``{"omega": 0.8}`` for dcp). With `max_memory` (MB),
    the process stays under it: fewer than `batch_size` tiles per batch, and smaller tiles, as a probe of the model's
    memory finds they must be (``rsrestore restore --max-memory``).

    ``task="auto"`` (without `method`) decides as ``rsrestore restore --task auto`` does (`rsrestore.recognise`): a
    scene recognised as clean, or as thick cloud (with a warning), comes back unchanged (a file is copied to `output`,
    an array returned as a copy); any other is restored by the method picked, at the strength its severity calls for
    (`model_options` win over it).
    """
    from .models.registry import accepted_bands, default_method, get_spec
    from .raster import RasterError, check_scale
    from .tiling import restore_file

    is_file = isinstance(path_or_array, (str, Path))
    if is_file and output is None:
        raise ValueError("restoring a file needs an output path: restore(path, output=...)")
    scale = check_scale(scale)
    options = dict(model_options or {})
    if method is None and task == "auto":
        from .recognise import route_file

        if is_file:
            decision = route_file(path_or_array, output, bands, scale, overwrite)
            if decision.method is None:
                return Path(output)
        else:
            decision = _route_array(path_or_array, bands, scale)
            if decision.method is None:
                import numpy as np

                return path_or_array.clone() if hasattr(path_or_array, "clone") else np.array(path_or_array)
        method, options = decision.method, {**decision.options, **options}
    name = method or default_method(task)
    spec = get_spec(name)
    if sar is not None and not spec.needs_sar:
        raise RasterError(f"{name} takes no SAR scene; drop sar= (CLI: --sar)")
    model = load_model(name, weights=weights, device=device, **options)
    if is_file:
        return restore_file(model, path_or_array, output, bands=bands, scale=scale, sar=sar, align=align, tile=tile,
                            overlap=overlap, batch_size=batch_size, device=device, amp=amp, overwrite=overwrite,
                            progress=progress, expected_bands=accepted_bands(spec, model), max_memory=max_memory)
    bands = accepted_bands(spec, model)
    return _restore_in_memory(model, name, bands, path_or_array, scale, sar=sar, tile=tile, overlap=overlap,
                              batch_size=batch_size, device=device, amp=amp, progress=progress, max_memory=max_memory)


def _route_array(array, bands, scale):
    """The `task="auto"` decision for an array, its values scaled to [0, 1] as `_restore_in_memory` scales them."""
    import numpy as np

    from .raster import default_scale, to_unit
    from .recognise import route_array, warn_unchanged

    image = array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)
    if image.ndim != 3:
        raise ValueError(f"expected a (C, H, W) array, got shape {image.shape}")
    if np.issubdtype(image.dtype, np.integer):
        scale = scale or default_scale(str(image.dtype))
    decision = route_array(to_unit(image, scale or 1.0), bands)
    warn_unchanged(decision, "the array")
    return decision


def _restore_in_memory(model, name, bands, array, scale, **options):
    """`restore` of an array: integer file values are scaled like a file's, and the result has the input's type."""
    import numpy as np
    import torch

    from .raster import default_scale, from_unit, off_zero, to_unit
    from .tiling import restore_array

    tensor = array if isinstance(array, torch.Tensor) else None
    image = tensor.detach().cpu().numpy() if tensor is not None else np.asarray(array)
    if image.ndim != 3:
        raise ValueError(f"expected a (C, H, W) array, got shape {image.shape}")
    if bands and image.shape[0] not in bands:
        raise ValueError(f"{name} takes {' or '.join(map(str, bands))} band(s); the array has {image.shape[0]}")
    dtype = image.dtype
    integer = np.issubdtype(dtype, np.integer)
    if integer:
        scale = scale or default_scale(str(dtype))  # an unsupported integer type is refused here, in one line
    else:
        scale = scale or 1.0
        dtype = dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float32)
    out = restore_array(model, to_unit(image, scale), **options)
    out = off_zero(from_unit(out, str(dtype), scale), image)
    if tensor is not None:
        return torch.from_numpy(np.ascontiguousarray(out)).to(tensor.device)
    return out
