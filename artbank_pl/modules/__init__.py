"""Pure ``nn.Module`` building blocks (torch only, no Lightning)."""

from artbank_pl.modules.prompt_bank import ImplicitStylePromptBank
from artbank_pl.modules.ssam import SpatialStatisticalSelfAttention, build_bank_attention

__all__ = ["ImplicitStylePromptBank", "SpatialStatisticalSelfAttention", "build_bank_attention"]
