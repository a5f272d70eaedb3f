"""ASPDiff (Zhang et al., IEEE TGRS 2022): atmospheric prior estimation (APEM), prior-embedded diffusion, refinement."""

from .apem import APEM, APEMConfig, Priors, apem_loss

__all__ = ["APEM", "APEMConfig", "Priors", "apem_loss"]
