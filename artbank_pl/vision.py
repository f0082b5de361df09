"""The frozen CLIP vision encoder of InST, and CLIP's image preprocessing on tensors.

SD repositories ship no image encoder, so it is named by its own option: ``tiny`` (random
weights from ``tiny/vision_encoder.json``), ``world`` (the world model's CLIP image tower,
trained against its text encoder), a local folder, or a hub id such as
``openai/clip-vit-large-patch14``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from artbank_pl.sd import (
    RANDOM_PRESETS,
    PretrainedLoadError,
    freeze,
    outside_autocast,
    preset_config,
)
from artbank_pl.transfer import upload
from artbank_pl.world import WORLD
from artbank_pl.world import model_dir as world_model_dir

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_vision_encoder(name: str) -> CLIPVisionModelWithProjection:
    """Build the frozen CLIP vision model named by ``name``.

    Raises:
        PretrainedLoadError: it cannot be found or loaded.
    """
    if name == WORLD:
        name = str(world_model_dir() / "image_encoder")
        if not Path(name).is_dir():
            raise PretrainedLoadError(
                f"vision_model=world: {name} is missing; build it with `artbank world clip "
                f"--output {name}`"
            )
    if name in RANDOM_PRESETS:
        init = preset_config(name, "init")
        config = CLIPVisionConfig(**preset_config(name, "vision_encoder"))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init["seed"] + 1)
            model = CLIPVisionModelWithProjection(config)
        return freeze(model)
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
        raise PretrainedLoadError(f"vision_model={name!r}: no such folder")
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(str(Path(name).expanduser()))
    except (OSError, ValueError) as err:
        raise PretrainedLoadError(
            f"cannot load vision_model={name!r}: {str(err).splitlines()[0]} Pre-stage it "
            f"(`hf download {name}`, HF_HOME) or point vision_model at a local folder."
        ) from err
    return freeze(model)


def clip_resize_size(height: int, width: int, image_size: int) -> tuple[int, int]:
    """``(h, w)`` after CLIP's shorter-side resize: the long side is truncated, not rounded."""
    if height <= width:
        return image_size, int(image_size * width / height)
    return int(image_size * height / width), image_size


def clip_resize_crop(pixels: torch.Tensor, image_size: int) -> torch.Tensor:
    """Resize ``[-1, 1]`` pixels ``[B, 3, H, W]`` as ``CLIPImageProcessor`` does; ``[0, 1]``.

    The shorter side becomes ``image_size`` and the longer ``int(image_size * long /
    short)`` (transformers truncates, it does not round), bicubic with antialiasing, then a
    centred ``image_size`` square is cropped.
    """
    x = (pixels.float().clamp(-1, 1) + 1) / 2
    h, w = x.shape[-2:]
    size = clip_resize_size(h, w, image_size)
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    top, left = (size[0] - image_size) // 2, (size[1] - image_size) // 2
    return x[..., top : top + image_size, left : left + image_size].clamp(0, 1)


def clip_preprocess(pixels: torch.Tensor, image_size: int) -> torch.Tensor:
    """Turn ``[-1, 1]`` pixels ``[B, 3, H, W]`` into CLIP's input.

    :func:`clip_resize_crop`, then normalise with CLIP's mean and std, as
    ``CLIPImageProcessor`` does. (The official InST code cast ``[-1, 1]`` floats straight
    to uint8, which feeds CLIP an almost black image.)
    """
    x = clip_resize_crop(pixels, image_size)
    mean, std = _clip_mean_std(x.device)
    return (x - mean) / std


@functools.cache
def _clip_mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's mean and std ``[1, 3, 1, 1]`` on ``device``, copied there once per process."""
    mean, std = upload([CLIP_MEAN, CLIP_STD], device, torch.float32).view(2, 1, 3, 1, 1)
    return mean, std


@torch.no_grad()
def inverter_inputs(
    vision: nn.Module, pixels: torch.Tensor, kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """InST's input of ``[-1, 1]`` pixels from a frozen CLIP: features and image embedding.

    Features ``[B, S, c]``: ``patch``, the post-layernorm patch tokens; ``pooled``, the
    L2-normalised projected image embedding (``S = 1``), as the official InST code feeds its
    inverter. The embedding ``[B, projection_dim]`` (L2-normalised) is what an inverter's
    queries start from; one forward pass gives both.
    """
    device, dtype = next(vision.parameters()).device, next(vision.parameters()).dtype
    inputs = clip_preprocess(pixels.to(device), vision.config.image_size).to(dtype)
    with outside_autocast(device):
        out = vision(pixel_values=inputs)
    embedding = F.normalize(out.image_embeds.float(), dim=-1)
    if kind == "pooled":
        return embedding.unsqueeze(1), embedding
    return vision.vision_model.post_layernorm(out.last_hidden_state).float(), embedding


def image_features(vision: nn.Module, pixels: torch.Tensor, kind: str) -> torch.Tensor:
    """InST's input features ``[B, S, c]`` alone (see :func:`inverter_inputs`)."""
    return inverter_inputs(vision, pixels, kind)[0]
