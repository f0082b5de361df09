"""Pure diffusion functions: noise, training targets and loss weights.

Notation follows DDPM (Ho et al. 2020): ``abar_t`` is the cumulative product of
``1 - beta``, and ``z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps`` (Eq. 4).
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler


def alphas_cumprod(scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Return ``abar_t`` for each timestep, in float32 on the timesteps' device."""
    table = scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)
    return table[timesteps]


def add_noise(latents: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """Forward process ``z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps`` (DDPM Eq. 4)."""
    abar = abar.view(-1, *([1] * (latents.ndim - 1)))
    return abar.sqrt() * latents + (1 - abar).sqrt() * noise


def training_target(
    prediction_type: str, latents: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor
) -> torch.Tensor:
    """Return what the UNet should predict.

    ``epsilon``: the noise (DDPM Eq. 14). ``v_prediction``:
    ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) z_0`` (Salimans & Ho 2022, Sec. 4).
    ``sample``: the clean latent.

    Raises:
        ValueError: unknown prediction type.
    """
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        abar = abar.view(-1, *([1] * (latents.ndim - 1)))
        return abar.sqrt() * noise - (1 - abar).sqrt() * latents
    if prediction_type == "sample":
        return latents
    raise ValueError(f"unsupported prediction_type {prediction_type!r} in the scheduler config")


def min_snr_weights(abar: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, Eq. 8 and its v/x0 forms).

    With ``snr = abar / (1 - abar)``, the weight on an epsilon loss is
    ``min(snr, gamma) / snr``, on a v loss ``min(snr, gamma) / (snr + 1)``, and on an x0 loss
    ``min(snr, gamma)``.
    """
    snr = abar / (1 - abar)
    clipped = snr.clamp(max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped


def offset_noise(
    shape: torch.Size, offset: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw Gaussian noise plus ``offset`` times per-channel constants (Guttenberg 2023)."""
    noise = torch.randn(shape, generator=generator)
    if offset:
        noise = noise + offset * torch.randn(shape[0], shape[1], 1, 1, generator=generator)
    return noise


# ---------------------------------------------------------------------------- sampling
def ddim_timesteps(num_train_timesteps: int, steps: int, offset: int = 1) -> list[int]:
    """Return the descending DDIM timesteps, spaced as SD's schedulers do ("leading").

    For 1000 training steps, 50 steps and offset 1: ``[981, 961, ..., 21, 1]``.
    """
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    ratio = num_train_timesteps // steps
    return [i * ratio + offset for i in reversed(range(steps))]


def start_index(steps: int, strength: float) -> int:
    """Index in the DDIM timesteps where img2img starts (diffusers' convention).

    ``int(steps * strength)`` steps are run, so strength 1 starts at the noisiest step.
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return steps - max(1, min(steps, int(steps * strength)))


def predict_eps_x0(
    model_output: torch.Tensor, sample: torch.Tensor, abar: float, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a UNet output into (eps, x0) at a sample with cumulative alpha ``abar``.

    epsilon: ``x0 = (z - sqrt(1 - abar) eps) / sqrt(abar)`` (DDIM Eq. 9); v: ``eps =
    sqrt(abar) v + sqrt(1 - abar) z`` and ``x0 = sqrt(abar) z - sqrt(1 - abar) v``.
    ``abar`` is a Python float, so the arithmetic does not depend on the device.
    """
    a, b = abar**0.5, (1 - abar) ** 0.5
    if prediction_type == "epsilon":
        return model_output, (sample - b * model_output) / a
    if prediction_type == "v_prediction":
        return a * model_output + b * sample, a * sample - b * model_output
    if prediction_type == "sample":
        return (sample - a * model_output) / b, model_output
    raise ValueError(f"unsupported prediction_type {prediction_type!r} in the scheduler config")


def ddim_step(
    eps: torch.Tensor,
    x0: torch.Tensor,
    abar_t: float,
    abar_prev: float,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM update from t to the previous timestep (Song et al. 2021, Eq. 12).

    ``z_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma noise`` with
    ``sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)``
    (Eq. 16); ``eta = 0`` is deterministic.
    """
    sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)) ** 0.5
    out = abar_prev**0.5 * x0 + max(0.0, 1 - abar_prev - sigma**2) ** 0.5 * eps
    if sigma > 0:
        if noise is None:
            raise ValueError("eta > 0 needs noise")
        out = out + sigma * noise
    return out


def noise_to(z0: torch.Tensor, eps: torch.Tensor, abar_t: float) -> torch.Tensor:
    """``z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps`` with a scalar ``abar_t`` (DDPM Eq. 4).

    InST's stochastic inversion (Zhang et al. 2023, Sec. 3.3) calls it with ``eps`` the
    conditional UNet's prediction of the noise that was added to ``z0``, in place of the
    random noise of plain img2img.
    """
    return abar_t**0.5 * z0 + (1 - abar_t) ** 0.5 * eps


def adain(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Match each channel's mean and std of ``content`` to ``style`` (Huang & Belongie 2017, Eq. 8).

    Both are ``[B, C, H, W]`` (``style`` may have batch 1); statistics are over H and W.
    """
    c_mean, c_std = content.mean((2, 3), keepdim=True), content.std((2, 3), keepdim=True) + eps
    s_mean, s_std = style.mean((2, 3), keepdim=True), style.std((2, 3), keepdim=True) + eps
    return (content - c_mean) / c_std * s_std + s_mean
