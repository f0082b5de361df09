"""The one seam that builds the frozen Stable Diffusion parts.

``pretrained`` is a hub id (``stable-diffusion-v1-5/stable-diffusion-v1-5``), a local
diffusers folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``),
or ``tiny``: random weights from the configs in ``artbank_pl/tiny/``, seeded so that
every process builds bit-identical weights.

An SDXL model (a folder or hub id whose UNet has ``addition_embed_type: text_time``, or the
``tiny-xl`` preset) brings a second text encoder and tokenizer (``text_encoder_2/``,
``tokenizer_2/``: OpenCLIP ViT-bigG with its projection, whose pooled output conditions
the UNet beside the six micro-conditioning numbers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)
from transformers.utils import logging as transformers_logging

from artbank_pl.errors import ArtbankError
from artbank_pl.tokenizer import build_clip_tokenizer
from artbank_pl.world import WORLD, WORLD_XL, model_xl_dir
from artbank_pl.world import model_dir as world_model_dir

TINY = "tiny"
TINY_XL = "tiny-xl"
# random-weight models built from configs in the package: "tiny" and "tiny-xl" (SDXL's
# architecture: two text encoders, text_time conditioning) for tests and the demo,
# "random-sd15" and "random-sdxl" (SD 1.5's and SDXL base's sizes) for benchmarks
RANDOM_PRESETS = {
    TINY: Path(__file__).parent / "tiny",
    TINY_XL: Path(__file__).parent / "tiny_xl",
    "random-sd15": Path(__file__).parent / "random_sd15",
    "random-sdxl": Path(__file__).parent / "random_sdxl",
}
#: the UNet config value that marks SDXL's conditioning (pooled text and micro-conditioning)
SDXL_ADDITION = "text_time"


def _no_weight_loading_bar(factory, args: tuple, kwargs: dict):
    """Drop transformers' bar for reading weights from disk ("Loading weights 36/36").

    That bar counts tensors of a local file in milliseconds and asks nothing of the user; the
    hub's download bars (another library's) are left alone.
    """
    if kwargs.get("desc") == "Loading weights":
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


transformers_logging.set_tqdm_hook(_no_weight_loading_bar)


class PretrainedLoadError(ArtbankError, RuntimeError):
    """Raised when a ``pretrained`` model cannot be found or loaded."""


@dataclass
class StableDiffusionParts:
    """The frozen parts of a Stable Diffusion model.

    Attributes:
        unet: the denoiser.
        vae: the autoencoder between pixels and latents.
        text_encoder: the CLIP text encoder.
        tokenizer: the CLIP tokenizer matching ``text_encoder``.
        noise_scheduler: the training noise schedule (a ``DDPMScheduler``).
        text_encoder_2: SDXL's second text encoder (with projection), else ``None``.
        tokenizer_2: the tokenizer of ``text_encoder_2``, else ``None``.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None

    @property
    def is_xl(self) -> bool:
        """Whether this is SDXL: two text encoders, pooled text and micro-conditioning."""
        return self.text_encoder_2 is not None

    def diffusers_pipeline(self, image_to_image: bool = True, scheduler=None):
        """Build diffusers' own pipeline around these parts (they are shared, not copied).

        ``StableDiffusion(XL)Img2ImgPipeline``, or the text-to-image one, with the given
        sampler (default: a DDIM from the model's scheduler config); no safety checker or
        watermark, so that outputs are the model's.
        """
        import diffusers

        scheduler = scheduler or diffusers.DDIMScheduler.from_config(self.noise_scheduler.config)
        name = "StableDiffusionXL" if self.is_xl else "StableDiffusion"
        cls = getattr(diffusers, f"{name}{'Img2Img' if image_to_image else ''}Pipeline")
        common = {"vae": self.vae, "text_encoder": self.text_encoder, "unet": self.unet,
                  "tokenizer": self.tokenizer, "scheduler": scheduler}  # fmt: skip
        if self.is_xl:
            extra = {"text_encoder_2": self.text_encoder_2, "tokenizer_2": self.tokenizer_2,
                     "add_watermarker": False}  # fmt: skip
        else:
            extra = {"safety_checker": None, "feature_extractor": None,
                     "requires_safety_checker": False}  # fmt: skip
        pipe = cls(**common, **extra)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @property
    def prediction_type(self) -> str:
        """``epsilon`` (SD 1.x), ``v_prediction`` (SD 2.x 768) or ``sample``."""
        return self.noise_scheduler.config.prediction_type


def preset_config(preset: str, name: str) -> dict:
    """Return the JSON config of a part (``unet``, ``vae``, ...) of a random preset."""
    return json.loads((RANDOM_PRESETS[preset] / f"{name}.json").read_text())


