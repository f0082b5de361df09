"""Pure diffusion functions: noise, training targets and loss weights.

Notation follows DDPM (Ho et al. 2020): ``abar_t`` is the cumulative product of
``1 - beta``, and ``z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps`` (Eq. 4).
"""

from __future__ import annotations

import torch


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
    ``min(snr, gamma)``. A zero-SNR timestep (``rescale_betas_zero_snr``) gets weight 1 on
    an epsilon loss, its limit, instead of 0 / 0.
    """
    snr = abar / (1 - abar)
    clipped = snr.clamp(max=gamma)
    if prediction_type == "epsilon":
        # at a zero-SNR timestep (abar = 0) the limit of min(snr, gamma) / snr is 1
        return torch.where(snr > 0, clipped / snr.clamp(min=torch.finfo(snr.dtype).tiny), 1.0)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped


def offset_noise(
    shape: torch.Size,
    offset: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw Gaussian noise plus ``offset`` times per-channel constants (Guttenberg 2023).

    ``device`` defaults to the generator's (so a CUDA generator draws on the GPU).
    """
    device = device if device is not None else (generator.device if generator else None)
    noise = torch.randn(shape, generator=generator, device=device)
    if offset:
        per_channel = torch.randn(shape[0], shape[1], 1, 1, generator=generator, device=device)
        noise = noise + offset * per_channel
    return noise


# ---------------------------------------------------------------------------- sampling
def eps_from_output(
    model_output: torch.Tensor, sample: torch.Tensor, abar: float, prediction_type: str
) -> torch.Tensor:
    """Turn a UNet output at a sample with cumulative alpha ``abar`` into its noise estimate.

    epsilon: the output itself; v (Salimans & Ho 2022, Sec. 4): ``eps = sqrt(abar) v +
    sqrt(1 - abar) z``; sample: ``eps = (z - sqrt(abar) x0) / sqrt(1 - abar)``. No division
    by ``sqrt(abar)``, so a zero-SNR timestep (``abar = 0``) gives no NaN.
    """
    a, b = abar**0.5, (1 - abar) ** 0.5
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return a * model_output + b * sample
    if prediction_type == "sample":
        return (sample - a * model_output) / b
    raise ValueError(f"unsupported prediction_type {prediction_type!r} in the scheduler config")


def adain(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Match each channel's mean and std of ``content`` to ``style`` (Huang & Belongie 2017, Eq. 8).

    Both are ``[B, C, H, W]`` (``style`` may have batch 1); statistics are over H and W.
    """
    c_mean, c_std = content.mean((2, 3), keepdim=True), content.std((2, 3), keepdim=True) + eps
    s_mean, s_std = style.mean((2, 3), keepdim=True), style.std((2, 3), keepdim=True) + eps
    return (content - c_mean) / c_std * s_std + s_mean
