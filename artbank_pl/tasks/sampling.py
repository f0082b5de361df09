"""Sampling on the frozen UNet with diffusers' schedulers: img2img with stochastic inversion.

The denoising loop is the one of diffusers' ``StableDiffusionImg2ImgPipeline`` (same
timesteps for every ``timestep_spacing``, same ``add_noise``, ``scale_model_input`` and
``step``), built from the model's own scheduler config, so ``rescale_betas_zero_snr``,
``clip_sample``, ``thresholding`` and v-prediction behave as in diffusers. What it adds:
per-sample generators (an output does not depend on its batch) and InST's stochastic
inversion as the first step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from diffusers import (
    DDIMInverseScheduler,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from artbank_pl import diffusion
from artbank_pl.errors import ConfigError
from artbank_pl.sd import outside_autocast
from artbank_pl.tasks.conditioning import TextConditioning, as_conditioning, cat_conditioning
from artbank_pl.transfer import upload

Conditioning = torch.Tensor | TextConditioning

Sampler = Literal["ddim", "dpmsolver++", "euler", "unipc"]
SAMPLERS: dict[str, tuple[type[SchedulerMixin], dict]] = {
    "ddim": (DDIMScheduler, {}),
    "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "euler": (EulerDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
}
INVERSIONS = ("stochastic", "noise", "ddim")


def check_sampling(
    strength: float, steps: int, inversion: str = "stochastic", scheduler: str = "ddim"
) -> None:
    """Check img2img options before any model work (``StylizeTask`` calls it at init).

    Raises:
        ConfigError: an unknown inversion or sampler, DDIM inversion with another sampler,
            a strength outside (0, 1], or ``steps * strength`` rounding down to no step.
    """
    if inversion not in INVERSIONS:
        raise ConfigError(f"inversion must be stochastic, noise or ddim, got {inversion!r}")
    if scheduler not in SAMPLERS:
        raise ConfigError(f"scheduler must be one of {', '.join(SAMPLERS)}, got {scheduler!r}")
    if inversion == "ddim" and scheduler != "ddim":
        raise ConfigError("inversion: ddim needs scheduler: ddim (DDIM inversion is DDIM's)")
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f"strength must be in (0, 1], got {strength}")
    if int(steps * strength) < 1:
        raise ConfigError(f"steps={steps} x strength={strength} leaves no denoising step")


def make_sampler(config: dict, name: str) -> SchedulerMixin:
    """Build a fresh sampler of kind ``name`` from a model's scheduler config.

    Raises:
        ConfigError: unknown sampler name.
    """
    check_sampling(1.0, 1, scheduler=name)
    cls, overrides = SAMPLERS[name]
    return cls.from_config(config, **overrides)


def img2img_timesteps(
    sampler: SchedulerMixin, steps: int, strength: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Set the sampler's schedule and return the timesteps img2img runs, as diffusers does.

    ``min(int(steps * strength), steps)`` steps of the full ``steps``-step schedule are run
    (``StableDiffusionImg2ImgPipeline.get_timesteps``).

    Raises:
        ConfigError: see :func:`check_sampling`.
    """
    check_sampling(strength, steps)
    run = min(int(steps * strength), steps)
    sampler.set_timesteps(steps, device=device)
    begin = (steps - run) * sampler.order
    if hasattr(sampler, "set_begin_index"):
        sampler.set_begin_index(begin)
    return sampler.timesteps[begin:]


def _abar_at(sampler: SchedulerMixin, timestep: torch.Tensor) -> float:
    """``abar_t`` at the sampler's current start (from its sigma where it has one)."""
    sigmas = getattr(sampler, "sigmas", None)
    begin = getattr(sampler, "begin_index", None)
    if sigmas is not None and begin is not None:
        # sigma = sqrt((1 - abar) / abar) in every sigma-based diffusers scheduler
        return float(1.0 / (1.0 + sigmas[begin].double() ** 2))
    return float(sampler.alphas_cumprod[int(timestep)])


