"""LightningModules on a frozen Stable Diffusion."""

from artbank_pl.tasks.base import FrozenDiffusionTask
from artbank_pl.tasks.prompt_bank import PromptBankTask

__all__ = ["FrozenDiffusionTask", "PromptBankTask"]