def tiny_config(name: str) -> dict:
    """Return the JSON config of a tiny part (``unet``, ``vae``, ``text_encoder``, ...)."""
    return preset_config(TINY, name)


@torch.no_grad()
def sharpen_cross_attention(
    unet: UNet2DConditionModel, qk_scale: float, value_scale: float
) -> None:
    """Scale the random cross-attention projections of a freshly initialised UNet.

    At random init, cross-attention is nearly uniform over the 77 prompt tokens, so the
    few placeholder tokens of a prompt barely move the output and nothing can be learned
    through them; a trained SD attends sharply. Scaling query and key (logits by
    ``qk_scale**2``) and value and output gives the tiny model a conditioning path that
    matters, as a trained one has.
    """
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            module.to_q.weight.mul_(qk_scale)
            module.to_k.weight.mul_(qk_scale)
            module.to_v.weight.mul_(value_scale)
            module.to_out[0].weight.mul_(value_scale)


def build_tiny_parts(preset: str = TINY) -> StableDiffusionParts:
    """Build a random-weight Stable Diffusion from a preset's configs (tiny: well under 1 s).

    Weights are drawn from a fixed seed (``<preset>/init.json``), so every process builds
    the same model.
    """
    init = preset_config(preset, "init")
    second = (RANDOM_PRESETS[preset] / "text_encoder_2.json").is_file()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init["seed"])
        unet = UNet2DConditionModel(**preset_config(preset, "unet"))
        vae = AutoencoderKL(**preset_config(preset, "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**preset_config(preset, "text_encoder")))
        text_encoder_2 = (
            CLIPTextModelWithProjection(CLIPTextConfig(**preset_config(preset, "text_encoder_2")))
            if second
            else None
        )
    sharpen_cross_attention(
        unet, init["cross_attention_qk_scale"], init["cross_attention_value_scale"]
    )
    scheduler = DDPMScheduler.from_config(preset_config(preset, "scheduler"))
    tokenizer_2 = openclip_tokenizer() if second else None
    return StableDiffusionParts(
        unet, vae, text_encoder, build_clip_tokenizer(), scheduler, text_encoder_2, tokenizer_2
    )


def openclip_tokenizer() -> CLIPTokenizer:
    """Build the offline CLIP tokenizer padded with id 0 (``!``), as OpenCLIP's were trained.

    SD 2.x's and SDXL's second tokenizer are this one.
    """
    tokenizer = build_clip_tokenizer()
    tokenizer.pad_token = "!"
    return tokenizer


def _is_local(pretrained: str) -> bool:
    return Path(pretrained).expanduser().is_dir()


def _looks_like_path(pretrained: str) -> bool:
    # hub ids are "owner/name"; anything else with a separator is meant as a folder
    return pretrained.startswith((".", "/", "~")) or pretrained.count("/") > 1


def _load_tokenizer(
    pretrained: str, revision: str | None, text_encoder: CLIPTextModel, subfolder: str
) -> CLIPTokenizer:
    """Load the folder's tokenizer, or the offline CLIP one padded as its text encoder wants.

    OpenAI's CLIP text encoders (``quick_gelu``; SD 1.x) were trained with ``<|endoftext|>``
    padding; OpenCLIP's (``gelu``; SD 2.x, SDXL's second) with id 0 (``!``), as SD 2.x
    tokenizers say.
    """
    if _is_local(pretrained) and not (Path(pretrained).expanduser() / subfolder).is_dir():
        if text_encoder.config.hidden_act == "gelu":
            return openclip_tokenizer()
        return build_clip_tokenizer()
    return CLIPTokenizer.from_pretrained(pretrained, subfolder=subfolder, revision=revision)


def _load_pretrained_parts(
    pretrained: str, revision: str | None, variant: str | None
) -> StableDiffusionParts:
    if _is_local(pretrained):
        pretrained = str(Path(pretrained).expanduser())
    kwargs = {"revision": revision}
    unet = UNet2DConditionModel.from_pretrained(
        pretrained, subfolder="unet", variant=variant, **kwargs
    )
    text_encoder = CLIPTextModel.from_pretrained(
        pretrained, subfolder="text_encoder", variant=variant, **kwargs
    )
    text_encoder_2 = tokenizer_2 = None
    if unet.config.addition_embed_type == SDXL_ADDITION:
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
            pretrained, subfolder="text_encoder_2", variant=variant, **kwargs
        )
        tokenizer_2 = _load_tokenizer(pretrained, revision, text_encoder_2, "tokenizer_2")
    return StableDiffusionParts(
        unet=unet,
        vae=AutoencoderKL.from_pretrained(pretrained, subfolder="vae", variant=variant, **kwargs),
        text_encoder=text_encoder,
        tokenizer=_load_tokenizer(pretrained, revision, text_encoder, "tokenizer"),
        noise_scheduler=DDPMScheduler.from_pretrained(pretrained, subfolder="scheduler", **kwargs),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )


def load_world_xl(folder: Path) -> StableDiffusionParts:
    """Load world-xl: its UNet, second encoder and scheduler, and the world model's other parts.

    The autoencoder, first text encoder and tokenizer are the world model's (version 2),
    which world-xl was trained on and does not ship twice.
    """
    world = _load_pretrained_parts(str(world_model_dir()), None, None)
    return StableDiffusionParts(
        unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet"),
        vae=world.vae,
        text_encoder=world.text_encoder,
        tokenizer=world.tokenizer,
        noise_scheduler=DDPMScheduler.from_pretrained(folder, subfolder="scheduler"),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(
            folder, subfolder="text_encoder_2"
        ),
        tokenizer_2=openclip_tokenizer(),
    )


def load_vae(vae: str, revision: str | None = None) -> AutoencoderKL:
    """Load another autoencoder (``vae:``), e.g. SDXL's fp16-fix VAE: a folder or a hub id.

    A diffusers model folder is read from its ``vae/``, an autoencoder folder directly.

    Raises:
        PretrainedLoadError: it cannot be found or loaded.
    """
    local = Path(vae).expanduser()
    subfolder = "vae" if (local / "vae" / "config.json").is_file() else None
    if _looks_like_path(vae) and not local.is_dir():
        raise PretrainedLoadError(f"vae={vae!r}: no such folder")
    source = str(local) if local.is_dir() else vae
    try:
        return freeze(AutoencoderKL.from_pretrained(source, subfolder=subfolder, revision=revision))
    except (OSError, ValueError) as err:
        raise PretrainedLoadError(
            f"cannot load vae={vae!r}: {str(err).splitlines()[0]} Point `vae` at a local "
            "autoencoder folder (its config.json and weights) or a downloaded hub id."
        ) from err


def load_parts(
    pretrained: str, revision: str | None = None, variant: str | None = None
) -> StableDiffusionParts:
    """Build the frozen Stable Diffusion parts named by ``pretrained``.

    Args:
        pretrained: ``tiny``, ``tiny-xl``, ``random-sd15`` or ``random-sdxl`` (random
            weights), ``world`` (the shipped miniature SD pretrained on the planted style
            world), ``world-xl`` (the same world in SDXL's architecture), a local diffusers
            folder (SD 1.x, 2.x or SDXL), or a hub id.
        revision: hub revision (branch, tag or commit).
        variant: weight variant, e.g. ``fp16``.

    Returns:
        The parts, frozen: ``requires_grad=False`` and in eval mode.

    Raises:
        PretrainedLoadError: the model cannot be found (offline, typo, missing folder).
    """
    if pretrained == WORLD:
        pretrained = str(world_model_dir())
    if pretrained == WORLD_XL:
        parts = load_world_xl(model_xl_dir())
    elif pretrained in RANDOM_PRESETS:
        parts = build_tiny_parts(pretrained)
    elif _looks_like_path(pretrained) and not _is_local(pretrained):
        raise PretrainedLoadError(f"pretrained={pretrained!r}: no such folder")
    else:
        try:
            parts = _load_pretrained_parts(pretrained, revision, variant)
        except (OSError, ValueError) as err:
            raise PretrainedLoadError(
                f"cannot load pretrained={pretrained!r}: {str(err).splitlines()[0]} "
                f"Download it where there is internet (`hf download {pretrained}`) and set "
                "HF_HOME, or point `pretrained` at a local diffusers folder."
            ) from err
    for module in (parts.unet, parts.vae, parts.text_encoder, parts.text_encoder_2):
        if module is not None:
            freeze(module)
    return parts


def outside_autocast(device: torch.device | str):
    """Turn autocast off for the frozen parts, which already hold the half type.

    Under autocast, GroupNorm and LayerNorm run in float32 on CUDA, so a half-precision
    frozen UNet moves more memory (the review estimated ~1.7 GB more per SD-1.5 image; not
    measured here, no GPU was lent); the trainables still run (and
    keep their float32 weights) under the trainer's autocast outside this context.
    """
    return torch.autocast(torch.device(device).type, enabled=False)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Set ``requires_grad=False`` on every parameter and put the module in eval mode."""
    module.requires_grad_(False)
    module.eval()
    return module


def half_dtype(precision: str | int | None) -> torch.dtype:
    """Return the dtype frozen parts take under a Lightning precision setting.

    ``bf16-mixed``/``bf16-true`` give bfloat16, ``16-mixed``/``16-true`` give float16,
    anything else float32. Trainable parameters are not affected by this.
    """
    text = str(precision)
    if text.startswith("bf16"):
        return torch.bfloat16
    if text.startswith("16"):
        return torch.float16
    return torch.float32
