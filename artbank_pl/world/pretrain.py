"""Pretrain the world's miniature Stable Diffusion from scratch, on CPU.

Three stages, each deterministic from one seed:

1. the autoencoder (an ordinary ``AutoencoderKL``, factor 2: 32 px images, 16 x 16 x 12
   latents) on world images of every style, with an L1 reconstruction loss and the posterior
   variance pinned near zero (see :func:`_deterministic_posterior`); its ``scaling_factor``
   is ``1 / std`` of the latents, as SD's 0.18215 was. Twelve latent channels hold a
   2 x 2 x 3 pixel block without loss (with four, a short training drops colour);
2. the UNet on a fixed set of world images (encoded once) with their captions ("a photo of
   a circle", "a square in striped style"), epsilon loss, 10 % caption dropout for
   classifier-free guidance, and an EMA of the weights, which is what is saved;
3. the judges (:mod:`artbank_pl.world.judges`).

The text encoder is the frozen random tiny CLIP (its token features are distinct), so
caption features are computed once. The result is an ordinary diffusers folder that
``pretrained: <folder>`` (or ``pretrained: world``) loads.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)

from artbank_pl import diffusion
from artbank_pl.errors import DataError
from artbank_pl.optim import warmup_schedule_factor
from artbank_pl.sd import build_tiny_parts
from artbank_pl.tokenizer import save_clip_vocabulary
from artbank_pl.world.scenes import SHAPES, STYLES, caption, sample_batch, style_weights

log = logging.getLogger(__name__)

VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 12,
    "layers_per_block": 1,
    "block_out_channels": [32, 64],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "norm_num_groups": 32,
    "sample_size": 32,
    "mid_block_add_attention": False,
}
UNET_CONFIG = {
    "sample_size": 16,
    "in_channels": 12,
    "out_channels": 12,
    "layers_per_block": 1,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 16,
}


#: the UNet's channels per level, versions 1-3 (``--unet-channels``)
UNET_CHANNELS = tuple(UNET_CONFIG["block_out_channels"])


def unet_config(channels: tuple[int, ...], base: dict | None = None) -> dict:
    """Return ``base`` (the world UNet's config) with ``channels`` per level.

    Args:
        channels: ``block_out_channels``, one per level of ``base``.
        base: the config to widen (default :data:`UNET_CONFIG`; world-xl passes its own).

    Raises:
        DataError: a count other than the levels', or a width that the group norm
            (``norm_num_groups``) or the attention heads (``attention_head_dim``) do not
            divide.
    """
    base = base or UNET_CONFIG
    levels = len(base["down_block_types"])
    step = int(np.lcm(base["norm_num_groups"], base["attention_head_dim"]))
    if len(channels) != levels or any(c <= 0 or c % step for c in channels):
        raise DataError(f"--unet-channels {' '.join(map(str, channels))}: give {levels} "
                        f"widths, each a positive multiple of {step}")  # fmt: skip
    return base | {"block_out_channels": [int(c) for c in channels]}


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """``uint8 [N, H, W, 3]`` to ``[-1, 1]`` float ``[N, 3, H, W]``."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def _schedule(step: int, steps: int) -> float:
    """Return the autoencoder's and the UNet's rate factor: 100 warm-up steps, cosine to 0.1."""
    return warmup_schedule_factor(step, 100, steps, "cosine", min_ratio=0.1)


def _deterministic_posterior(vae: AutoencoderKL) -> None:
    """Pin the posterior's log-variance to ``-20`` (std ``4.5e-5``) for every input.

    The world needs an autoencoder, not a generative VAE: the UNet does the generating. With
    unit posterior noise, as a fresh ``AutoencoderKL`` starts, a short training drowns the
    low-amplitude chroma in the noise and decodes every colour towards grey. The folder stays
    an ordinary ``AutoencoderKL``; ``latent_dist.sample()`` equals ``mode()`` to 1e-4.
    """
    half = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[half:].zero_()
        vae.quant_conv.bias[half:].fill_(-20.0)
    vae.quant_conv.weight.register_hook(lambda g: torch.cat([g[:half], 0 * g[half:]]))
    vae.quant_conv.bias.register_hook(lambda g: torch.cat([g[:half], 0 * g[half:]]))


def train_vae(rng: np.random.Generator, steps: int, batch_size: int = 32) -> AutoencoderKL:
    """Stage 1: the autoencoder (L1), with ``scaling_factor`` fitted to its latents' std."""
    vae = AutoencoderKL(**VAE_CONFIG)
    _deterministic_posterior(vae)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, steps))
    for step in range(steps):
        x = to_pixels(sample_batch(rng, batch_size)[0])
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample
        loss = (recon - x).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sched.step()
        if (step + 1) % 100 == 0:
            log.info("vae step %d/%d: l1 %.4f", step + 1, steps, loss.item())
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        sample = vae.encode(to_pixels(sample_batch(rng, 256)[0])).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1.0 / sample.std()))
    return vae


