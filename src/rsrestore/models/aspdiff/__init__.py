"""ASPDiff (Zhang et al., IEEE TGRS 2022): atmospheric prior estimation (APEM), prior-embedded diffusion, refinement."""

from .apem import APEM, APEMConfig, Priors, apem_loss
from .dape import DAPE, PriorUNet
from .harm import HARM, FrequencyChannelAttention, simam
from .restorer import ASPDiff, ASPDiffConfig

__all__ = ["APEM", "APEMConfig", "Priors", "apem_loss", "ASPDiff", "ASPDiffConfig", "DAPE", "PriorUNet", "HARM",
           "FrequencyChannelAttention", "simam"]
