"""rsrestore: restore remote-sensing images degraded by haze, sand-dust and clouds.

The small public API::

    import rsrestore
    rsrestore.restore("hazy.tif", output="restored.tif")            # default method for haze, tiled, georeferenced
    restored = rsrestore.restore(array_chw, method="dcp")           # in memory: float (C, H, W) in [0, 1]
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
):
    """Restore a raster file (written to `output`; returns its path) or a float (C, H, W) array (returns an array).

    `method` defaults to the best method for `task` that works out of the box (see `rsrestore models`).
    """
    import numpy as np
    import torch

    from .models.registry import accepted_bands, default_method, get_spec
    from .tiling import restore_array, restore_file

    name = method or default_method(task)
    spec = get_spec(name)
    model = load_model(name, weights=weights, device=device)
    if isinstance(path_or_array, (str, Path)):
        if output is None:
            raise ValueError("restoring a file needs an output path: restore(path, output=...)")
        return restore_file(model, path_or_array, output, bands=bands, scale=scale, sar=sar, align=align, tile=tile,
                            overlap=overlap, batch_size=batch_size, device=device, amp=amp, overwrite=overwrite,
                            progress=progress, expected_bands=accepted_bands(spec, model))
    image = path_or_array.detach().cpu().numpy() if isinstance(path_or_array, torch.Tensor) else np.asarray(path_or_array)
    bands = accepted_bands(spec, model)
    if bands and image.shape[0] not in bands:
        raise ValueError(f"{name} takes {' or '.join(map(str, bands))} band(s); the array has {image.shape[0]}")
    return restore_array(model, image, sar=sar, tile=tile, overlap=overlap, batch_size=batch_size, device=device,
                         amp=amp, progress=progress)