def pad_rows(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` with copies of its last row appended up to ``size`` rows (no gradient to them)."""
    missing = size - x.shape[0]
    if missing <= 0:
        return x
    return torch.cat([x, x[-1:].detach().expand(missing, *x.shape[1:])])


class SamplingMixin:
    """Sampling for a task with ``unet``, ``vae``, ``noise_scheduler``, ``prediction_type``.

    The task also says whether it is SDXL (``is_xl``), for the micro-conditioning.
    """

    @property
    def vae_scale(self) -> int:
        """Pixels per latent side (diffusers' ``vae_scale_factor``)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def image_time_ids(self, latents: torch.Tensor) -> torch.Tensor | None:
        """SDXL micro-conditioning of an uncropped image at its own size, from its latents.

        ``(h, w, 0, 0, h, w)`` in pixels, as diffusers' SDXL pipelines default to; ``None``
        on a model without micro-conditioning.
        """
        if not self.is_xl:
            return None
        height, width = (side * self.vae_scale for side in latents.shape[-2:])
        return upload([[height, width, 0, 0, height, width]], latents.device, torch.float32)

    def model_output(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        cond: Conditioning,
        uncond: Conditioning | None = None,
        guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        """UNet output at one timestep, with classifier-free guidance when ``uncond`` is given.

        Guidance (Ho & Salimans 2022, Eq. 6): ``out_u + s (out_c - out_u)``, with the
        unconditional and conditional halves run as one batch (diffusers guides only when
        ``s > 1``; so do we).
        """
        t = timestep.to(latents.device).expand(latents.shape[0])
        if uncond is None or guidance_scale <= 1.0:
            return self.unet_forward(latents, t, cond)
        cond = as_conditioning(cond)
        both = torch.cat([latents, latents])
        context = cat_conditioning([as_conditioning(uncond).expand(len(cond)), cond])
        out_u, out_c = self.unet_forward(both, torch.cat([t, t]), context).chunk(2)
        return out_u + guidance_scale * (out_c - out_u)

    def unet_forward(
        self, latents: torch.Tensor, timesteps: torch.Tensor, context: Conditioning
    ) -> torch.Tensor:
        """Return the frozen UNet's float32 output, run in its own dtype outside autocast.

        A compiled UNet (``compile_unet``) is compiled for static shapes: a batch smaller
        than a size it was compiled for (the last batch of an epoch or a dataset, a
        validation or sample-grid batch) is padded to that size with copies of its last
        row, whose outputs are dropped, instead of compiling the UNet once more.
        """
        count = latents.shape[0]
        size = self._compiled_batch_size(count)
        latents, timesteps = pad_rows(latents, size), pad_rows(timesteps, size)
        context = as_conditioning(context).map(lambda x: pad_rows(x, size))
        dtype = self.unet.dtype
        with outside_autocast(latents.device):
            out = self.unet(latents.to(dtype), timesteps, **context.unet_kwargs(dtype)).sample
        return out[:count].float()

    def _compiled_batch_size(self, count: int) -> int:
        """Return the batch size to run ``count`` rows at: the smallest compiled one that fits."""
        if not getattr(self.hparams, "compile_unet", False):
            return count
        sizes = getattr(self, "_unet_batch_sizes", None)
        if sizes is None:
            sizes = self._unet_batch_sizes = set()
        fitting = [size for size in sizes if size >= count]
        if fitting:
            return min(fitting)
        sizes.add(count)  # a new static shape: compiled once, reused from now on
        return count

    def ddim_invert(
        self, z0: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning, steps: int
    ) -> torch.Tensor:
        """Deterministic DDIM inversion of ``z0`` up to ``timesteps[0]`` (a descending list).

        diffusers' ``DDIMInverseScheduler`` (Song et al. 2021, Sec. 4.3; Mokady et al. 2023,
        Eq. 3): the conditional prediction at each next timestep drives DDIM backwards.
        """
        config = dict(self.noise_scheduler.config)
        if config.get("timestep_spacing") not in ("leading", "trailing"):
            config["timestep_spacing"] = "leading"  # the inverse scheduler's only other spacing
        inverse = DDIMInverseScheduler.from_config(config)
        inverse.set_timesteps(steps, device=z0.device)
        z = z0
        for t in timesteps.flip(0):
            z = inverse.step(self.model_output(z, t, cond), t, z).prev_sample
        return z

    def _start_latents(
        self,
        sampler: SchedulerMixin,
        z0: torch.Tensor,
        start: torch.Tensor,
        cond: Conditioning,
        noise: torch.Tensor,
        inversion: str,
    ) -> torch.Tensor:
        """Noise ``z0`` to ``start``; ``stochastic`` swaps the noise for the UNet's estimate.

        InST's stochastic inversion (Zhang et al. 2023, Sec. 3.3): ``z_t = sqrt(abar_t) z0 +
        sqrt(1 - abar_t) eps``, the conditional UNet predicts ``eps_hat`` from ``z_t`` (no
        guidance), and ``sqrt(abar_t) z0 + sqrt(1 - abar_t) eps_hat`` starts the loop at the
        same ``t`` (the official code started one sub-step lower).
        """
        t = start.expand(z0.shape[0])
        z = sampler.add_noise(z0, noise, t)
        if inversion == "stochastic":
            model_in = sampler.scale_model_input(z, start)  # the variance-preserving z_t
            out = self.model_output(model_in, start, cond)
            abar = _abar_at(sampler, start)
            eps_hat = diffusion.eps_from_output(out, model_in, abar, self.prediction_type)
            z = sampler.add_noise(z0, eps_hat, t)
        return z

    @torch.no_grad()
    def img2img(
        self,
        z0: torch.Tensor,
        cond: Conditioning,
        uncond: Conditioning,
        generators: Sequence[torch.Generator],
        strength: float = 0.7,
        steps: int = 50,
        guidance_scale: float = 10.0,
        eta: float = 0.0,
        inversion: str = "stochastic",
        scheduler: Sampler = "ddim",
    ) -> torch.Tensor:
        """Re-render latents ``z0`` under ``cond``, starting part-way down the schedule.

        With ``T`` the first of the img2img timesteps for ``strength``:

        - ``noise``: ``z_T`` = the sampler's ``add_noise(z0, eps, T)`` (plain img2img);
        - ``stochastic`` (InST): as ``noise``, then the conditional UNet's estimate of the
          noise replaces ``eps`` (see :meth:`_start_latents`);
        - ``ddim``: deterministic DDIM inversion of ``z0`` up to ``T`` (``ddim`` sampler only).

        Then ``scheduler`` runs from ``T`` down with guidance. Every random draw comes from
        the per-sample CPU ``generators``, so results do not depend on batch composition.
        On SDXL, conditioning without micro-conditioning gets the image's own size, no crop
        and the same target size, as diffusers' SDXL img2img pipeline sets by default.

        Returns:
            The final latents, float32.
        """
        check_sampling(strength, steps, inversion, scheduler)
        size_ids = self.image_time_ids(z0)
        cond = as_conditioning(cond).with_time_ids(size_ids)
        uncond = as_conditioning(uncond).with_time_ids(size_ids)
        sampler = make_sampler(self.noise_scheduler.config, scheduler)
        timesteps = img2img_timesteps(sampler, steps, strength, z0.device)
        shape = z0.shape[1:]

        def draw() -> torch.Tensor:
            return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(z0)

        if inversion == "ddim":
            z = self.ddim_invert(z0, timesteps, cond, steps)
        else:
            z = self._start_latents(sampler, z0, timesteps[0], cond, draw(), inversion)
        step_kwargs = {"eta": eta, "generator": list(generators)} if scheduler == "ddim" else {}
        for t in timesteps:
            model_in = sampler.scale_model_input(z, t)
            out = self.model_output(model_in, t, cond, uncond, guidance_scale)
            z = sampler.step(out, t, z, **step_kwargs).prev_sample
        return z.float()
