"""Invalid pixels are filled from the nearest valid pixel before a model sees them: no edge along the boundary."""

import numpy as np
import torch
from torch import nn

from rsrestore.tiling import fill_invalid, restore_array


class EdgeResponse(nn.Module):
    """|Laplacian| of each band: zero on flat areas, large at an edge (as a network's early layers respond)."""

    halo = 2

    def forward(self, x, sar=None):
        kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).repeat(x.shape[1], 1, 1, 1)
        return nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), kernel,
                                    groups=x.shape[1]).abs()


def test_fill_keeps_valid_pixels_and_copies_the_nearest_valid_one():
    rng = np.random.default_rng(0)
    image = rng.random((2, 9, 12), dtype=np.float32)
    mask = np.ones((9, 12), bool)
    mask[:, :4] = False  # a nodata collar on the left: each of its pixels takes column 4 of its own row
    mask[7:, 10:] = False  # and a corner
    image[:, ~mask] = np.nan
    filled = fill_invalid(image, mask, fallback=np.zeros(2, np.float32))
    np.testing.assert_array_equal(filled[:, mask], image[:, mask])
    np.testing.assert_array_equal(filled[:, :, :4], np.repeat(image[:, :, 4:5], 4, axis=2))
    np.testing.assert_array_equal(filled[:, 7, 11], image[:, 6, 11])  # nearest valid: one up
    np.testing.assert_array_equal(filled[:, 8, 10], image[:, 8, 9])  # one left
    assert np.isfinite(filled).all()
    all_valid = image[:, :, 4:10]
    assert fill_invalid(all_valid, mask[:, 4:10], np.zeros(2)) is all_valid  # nothing to fill: no copy
    empty = fill_invalid(image[:, :, :4], mask[:, :4], fallback=np.array([0.25, 0.75], np.float32))
    np.testing.assert_array_equal(empty, np.broadcast_to(np.array([0.25, 0.75])[:, None, None], (2, 9, 4)))


def test_model_sees_no_edge_at_the_valid_boundary_whatever_nodata_holds():
    # Valid pixels: a flat 0.2 field beside the nodata collar, a bright 0.9 field further right, so the scene's mean
    # valid colour (a constant fill) differs from the pixels along the boundary.
    image = np.full((3, 64, 96), 0.2, np.float32)
    image[:, :, 64:] = 0.9
    mask = np.ones((64, 96), bool)
    mask[:, :20] = False
    outputs = []
    for nodata_value in (0.0, 1.0, np.nan):
        held = image.copy()
        held[:, ~mask] = nodata_value
        outputs.append(restore_array(EdgeResponse(), held, mask=mask, tile=48, overlap=8))
    for other in outputs[1:]:
        np.testing.assert_array_equal(other[:, mask], outputs[0][:, mask])
    boundary = outputs[0][:, :, 20:23]  # the first valid columns
    assert np.abs(boundary).max() < 1e-6  # no response: the fill continued the flat field across the boundary
