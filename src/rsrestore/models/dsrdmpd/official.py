"""Weights of the authors' DS-RDMPD code (``Aaronwangz/DS-RDMPD``) renamed for :class:`~.restorer.DSRDMPD`.

The networks here compute what the authors' ``U_Net`` and ``UnetRes`` compute, to float rounding, with other module
names. :func:`convert_official` maps
their state dicts onto ours, so their released checkpoints (a stage-1 ``generator_epoch_*.pth`` and a stage-2
``model-*.pt``, whose ``"model"`` entry holds the diffusion wrapper's state) can be used here once saved as
safetensors::

    import torch
    from safetensors.torch import save_file
    from rsrestore.models.dsrdmpd.official import convert_official

    stage1 = torch.load("generator_epoch_91.pth", map_location="cpu", weights_only=True)
    stage2 = torch.load("model-156000.pt", map_location="cpu", weights_only=True)["model"]
    save_file(convert_official(stage1, stage2), "dsrdmpd.safetensors")

(``weights_only=True`` refuses pickled objects other than tensors; load files only from sources you trust.)
"""

from __future__ import annotations

import re

from torch import Tensor

__all__ = ["convert_official"]

# (pattern, replacement) applied in order to each key of the authors' U_Net; decoder level i of ours is their
# level 5 - i (Up5 / Up_conv5 / eff1 / adjust_channel4 are our decoder.0).
_STAGE1_RULES = [
    (r"^Conv(\d)\.", lambda m: f"encoder.{int(m.group(1)) - 1}."),
    (r"^Up(\d)\.up\.1\.", lambda m: f"decoder.{5 - int(m.group(1))}.up.0."),
    (r"^Up(\d)\.up\.2\.", lambda m: f"decoder.{5 - int(m.group(1))}.up.1."),
    (r"^Up_conv(\d)\.", lambda m: f"decoder.{5 - int(m.group(1))}.fuse."),
    (r"^eff(\d)\.", lambda m: f"decoder.{int(m.group(1)) - 1}.ess."),
    (r"^adjust_channel(\d)\.", lambda m: f"decoder.{4 - int(m.group(1))}.adjust."),
    (r"^Final_conv\.", "head."),
    (r"EAG\.grouped_conv_g\.", "gate.from_skip."),
    (r"EAG\.grouped_conv_x\.", "gate.from_up."),
    (r"EAG\.psi\.", "gate.psi."),
    (r"ECA\.conv", "eca.conv"),
    (r"SE\.cSE\.conv1\.", "scse.channel_squeeze.0."),
    (r"SE\.cSE\.conv2\.", "scse.channel_squeeze.2."),
    (r"SE\.cSE\.residual\.", "scse.channel_residual."),
    (r"SE\.sSE\.conv1\.", "scse.spatial_squeeze.0."),
    (r"SE\.sSE\.conv2\.", "scse.spatial_squeeze.2."),
    (r"SE\.sSE\.residual\.", "scse.spatial_residual."),
    (r"SE\.residual\.", "scse.residual."),
    (r"SA\.conv", "spatial.conv"),
    (r"^neck\.shallow\.0\.", "neck.describe.0.0."),
    (r"^neck\.shallow\.1\.", "neck.describe.0.1."),
    (r"^neck\.shallow\.3\.", "neck.describe.1.0."),
    (r"^neck\.shallow\.4\.", "neck.describe.1.1."),
    (r"^neck\.MLP_A\.1\.", "neck.mlp_a.0."),
    (r"^neck\.MLP_A\.3\.", "neck.mlp_a.2."),
    (r"^neck\.MLP_T\.1\.", "neck.mlp_t.0."),
    (r"^neck\.MLP_T\.3\.", "neck.mlp_t.2."),
    # inside an MSCA block
    (r"\.conv1\.", ".body.0.0."),
    (r"\.bn1\.", ".body.0.1."),
    (r"\.conv2\.", ".body.1.0."),
    (r"\.bn2\.", ".body.1.1."),
    (r"attention\.inc\.branch1\.", "body.2.branch3."),
    (r"attention\.inc\.branch2\.", "body.2.branch5."),
    (r"attention\.inc\.branch3\.", "body.2.branch_pool."),
    (r"attention\.inc\.branch4\.", "body.2.branch1."),
    (r"attention\.adjust_channel\.", "body.2.merge."),
    (r"attention\.cam\.module\.2\.", "body.2.attention.mlp.0."),
    (r"attention\.cam\.module\.4\.", "body.2.attention.mlp.2."),
    (r"residual_conv\.", "residual."),
]

_LEVELS = r"^(downs|ups_res|ups_skip)\.(\d+)\."
_STAGE2_RULES = [
    (r"^ups_no_skip\.", "ups_res."),
    (r"^ups\.", "ups_skip."),
    (r"^final_res_block_1\.", "final_res."),
    (r"^final_conv_1\.", "out_res."),
    (r"^final_res_block_2\.", "final_skip."),
    (r"^final_conv_2\.", "out_skip."),
    (_LEVELS + r"0\.", r"\1.\2.block1."),
    (_LEVELS + r"1\.", r"\1.\2.block2."),
    (_LEVELS + r"2\.fn\.fn\.", r"\1.\2.attn.fn."),
    (_LEVELS + r"2\.fn\.norm\.g$", r"\1.\2.attn.norm.weight"),
    (_LEVELS + r"3\.", r"\1.\2.resample."),
    (r"^mid_attn\.fn\.fn\.", "mid_attn.fn."),
    (r"^mid_attn\.fn\.norm\.g$", "mid_attn.norm.weight"),
    (r"to_out\.1\.g$", "to_out.1.weight"),
    (r"\.mlp\.1\.", ".time.1."),
    (r"\.res_conv\.", ".shortcut."),
]


def _rename(key: str, rules) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def _stage1(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for k, v in state.items():
        nk = _rename(k, _STAGE1_RULES)
        if nk.startswith("neck.mlp_"):
            v = v.reshape(v.shape[0], v.shape[1])  # 1x1 convolutions on the pooled vector are linear layers here
        out["stage1." + nk] = v
    return out


def _stage2(state: dict[str, Tensor]) -> dict[str, Tensor]:
    if any(k.startswith("model.") for k in state):  # the diffusion wrapper's state: the network sits under "model."
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    out = {}
    for k, v in state.items():
        nk = _rename(k, _STAGE2_RULES)
        if k.endswith(".g"):
            v = v.reshape(-1)  # their gain is (1, C, 1, 1); our LayerNorm2d also has a bias, set to zero
            out["stage2." + nk[: -len("weight")] + "bias"] = v.new_zeros(v.shape)
        out["stage2." + nk] = v
    return out


def convert_official(stage1: dict[str, Tensor] | None = None, stage2: dict[str, Tensor] | None = None
                     ) -> dict[str, Tensor]:
    """State dict for :class:`~.restorer.DSRDMPD` from the authors' ``U_Net`` and/or ``UnetRes`` (or
    ``ResidualDiffusion``) state dicts. Load it with ``strict=False`` when only one stage is given."""
    out: dict[str, Tensor] = {}
    if stage1 is not None:
        out.update(_stage1(stage1))
    if stage2 is not None:
        out.update(_stage2(stage2))
    return out
