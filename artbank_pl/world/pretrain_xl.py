"""Pretrain ``world-xl``: the world model in SDXL's architecture, on CPU.

What SDXL adds to the UNet's conditioning (Podell et al. 2023, Sec. 2.1-2.2), at the world
model's size:

- a second text encoder (a random CLIP text model with a projection, 48 wide, padded with
  ``!`` as OpenCLIP's), whose penultimate hidden states are concatenated to the first's
  (the world's own 32-wide encoder) and whose pooled, projected output (``text_embeds``)
  enters the timestep embedding (``addition_embed_type: text_time``);
- micro-conditioning on six numbers, used in training as SDXL does: an eighth of the scenes
  come from a low-resolution original (rendered, shrunk to 8-24 px and enlarged back:
  ``original_size`` says so), an eighth are crops of an enlarged scene (``crop_top_left``
  and the enlarged size), the rest are whole 32 px scenes ``(32, 32, 0, 0, 32, 32)``, the
  conditioning sampling uses (version 1 used a quarter each: its bank drew stripes less
  often, README "world-xl");
- a dropped caption is all zeros, hidden states and pooled embedding, which is what SDXL
  pipelines guide against (``force_zeros_for_empty_prompt``).

The autoencoder, the first text encoder and its tokenizer are the world model's own
(version 3, whose autoencoder is version 2's), read from its folder and not trained
again, so the folder written here holds only ``unet/``, ``text_encoder_2/`` and
``scheduler/``; ``pretrained: world-xl`` loads it with the world model's other parts.
The UNet's recipe is the world model's (Min-SNR-5, offset noise 0.1, 5,500 steps at
batch 32 with an EMA, version 3's stripes weight 2.5).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from artbank_pl.sd import TINY_XL, load_parts, openclip_tokenizer, preset_config
from artbank_pl.tasks.conditioning import repad
from artbank_pl.world.pretrain import (
    UNET_CHANNELS,
    UNET_CONFIG,
    to_pixels,
    train_unet,
    unet_config,
    write_recipe,
)
from artbank_pl.world.scenes import SHAPES, SIZE, STYLES, caption, sample_batch, style_weights

log = logging.getLogger(__name__)

#: the second encoder: tiny-xl's (48 wide, projection 40), drawn from the recipe's seed
TEXT_ENCODER_2 = preset_config(TINY_XL, "text_encoder_2")
UNET_XL_CONFIG = UNET_CONFIG | {
    "cross_attention_dim": 32 + TEXT_ENCODER_2["hidden_size"],
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 6 * 8 + TEXT_ENCODER_2["projection_dim"],
}


def build_text_encoder_2(seed: int) -> CLIPTextModelWithProjection:
    """Build the random second text encoder, the same in every process from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_ENCODER_2))
    return encoder.eval().requires_grad_(False)