def _load_vae(folder: str | Path) -> AutoencoderKL:
    """Load the autoencoder of the world model folder ``folder``.

    Raises:
        DataError: ``folder`` has no ``vae/`` with a config.
    """
    path = Path(folder) / "vae"
    if not (path / "config.json").is_file():
        raise DataError(f"--vae-from {folder}: no autoencoder there ({path}/config.json)")
    return AutoencoderKL.from_pretrained(path).eval()


@torch.no_grad()
def encode_dataset(
    vae: AutoencoderKL, rng: np.random.Generator, size: int, stripes_weight: float = 1.0
):
    """Render ``size`` scenes; return posterior moments ``[N, 24, 16, 16]`` and caption ids.

    The styles with stripes are drawn ``stripes_weight`` times as often as the others.
    """
    moments, labels = [], []
    weights = style_weights(stripes_weight)
    for start in range(0, size, 256):
        images, shapes, styles = sample_batch(rng, min(256, size - start), weights=weights)
        moments.append(vae.encode(to_pixels(images)).latent_dist.parameters)
        labels += [s * len(STYLES) + k for s, k in zip(shapes, styles, strict=True)]
    return torch.cat(moments), torch.tensor(labels)


@torch.no_grad()
def caption_features(parts) -> torch.Tensor:
    """Text features ``[len(SHAPES) * len(STYLES) + 1, 77, d]``; the last is the empty one."""
    texts = [caption(shape, style) for shape in SHAPES for style in STYLES] + [""]
    ids = parts.tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt")
    return parts.text_encoder(ids.input_ids).last_hidden_state


def train_unet(
    moments: torch.Tensor,
    labels: torch.Tensor,
    features: torch.Tensor,
    scheduler: DDPMScheduler,
    scaling_factor: float,
    steps: int,
    seed: int,
    batch_size: int = 32,
    caption_dropout: float = 0.1,
    ema_decay: float = 0.999,
    lr: float = 1e-3,
    min_snr_gamma: float | None = None,
    noise_offset: float = 0.0,
    unet_config: dict | None = None,
    pooled: torch.Tensor | None = None,
    time_ids: torch.Tensor | None = None,
) -> tuple[UNet2DConditionModel, list[float]]:
    """Stage 2: the UNet on cached latents; returns its EMA and the per-step losses.

    ``pooled`` (per caption, like ``features``) and ``time_ids`` (per sample, like
    ``moments``) are SDXL's added conditioning (``world-xl``, with its ``unet_config``).
    """
    gen = torch.Generator().manual_seed(seed)
    unet = UNet2DConditionModel(**(unet_config or UNET_CONFIG))
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, steps))
    abar_table = scheduler.alphas_cumprod.float()
    empty = len(features) - 1
    losses = []
    for step in range(steps):
        idx = torch.randint(0, len(moments), (batch_size,), generator=gen)
        mean, logvar = moments[idx].chunk(2, dim=1)
        eps_z = torch.randn(mean.shape, generator=gen)
        latents = (mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * eps_z) * scaling_factor
        cond_idx = labels[idx].clone()
        cond_idx[torch.rand(batch_size, generator=gen) < caption_dropout] = empty
        noise = diffusion.offset_noise(latents.shape, noise_offset, gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=gen)
        noisy = diffusion.add_noise(latents, noise, abar_table[t])
        added = (
            {"text_embeds": pooled[cond_idx], "time_ids": time_ids[idx]}
            if pooled is not None
            else None
        )
        pred = unet(noisy, t, features[cond_idx], added_cond_kwargs=added).sample
        per_sample = (pred - noise).pow(2).mean((1, 2, 3))
        if min_snr_gamma is not None:
            per_sample = per_sample * diffusion.min_snr_weights(
                abar_table[t], min_snr_gamma, "epsilon"
            )
        loss = per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sched.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters(), strict=True):
                e.lerp_(p, 1 - ema_decay)
        losses.append(loss.item())
        if (step + 1) % 200 == 0:
            log.info("unet step %d/%d: loss %.4f", step + 1, steps, np.mean(losses[-200:]))
    return ema.eval(), losses


