"""DS-RDMPD (Zhou et al., IEEE TGRS 2025): stage 1 MCESS-UNet, stage 2 residual diffusion with a two-decoder U-Net."""

from .mcess_unet import MCESSUNet, MCESSUNetConfig
from .restorer import DSRDMPD, DSRDMPDConfig
from .unetres import UNetRes, UNetResConfig

__all__ = ["DSRDMPD", "DSRDMPDConfig", "MCESSUNet", "MCESSUNetConfig", "UNetRes", "UNetResConfig"]