@torch.no_grad()
def caption_features_xl(parts, text_encoder_2) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states ``[C + 1, 77, 80]`` and pooled ``[C + 1, 40]`` of every caption.

    As SDXL's pipelines encode: each encoder's penultimate layer, concatenated, and the
    second's projected pooled output; the last row (a dropped caption) is zeros.
    """
    texts = [caption(shape, style) for shape in SHAPES for style in STYLES]
    ids = parts.tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt")
    tokenizer_2 = openclip_tokenizer()
    ids_2 = repad(ids.input_ids, tokenizer_2.eos_token_id, tokenizer_2.pad_token_id)
    first = parts.text_encoder(ids.input_ids, output_hidden_states=True).hidden_states[-2]
    out = text_encoder_2(ids_2, output_hidden_states=True)
    hidden = torch.cat([first, out.hidden_states[-2]], dim=-1)
    pooled = out.text_embeds
    return (
        torch.cat([hidden, torch.zeros_like(hidden[:1])]),
        torch.cat([pooled, torch.zeros_like(pooled[:1])]),
    )


def _resized(image: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))


def micro_conditioned(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """One training view of a scene and its ``(h0, w0, top, left, h, w)``.

    An eighth from a low-resolution original, an eighth cropped from an enlarged scene, the
    rest the whole scene (module docstring).
    """
    draw = rng.random()
    if draw < 0.125:
        side = int(rng.integers(8, 25))
        return _resized(_resized(image, side), SIZE), [side, side, 0, 0, SIZE, SIZE]
    if draw < 0.25:
        side = int(rng.integers(SIZE + 4, SIZE + 17))
        top, left = (int(v) for v in rng.integers(0, side - SIZE + 1, 2))
        view = _resized(image, side)[top : top + SIZE, left : left + SIZE]
        return view, [side, side, top, left, SIZE, SIZE]
    return image, [SIZE, SIZE, 0, 0, SIZE, SIZE]


@torch.no_grad()
def encode_dataset_xl(vae, rng: np.random.Generator, size: int, stripes_weight: float = 1.0):
    """Render ``size`` scenes as micro-conditioned views; moments, caption ids, time ids.

    The styles with stripes are drawn ``stripes_weight`` times as often as the others.
    """
    moments, labels, time_ids = [], [], []
    weights = style_weights(stripes_weight)
    for start in range(0, size, 256):
        images, shapes, styles = sample_batch(rng, min(256, size - start), weights=weights)
        views = [micro_conditioned(image, rng) for image in images]
        pixels = to_pixels(np.stack([view for view, _ in views]))
        moments.append(vae.encode(pixels).latent_dist.parameters)
        time_ids += [ids for _, ids in views]
        labels += [s * len(STYLES) + k for s, k in zip(shapes, styles, strict=True)]
    return torch.cat(moments), torch.tensor(labels), torch.tensor(time_ids, dtype=torch.float32)


def save_model_xl(output: Path, unet, text_encoder_2, scheduler) -> None:
    """Write the parts world-xl does not share with the world model."""
    unet.save_pretrained(output / "unet")
    text_encoder_2.save_pretrained(output / "text_encoder_2")
    scheduler.save_pretrained(output / "scheduler")


def pretrain_xl(
    output: str | Path,
    seed: int = 0,
    unet_steps: int = 5500,
    dataset_size: int = 16384,
    min_snr_gamma: float = 5.0,
    noise_offset: float = 0.1,
    stripes_weight: float = 2.5,
    unet_channels: tuple[int, ...] = UNET_CHANNELS,
    unet_lr: float = 1e-3,
) -> dict:
    """Pretrain world-xl's UNet on the world model's autoencoder and write its folder.

    Args:
        output: the folder to write (``unet/``, ``text_encoder_2/``, ``scheduler/``,
            ``recipe.json``).
        seed: the one seed every draw derives from.
        unet_steps: UNet optimisation steps (batch 32).
        dataset_size: scenes rendered, micro-conditioned and encoded.
        min_snr_gamma: Min-SNR-gamma weighting (world v2: 5).
        noise_offset: offset noise (world v2: 0.1).
        stripes_weight: how much more often the scenes have stripes (world v3: 2.5).
        unet_channels: the UNet's channels per level (the world model's: 32, 64, 64).
        unet_lr: the UNet's peak learning rate (the world model's: 1e-3).
    """
    config = unet_config(tuple(unet_channels), UNET_XL_CONFIG)
    torch.manual_seed(seed)
    output = Path(output)
    started = time.monotonic()
    rng = np.random.default_rng(seed)
    world = load_parts("world")
    text_encoder_2 = build_text_encoder_2(seed + 2)
    moments, labels, time_ids = encode_dataset_xl(world.vae, rng, dataset_size, stripes_weight)
    features, pooled = caption_features_xl(world, text_encoder_2)
    unet, losses = train_unet(
        moments, labels, features, world.noise_scheduler, world.vae.config.scaling_factor,
        unet_steps, seed, min_snr_gamma=min_snr_gamma or None, noise_offset=noise_offset,
        unet_config=config, lr=unet_lr, pooled=pooled, time_ids=time_ids,
    )  # fmt: skip
    save_model_xl(output, unet, text_encoder_2, world.noise_scheduler)
    options = {"seed": seed, "unet_steps": unet_steps, "dataset_size": dataset_size,
               "min_snr_gamma": min_snr_gamma, "noise_offset": noise_offset,
               "stripes_weight": stripes_weight,
               "unet_channels": list(config["block_out_channels"]),
               "unet_lr": unet_lr}  # fmt: skip
    seconds = round(time.monotonic() - started, 1)
    return write_recipe(output, "pretrain-xl", options, losses, seconds)