def save_model(output: Path, unet, vae, parts) -> None:
    """Write a folder that ``StableDiffusionPipeline.from_pretrained`` and ours both load."""
    pipe = StableDiffusionPipeline(
        vae, parts.text_encoder, parts.tokenizer, unet, parts.noise_scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(output)
    for path in (output / "tokenizer").iterdir():  # the compact vocab + merges form instead
        path.unlink()
    save_clip_vocabulary(output / "tokenizer")


def pretrain(
    output: str | Path,
    seed: int = 0,
    vae_steps: int = 1000,
    unet_steps: int = 5500,
    dataset_size: int = 16384,
    judge_steps: int = 500,
    min_snr_gamma: float = 5.0,
    noise_offset: float = 0.1,
    vae_from: str | None = None,
    stripes_weight: float = 2.5,
    unet_channels: tuple[int, ...] = UNET_CHANNELS,
    unet_lr: float = 1e-3,
) -> dict:
    """Run all stages and write the world model folder; return a summary (also saved).

    Args:
        output: the diffusers folder to write (``unet/``, ``vae/``, ``text_encoder/``,
            ``tokenizer/``, ``scheduler/``, ``judges/``, ``recipe.json``).
        seed: the one seed every stage derives from.
        vae_steps: VAE optimisation steps (batch 32).
        unet_steps: UNet optimisation steps (batch 32).
        dataset_size: scenes rendered and encoded for the UNet.
        judge_steps: steps of each judge; 0 leaves the judges out (they do not depend on
            the model: ``artbank world judges`` writes them alone).
        min_snr_gamma: the UNet's Min-SNR-gamma loss weighting (Hang et al. 2023); 0 (as
            version 1) is the plain epsilon loss. Versions 2 and 3 (shipped): 5.
        noise_offset: the UNet's offset noise (Guttenberg 2023): per-channel constants added
            to the training noise, so the model learns to move an image's mean (the dark
            ``neon`` scenes, which version 1 could not draw); 0 (version 1) is plain
            Gaussian noise. Versions 2 and 3 (shipped): 0.1.
        vae_from: a world model folder whose autoencoder to keep instead of training one
            (stage 1 skipped, ``vae_steps`` unused): a UNet experiment on scenes the
            autoencoder already reconstructs costs the UNet's time alone.
        stripes_weight: how much more often the UNet's scenes are striped or neon striped
            than any other style (:func:`~artbank_pl.world.scenes.style_weights`); version
            2 drew every style alike (1) and never learned stripes. Version 3: 2.5.
        unet_channels: the UNet's channels per level (versions 1-3: 32, 64, 64; README,
            "A wider UNet within the 30 minutes").
        unet_lr: the UNet's peak learning rate (versions 1-3: 1e-3).
    """
    from artbank_pl.world.judges import train_judges

    torch.manual_seed(seed)
    output = Path(output)
    started = time.monotonic()
    rng = np.random.default_rng(seed)
    config = unet_config(tuple(unet_channels))
    parts = build_tiny_parts()
    vae = _load_vae(vae_from) if vae_from else train_vae(rng, vae_steps)
    vae_done = time.monotonic()
    moments, labels = encode_dataset(vae, rng, dataset_size, stripes_weight)
    features = caption_features(parts)
    unet, losses = train_unet(
        moments, labels, features, parts.noise_scheduler, vae.config.scaling_factor,
        unet_steps, seed, min_snr_gamma=min_snr_gamma or None, noise_offset=noise_offset,
        unet_config=config, lr=unet_lr,
    )  # fmt: skip
    unet_done = time.monotonic()
    judges = train_judges(output / "judges", seed, judge_steps) if judge_steps else None
    save_model(output, unet, vae, parts)
    options = {"seed": seed, "vae_steps": vae_steps, "unet_steps": unet_steps,
               "dataset_size": dataset_size, "judge_steps": judge_steps,
               "min_snr_gamma": min_snr_gamma, "noise_offset": noise_offset,
               "stripes_weight": stripes_weight,
               "unet_channels": list(config["block_out_channels"]),
               "unet_lr": unet_lr}  # fmt: skip
    if vae_from:  # the kept autoencoder replaces its training steps in the command
        del options["vae_steps"]
        options["vae_from"] = vae_from
    seconds = {"vae": round(vae_done - started, 1), "unet": round(unet_done - vae_done, 1),
               "total": round(time.monotonic() - started, 1)}  # fmt: skip
    return write_recipe(output, "pretrain", options, losses, seconds, judges=judges)


def _flag_value(value) -> str:
    """Write a recipe option as the command line takes it (a list: its items, spaced)."""
    return " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def write_recipe(
    output: Path, command: str, options: dict, losses: list[float], seconds, **more
) -> dict:
    """Write ``recipe.json``: the command that rebuilds the folder, versions, time and losses.

    Args:
        output: the model folder.
        command: the ``artbank world`` subcommand (``pretrain``, ``pretrain-xl``).
        options: its options by keyword (each becomes ``--name value``).
        losses: the UNet's per-step losses.
        seconds: the time taken (a number or a dict of stages).
        **more: further entries.
    """
    flags = " ".join(f"--{name.replace('_', '-')} {_flag_value(value)}"
                     for name, value in options.items())  # fmt: skip
    window = max(1, min(200, len(losses) // 10))
    summary = {
        "command": f"artbank world {command} --output {output} {flags}",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        **options, "seconds": seconds,
        # mean loss over the first and the last 200 steps (a tenth of short runs)
        "unet_loss_start": float(np.mean(losses[:window])),
        "unet_loss_end": float(np.mean(losses[-window:])),
        **more, "styles": list(STYLES), "shapes": list(SHAPES),
    }  # fmt: skip
    (output / "recipe.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
