"""LightningModules on a frozen Stable Diffusion."""

from artbank_pl.tasks.base import FrozenDiffusionTask
from artbank_pl.tasks.evaluation import EvaluateTask
from artbank_pl.tasks.inverter import InverterTask
from artbank_pl.tasks.prompt_bank import PromptBankTask
from artbank_pl.tasks.stylize import StylizeTask

__all__ = [
    "EvaluateTask",
    "FrozenDiffusionTask",
    "InverterTask",
    "PromptBankTask",
    "StylizeTask",
]
