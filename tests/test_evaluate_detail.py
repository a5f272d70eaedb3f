"""The evaluator's detail ratios: after the existing scores, exact on the input row, marked "->1" in the table."""

import json

import torch
from test_evaluate import hazy_pairs  # noqa: F401  (the fixture: three pairs hazed at transmission 0.55)

from rsrestore.evaluate import evaluate, score_image

DETAIL_KEYS = ["gradient_ratio", "checkerboard_ratio", "gradient_ratio_input", "checkerboard_ratio_input"]


def test_evaluator_writes_detail_ratios_after_the_existing_scores(hazy_pairs, tmp_path):  # noqa: F811
    out = tmp_path / "report"
    results = evaluate(["input", "dcp"], "paired", hazy_pairs, out, progress=False, pictures=0, limit=1)
    inp, dcp = results["input"].per_image[0], results["dcp"].per_image[0]
    assert list(inp)[:6] == ["name", "psnr", "ssim", "ciede2000", "mae", "sam"]
    assert list(inp)[6:] == DETAIL_KEYS
    # The input against itself: exactly 1; against the clean reference at transmission 0.55: ~0.3 of its energy.
    assert inp["gradient_ratio_input"] == 1.0 and inp["checkerboard_ratio_input"] == 1.0
    assert 0.2 < inp["gradient_ratio"] < 0.45
    assert dcp["gradient_ratio_input"] > 2.0  # dehazing restores contrast: much more detail than the hazy input
    table = (out / "table.md").read_text()
    for header in ("gradient_ratio →1", "checkerboard_ratio →1", "gradient_ratio_input ↑", "checkerboard_ratio_input →1"):
        assert header in table
    saved = json.loads((out / "metrics.json").read_text())
    assert "checkerboard_ratio" in saved["conventions"] and saved["methods"]["dcp"]["mean"]["gradient_ratio_input"] > 2


def test_score_image_detail_ratios_need_a_13_pixel_window():
    small = torch.rand(1, 3, 12, 40)
    assert not set(DETAIL_KEYS) & set(score_image(small, small, None, False, inp=small))
    big = torch.rand(1, 3, 16, 40)
    scores = score_image(big, big, None, False)
    assert scores["gradient_ratio"] == 1.0 and "gradient_ratio_input" not in scores
