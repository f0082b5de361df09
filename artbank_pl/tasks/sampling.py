"""Sampling on the frozen UNet: guidance, DDIM inversion and img2img with stochastic inversion."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from artbank_pl import diffusion
from artbank_pl.errors import ConfigError


class SamplingMixin:
    """DDIM sampling for a task that has ``unet``, ``noise_scheduler`` and ``prediction_type``."""

    def _abar(self, timestep: int | None) -> float:
        """``abar_t``; ``None`` is the step after the last one (the scheduler's final alpha)."""
        table = self.noise_scheduler.alphas_cumprod
        if timestep is not None:
            return float(table[timestep])
        return (
            1.0 if self.noise_scheduler.config.get("set_alpha_to_one", False) else float(table[0])
        )

    def model_output(
        self,
        latents: torch.Tensor,
        timestep: int,
        cond: torch.Tensor,
        uncond: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        """UNet output at one timestep, with classifier-free guidance when ``uncond`` is given.

        Guidance (Ho & Salimans 2022, Eq. 6): ``out_u + s (out_c - out_u)``, with the
        unconditional and conditional halves run as one batch.
        """
        dtype = self.unet.dtype
        t = torch.full((latents.shape[0],), timestep, device=latents.device)
        if uncond is None or guidance_scale == 1.0:
            return self.unet(latents.to(dtype), t, cond.to(dtype)).sample.float()
        both = torch.cat([latents, latents]).to(dtype)
        context = torch.cat([uncond.expand_as(cond), cond]).to(dtype)
        out_u, out_c = self.unet(both, torch.cat([t, t]), context).sample.float().chunk(2)
        return out_u + guidance_scale * (out_c - out_u)

    def ddim_invert(
        self, z0: torch.Tensor, timesteps: list[int], cond: torch.Tensor
    ) -> torch.Tensor:
        """Deterministic DDIM inversion of ``z0`` up to ``timesteps[-1]`` (ascending list).

        Runs DDIM Eq. 12 with ``eta = 0`` backwards, using the conditional noise prediction
        at each next timestep (Song et al. 2021, Sec. 4.3; Mokady et al. 2023, Eq. 3).
        """
        z, abar_cur = z0, self._abar(None)
        for t in timesteps:
            eps, _ = diffusion.predict_eps_x0(
                self.model_output(z, t, cond), z, self._abar(t), self.prediction_type
            )
            x0 = (z - (1 - abar_cur) ** 0.5 * eps) / abar_cur**0.5
            abar_cur = self._abar(t)
            z = diffusion.noise_to(x0, eps, abar_cur)
        return z

    @torch.no_grad()
    def img2img(
        self,
        z0: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        generators: Sequence[torch.Generator],
        strength: float = 0.7,
        steps: int = 50,
        guidance_scale: float = 10.0,
        eta: float = 0.0,
        inversion: str = "stochastic",
    ) -> torch.Tensor:
        """Re-render latents ``z0`` under ``cond`` with DDIM, starting part-way (img2img).

        With ``T = timesteps[start]`` the first DDIM step for ``strength``:

        - ``noise``: ``z_T = sqrt(abar_T) z0 + sqrt(1 - abar_T) eps`` (plain img2img);
        - ``stochastic`` (InST): noise ``z0`` to ``T`` with fresh noise, let the conditional
          UNet predict that noise (no guidance), and use the prediction in its place;
        - ``ddim``: deterministic DDIM inversion of ``z0`` up to ``T``.

        Then DDIM runs from ``T`` itself (not one step below, as the official InST code
        did) down to 0, with guidance. Every random draw comes from the per-sample
        ``generators`` (CPU), so results do not depend on batch composition.

        Returns:
            The final latents, float32.
        """
        config = self.noise_scheduler.config
        schedule = diffusion.ddim_timesteps(
            config.num_train_timesteps, steps, config.get("steps_offset", 0)
        )
        timesteps = schedule[diffusion.start_index(steps, strength) :]
        shape = z0.shape[1:]

        def draw() -> torch.Tensor:
            noise = [torch.randn(shape, generator=g) for g in generators]
            return torch.stack(noise).to(z0.device)

        start = timesteps[0]
        abar_start = self._abar(start)
        if inversion == "ddim":
            z = self.ddim_invert(z0, timesteps[::-1], cond)
        elif inversion in ("noise", "stochastic"):
            z = diffusion.noise_to(z0, draw(), abar_start)
            if inversion == "stochastic":
                out = self.model_output(z, start, cond)
                eps_hat, _ = diffusion.predict_eps_x0(out, z, abar_start, self.prediction_type)
                z = diffusion.noise_to(z0, eps_hat, abar_start)
        else:
            raise ConfigError(f"inversion must be stochastic, noise or ddim, got {inversion!r}")
        for i, t in enumerate(timesteps):
            abar_prev = self._abar(timesteps[i + 1] if i + 1 < len(timesteps) else None)
            out = self.model_output(z, t, cond, uncond, guidance_scale)
            eps, x0 = diffusion.predict_eps_x0(out, z, self._abar(t), self.prediction_type)
            z = diffusion.ddim_step(eps, x0, self._abar(t), abar_prev, eta, draw() if eta else None)
        return z
