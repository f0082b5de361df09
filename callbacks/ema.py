"""An exponential moving average of the trainable parameters only (the bank, the inverter).

Lightning's ``EMAWeightAveraging`` deep-copies the whole LightningModule, frozen Stable
Diffusion included (gigabytes, in every checkpoint); the frozen parts never change, so only
the trainables need an average.
"""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from artbank_pl.errors import ConfigError


class TrainablesEMA(Callback):
    """Keep an EMA of the module's trainable parameters; validate and finish with it.

    After each optimizer step, ``avg <- d * avg + (1 - d) * param`` (in float32, on the
    parameters' device, with one fused op and no host-device sync). With ``warmup`` the
    decay of update ``n`` is ``min(decay, (1 + n) / (10 + n))``, so early averages are not
    dominated by the initial weights. Validation runs with the averaged weights (the raw
    ones are put back after it), and at the end of training the averaged weights are
    copied into the module, so ``EmbeddingExport``'s final export, ``artbank export`` of a
    later checkpoint and ``load_from_checkpoint`` see them. The average is saved in
    checkpoints and restored on resume.

    Args:
        decay: the EMA decay ``d`` in ``[0, 1)``.
        warmup: ramp the decay up over the first updates.
        every_n_steps: update every N optimizer steps.
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True, every_n_steps: int = 1):
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"TrainablesEMA decay must be in [0, 1), got {decay}")
        if every_n_steps < 1:
            raise ConfigError(f"TrainablesEMA every_n_steps must be >= 1, got {every_n_steps}")
        self.decay = decay
        self.warmup = warmup
        self.every_n_steps = every_n_steps
        self.updates = 0
        self.names: list[str] = []
        self.average: list[torch.Tensor] | None = None
        self.params: list[torch.nn.Parameter] = []
        self._loaded: dict[str, torch.Tensor] | None = None
        self._swapped = False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the average at the current weights, or at the checkpoint's average.

        The trainables are listed once here: walking the module's parameters each step
        would visit every frozen Stable Diffusion tensor too.
        """
        named = {n: p for n, p in pl_module.named_parameters() if p.requires_grad}
        self.names, self.params = list(named), list(named.values())
        if self._loaded is None:
            self.average = [p.detach().float().clone() for p in self.params]
            return
        loaded, self._loaded = self._loaded, None
        if list(loaded) != self.names or any(loaded[n].shape != p.shape for n, p in named.items()):
            raise ConfigError(
                "the checkpoint's TrainablesEMA average does not match this model's "
                "trainable parameters: resume with the same model options"
            )
        self.average = [loaded[n].to(p.device, torch.float32) for n, p in named.items()]

    def current_decay(self) -> float:
        """Return the decay of the next update."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Fold the weights of this optimizer step into the average."""
        if trainer.fit_loop._should_accumulate() or trainer.global_step % self.every_n_steps:
            return
        params = [p.detach().float() for p in self.params]
        torch._foreach_lerp_(self.average, params, 1.0 - self.current_decay())
        self.updates += 1

    def _swap(self) -> None:
        """Exchange the module's trainables and the average (an involution)."""
        with torch.no_grad():
            for param, average in zip(self.params, self.average, strict=True):
                raw = param.detach().float().clone()
                param.copy_(average)
                average.copy_(raw)
        self._swapped = not self._swapped

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Validate with the averaged weights."""
        if self.average is not None and not self._swapped:
            self._swap()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Put the raw weights back for training."""
        if self._swapped:
            self._swap()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Leave the module with the averaged weights (before ``on_fit_end`` exports)."""
        if self.average is None:
            return
        with torch.no_grad():
            for param, average in zip(self.params, self.average, strict=True):
                param.copy_(average)

    def state_dict(self) -> dict:
        """Return the average by parameter name (the raw weights are in the module state)."""
        average = None
        if self.average is not None:
            average = {n: t.detach().cpu() for n, t in zip(self.names, self.average, strict=True)}
        return {"updates": self.updates, "average": average}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the average at ``on_fit_start``, once the module's parameters are known."""
        self.updates = int(state_dict.get("updates", 0))
        self._loaded = state_dict.get("average")
