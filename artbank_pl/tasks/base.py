"""The base LightningModule: a frozen Stable Diffusion and the diffusion training loss."""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from lightning.pytorch import LightningModule
from torch import nn

from artbank_pl import diffusion
from artbank_pl.errors import ConfigError
from artbank_pl.optim import LRSchedule, warmup_schedule_factor
from artbank_pl.options import check_at_least, check_betas, check_fraction, check_positive
from artbank_pl.ratelimit import worth_logging
from artbank_pl.sd import (
    StableDiffusionParts,
    freeze,
    half_dtype,
    load_parts,
    load_vae,
    outside_autocast,
)
from artbank_pl.tasks.conditioning import (
    TextConditioning,
    as_conditioning,
    micro_conditioning,
    repad,
)
from artbank_pl.tasks.prompts import PromptTokens, fit_caption, tokenize_prompts
from artbank_pl.tasks.sampling import SamplingMixin
from artbank_pl.transfer import upload

log = logging.getLogger(__name__)


def sample_seed(key: str, seed: int) -> int:
    """Return a 63-bit seed derived from a sample key and a global seed.

    A hash of both, so that every bit varies: torch's CPU generator keeps only the low 32
    bits of a seed, so a key placed in the high bits would not change the draws at all.
    """
    digest = hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def training_draw_seed(seed: int, rank: int, draw_index: int) -> int:
    """Seed of the random draws of one training batch: from (seed, global rank, batch index).

    Ranks draw differently, and a resumed run draws what the uninterrupted run would have
    drawn at the same batch, because nothing depends on the global RNG's history.
    """
    return sample_seed(f"train/rank{rank}/batch{draw_index}", seed)


@contextmanager
def _spliced_embeddings(
    embedding: nn.Module, tokens: PromptTokens, vectors: torch.Tensor
) -> Iterator[None]:
    """Replace the token-embedding outputs at ``tokens``' placeholders by ``vectors``.

    An index write at positions known in advance: a boolean-mask scatter would make the
    host wait for the GPU to count the mask.
    """

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return output.index_put((tokens.rows, tokens.cols), vectors.to(output.dtype))

    handle = embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class FrozenDiffusionTask(SamplingMixin, LightningModule):
    """A frozen Stable Diffusion that trainable style modules condition through its prompt.

    The UNet, VAE and text encoder take no gradient, stay in eval mode, are cast to the
    half type of ``bf16-*``/``16-*`` precision, and are left out of ``state_dict`` (and so
    of every checkpoint); subclasses own the trainable parameters, which stay float32.

    Args:
        pretrained: ``tiny``, a local diffusers folder, or a hub id.
        revision: hub revision of ``pretrained``.
        variant: weight variant of ``pretrained``, e.g. ``fp16``.
        vae_fp32: keep the VAE in float32 under half precision (avoids VAE overflow).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear warm-up steps.
        lr_schedule: ``cosine`` decay to ``min_lr_ratio`` at ``max_steps``, or ``constant``.
        min_lr_ratio: final learning rate as a fraction of ``lr`` (cosine only).
        min_snr_gamma: min-SNR-gamma loss weighting; ``None`` turns it off.
        noise_offset: noise offset (0 turns it off).
        val_seed: seed of the fixed per-sample noise used in validation.
        compile_unet: ``torch.compile`` the UNet (worth it for long runs: the first step
            compiles for minutes; shapes stay fixed, so it does not recompile).
        channels_last: run the UNet and VAE in channels-last memory format (faster convs
            on recent GPUs).
        clip_skip: condition on the output of the text encoder's ``clip_skip``-th layer from
            the end (1: the penultimate, for models trained that way), final-normed as
            diffusers does; 0 is the last layer.
        vae: another autoencoder (a folder or hub id), e.g. SDXL's fp16-fix VAE
            (``madebyollin/sdxl-vae-fp16-fix``); ``None`` keeps ``pretrained``'s.
    """

    frozen_names: tuple[str, ...] = ("unet", "vae", "text_encoder", "text_encoder_2")

    def __init__(
        self,
        pretrained: str = "tiny",
        revision: str | None = None,
        variant: str | None = None,
        vae_fp32: bool = False,
        lr: float = 5e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_schedule: LRSchedule = "cosine",
        min_lr_ratio: float = 0.0,
        min_snr_gamma: float | None = None,
        noise_offset: float = 0.0,
        val_seed: int = 0,
        compile_unet: bool = False,
        channels_last: bool = False,
        clip_skip: int = 0,
        vae: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_at_least("model.clip_skip", clip_skip, 0)
        check_at_least("model.lr", lr, 0)  # 0 is allowed: it checks where a run starts
        check_at_least("model.weight_decay", weight_decay, 0)
        check_at_least("model.warmup_steps", warmup_steps, 0)
        check_at_least("model.noise_offset", noise_offset, 0)
        check_fraction("model.min_lr_ratio", min_lr_ratio, include_one=True)
        check_betas("model.betas", betas)
        check_positive("model.min_snr_gamma", min_snr_gamma)
        parts = load_parts(pretrained, revision, variant)
        self.unet = parts.unet
        self.vae = load_vae(vae) if vae else parts.vae  # `revision` is pretrained's
        self.text_encoder = parts.text_encoder
        self.tokenizer = parts.tokenizer
        self.noise_scheduler = parts.noise_scheduler
        self.text_encoder_2 = parts.text_encoder_2
        self.tokenizer_2 = parts.tokenizer_2
        # Checkpoints hold the trainables only; load_state_dict checks them strictly itself.
        self.strict_loading = False

    # ------------------------------------------------------------------ frozen parts
    @property
    def parts(self) -> StableDiffusionParts:
        """The frozen parts, e.g. to build a diffusers pipeline around them."""
        return StableDiffusionParts(
            self.unet, self.vae, self.text_encoder, self.tokenizer, self.noise_scheduler,
            self.text_encoder_2, self.tokenizer_2,
        )  # fmt: skip

    @property
    def is_xl(self) -> bool:
        """Whether the model is SDXL (two text encoders, pooled text, micro-conditioning)."""
        return self.text_encoder_2 is not None

    @property
    def text_encoders(self) -> list:
        """The text encoders: ``[text_encoder]``, on SDXL ``[text_encoder, text_encoder_2]``."""
        return [e for e in (self.text_encoder, self.text_encoder_2) if e is not None]

    @property
    def text_widths(self) -> tuple[int, ...]:
        """The token-embedding width of each text encoder: ``(d,)``, on SDXL ``(d_l, d_g)``.

        A style's vectors are ``[n, sum(text_widths)]``: on SDXL each row is its CLIP-L
        vector followed by its OpenCLIP-G vector.
        """
        return tuple(e.get_input_embeddings().embedding_dim for e in self.text_encoders)

    @property
    def prediction_type(self) -> str:
        """The scheduler's prediction type: ``epsilon``, ``v_prediction`` or ``sample``."""
        return self.noise_scheduler.config.prediction_type

    def setup(self, stage: str) -> None:
        """Cast the frozen parts to the half type the trainer's precision asks for."""
        dtype = half_dtype(self.trainer.precision) if self._trainer else torch.float32
        self.cast_frozen(dtype)
        if self.hparams.channels_last:
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        if self.hparams.compile_unet and not getattr(self, "_unet_compiled", False):
            self.unet.compile(dynamic=False)
            self._unet_compiled = True

    def cast_frozen(self, dtype: torch.dtype) -> None:
        """Cast the UNet and text encoder (and the VAE unless ``vae_fp32``) to ``dtype``."""
        vae_dtype = torch.float32 if self.hparams.vae_fp32 else dtype
        if self.is_xl and dtype == torch.float16 and self.vae.config.get("force_upcast"):
            vae_dtype = torch.float32  # SDXL's VAE overflows in float16, as diffusers upcasts
        for module, target in (
            (self.unet, dtype),
            (self.text_encoder, dtype),
            (self.text_encoder_2, dtype),
            (self.vae, vae_dtype),
        ):
            if module is not None and module.dtype != target:
                module.to(target)

    def train(self, mode: bool = True) -> FrozenDiffusionTask:
        """Switch train/eval mode of the trainable parts; frozen parts stay in eval."""
        super().train(mode)
        for name in self.frozen_names:
            if getattr(self, name) is not None:
                freeze(getattr(self, name))
        return self

    def _frozen_prefixes(self, prefix: str = "") -> tuple[str, ...]:
        return tuple(f"{prefix}{name}." for name in self.frozen_names)

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Return the trainable state only: frozen weights are left out."""
        state = super().state_dict(*args, **kwargs)
        frozen = self._frozen_prefixes(kwargs.get("prefix", ""))
        for key in [k for k in state if k.startswith(frozen)]:
            del state[key]
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load trainable state; a missing or unexpected trainable key is an error."""
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        frozen = self._frozen_prefixes()
        missing = [k for k in result.missing_keys if not k.startswith(frozen)]
        unexpected = list(result.unexpected_keys)
        if missing or unexpected:
            raise RuntimeError(
                f"checkpoint does not match {type(self).__name__}: "
                f"missing keys {missing}, unexpected keys {unexpected}"
            )
        # the frozen parts are by design not in checkpoints: report nothing missing, so that
        # load_from_checkpoint does not list every frozen key in a warning
        return type(result)(missing_keys=[], unexpected_keys=[])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record the text encoders' widths, so exports know an SDXL style's two parts."""
        checkpoint["text_widths"] = list(self.text_widths)

    # ------------------------------------------------------------------ conditioning
    def fitted_prompt(self, build: Callable[[str], str], caption: str | None) -> str:
        """Return ``build(caption)`` with the caption shortened to fit CLIP, counted and logged.

        A caption too long for the 77 tokens is a per-sample problem, not the run's: it
        loses its last words (see :func:`~artbank_pl.tasks.prompts.fit_caption`).
        """
        prompt, shortened = fit_caption(self.tokenizer, build, caption or "")
        if shortened:
            self.captions_shortened = getattr(self, "captions_shortened", 0) + 1
            if worth_logging(self.captions_shortened):
                log.warning("shortened a caption to fit CLIP's %d tokens: %r... (%d so far)",
                            self.tokenizer.model_max_length, caption[:60],
                            self.captions_shortened)  # fmt: skip
        return prompt

    def prompt_tokens(
        self, prompts: Sequence[str], first_placeholder_id: int | None = None
    ) -> PromptTokens:
        """Tokenize prompts to ``[B, 77]`` ids on this device, with their placeholders' places.

        Raises:
            ConfigError: truncation would cut a placeholder (style) token off a prompt.
        """
        return tokenize_prompts(self.tokenizer, prompts, first_placeholder_id, self.device)

    def tokenize(
        self, prompts: Sequence[str], first_placeholder_id: int | None = None
    ) -> torch.Tensor:
        """Tokenize prompts to ``[B, 77]`` ids on this device, padded and truncated.

        Raises:
            ConfigError: truncation would cut a placeholder (style) token off a prompt.
        """
        return self.prompt_tokens(prompts, first_placeholder_id).ids

    def text_hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Return the text conditioning of ids: the last layer, or ``clip_skip`` layers back."""
        skip = self.hparams.get("clip_skip", 0)
        with outside_autocast(self.device):
            if not skip:
                return self.text_encoder(input_ids).last_hidden_state
            out = self.text_encoder(input_ids, output_hidden_states=True)
            return self.text_encoder.final_layer_norm(out.hidden_states[-(skip + 1)])

    def encode_text(
        self, tokens: PromptTokens, vectors: torch.Tensor
    ) -> torch.Tensor | TextConditioning:
        """Run the text encoder with placeholder token embeddings spliced in.

        The token embeddings at the placeholders (before position embeddings are added, as
        in textual inversion) become ``vectors``, so the vocabulary matrix is never touched
        and gradients flow into whatever ``vectors`` were computed from.

        Args:
            tokens: the prompts' ids and placeholder positions.
            vectors: ``[M, sum(text_widths)]``, one per placeholder token, in ``tokens``'
                order (on SDXL the CLIP-L part, then the OpenCLIP-G part).

        Returns:
            The last hidden state ``[B, L, d]`` in the text encoder's dtype; on SDXL a
            :class:`TextConditioning` (see :meth:`encode_text_xl`).
        """
        if self.is_xl:
            return self.encode_text_xl(tokens, vectors)
        if not tokens.count:
            return self.text_hidden_states(tokens.ids)
        with _spliced_embeddings(self.text_encoder.get_input_embeddings(), tokens, vectors):
            return self.text_hidden_states(tokens.vocabulary_ids())

    def encode_text_xl(self, tokens: PromptTokens, vectors: torch.Tensor) -> TextConditioning:
        """SDXL's text conditioning with placeholder vectors spliced into both encoders.

        As diffusers' SDXL pipelines: each encoder's hidden states ``clip_skip + 2`` layers
        from the end (the penultimate by default, not final-normed), concatenated, and the
        second encoder's projected pooled output (``text_embeds``). The second tokenizer's
        ids are the first's with its own padding.
        """
        width = self.text_widths[0]
        vectors_l, vectors_g = vectors[..., :width], vectors[..., width:]
        layer = -(self.hparams.get("clip_skip", 0) + 2)
        ids = tokens.vocabulary_ids()
        tok_2 = self.tokenizer_2
        ids_2 = repad(ids, tok_2.eos_token_id, tok_2.pad_token_id)
        hidden = []
        with outside_autocast(self.device):
            for encoder, encoder_ids, part in (
                (self.text_encoder, ids, vectors_l),
                (self.text_encoder_2, ids_2, vectors_g),
            ):
                embedding = encoder.get_input_embeddings()
                splice = _spliced_embeddings(embedding, tokens, part) if tokens.count else None
                with splice or nullcontext():
                    out = encoder(encoder_ids, output_hidden_states=True)
                hidden.append(out.hidden_states[layer])
        return TextConditioning(torch.cat(hidden, dim=-1), out.text_embeds)

    def empty_conditioning(self) -> torch.Tensor | TextConditioning:
        """Return the unconditional branch of guidance: the empty prompt; on SDXL zeros.

        SDXL was trained with dropped prompts zeroed, so diffusers' SDXL pipelines guide
        against zeros when no negative prompt is given (``force_zeros_for_empty_prompt``).
        """
        if not self.is_xl:
            return self.text_hidden_states(self.tokenize([""]))
        options = {"device": self.device, "dtype": self.text_encoder_2.dtype}
        length = self.tokenizer.model_max_length
        return TextConditioning(
            torch.zeros(1, length, sum(self.text_widths), **options),
            torch.zeros(1, self.text_encoder_2.config.projection_dim, **options),
        )

    def batch_time_ids(self, batch: dict, latents: torch.Tensor) -> torch.Tensor | None:
        """SDXL's micro-conditioning of a training batch (``None`` on other models).

        Each sample's own original size and crop corner, as the data module reads them
        (``original_size``, ``crop_top_left``), with the trained size as the target; a batch
        without them (cached latents of older shards) is taken as uncropped at its size.
        """
        if not self.is_xl:
            return None
        if "original_size" not in batch:
            if not getattr(self, "_warned_no_sizes", False):
                self._warned_no_sizes = True
                log.warning(
                    "SDXL training on batches without each image's original size and crop "
                    "(a latent cache written before they were recorded): conditioning on the "
                    "trained size, uncropped"
                )
            return self.image_time_ids(latents)
        target = (latents.shape[-2] * self.vae_scale, latents.shape[-1] * self.vae_scale)
        sizes, crops = batch["original_size"], batch["crop_top_left"]
        return micro_conditioning(sizes.to(self.device), crops.to(self.device), target)

    @torch.no_grad()
    def encode_latents(
        self,
        pixel_values: torch.Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Encode ``[-1, 1]`` pixels to scaled latents (float32).

        Args:
            pixel_values: ``[B, 3, H, W]`` in ``[-1, 1]``.
            sample: draw from the VAE posterior (training); else take its mean.
            generator: generator of the posterior draw (on this module's device).
        """
        pixels = pixel_values.to(device=self.device, dtype=self.vae.dtype)
        with outside_autocast(self.device):
            posterior = self.vae.encode(pixels).latent_dist
        return self._scaled_latents(posterior, sample, generator)

    def _scaled_latents(self, posterior, sample: bool, generator) -> torch.Tensor:
        latents = posterior.sample(generator) if sample else posterior.mode()
        return latents.float() * self.vae.config.scaling_factor

    @torch.no_grad()
    def batch_latents(
        self, batch: dict, sample: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Latents of a batch: from cached VAE moments when the batch has them, else encoded.

        Cached ``moments`` are the posterior's mean and log-variance, so sampling them is
        the same draw as encoding the pixels (``artbank shards cache``).

        Args:
            batch: a training batch (``pixel_values`` or ``moments``).
            sample: draw from the posterior (training); else take its mean.
            generator: generator of the posterior draw (on this module's device).
        """
        if "moments" not in batch:
            return self.encode_latents(batch["pixel_values"], sample, generator)
        posterior = DiagonalGaussianDistribution(batch["moments"].to(self.device).float())
        return self._scaled_latents(posterior, sample, generator)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode scaled latents to ``[0, 1]`` float32 pixels ``[B, 3, H, W]``."""
        scaled = (latents / self.vae.config.scaling_factor).to(self.vae.dtype)
        with outside_autocast(self.device):
            decoded = self.vae.decode(scaled).sample.float()
        return ((decoded + 1) / 2).clamp(0, 1)

    # ------------------------------------------------------------------ loss
    def training_generators(self) -> tuple[torch.Generator, random.Random]:
        """Fresh (device, host) generators for this training batch's random draws.

        Seeded from ``seed_everything``'s seed (``PL_GLOBAL_SEED``, else ``val_seed``), the
        global rank and the count of training batches so far, which Lightning restores on
        resume: see :func:`training_draw_seed`. The host one is Python's, so that host draws
        (caption prompts' templates) never touch a tensor.
        """
        seed = int(os.environ.get("PL_GLOBAL_SEED", self.hparams.val_seed))
        trainer = self._trainer
        index = trainer.fit_loop.epoch_loop.batch_progress.total.ready if trainer else 0
        value = training_draw_seed(seed, self.global_rank, index)
        device_gen = torch.Generator(device=self.device).manual_seed(value)
        return device_gen, random.Random(value)

    def _noise_and_timesteps(
        self,
        latents: torch.Tensor,
        keys: Sequence[str] | None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw noise and timesteps: from ``generator`` in training, fixed per key otherwise."""
        num_steps = self.noise_scheduler.config.num_train_timesteps
        offset = self.hparams.noise_offset
        if keys is None:
            n, device = latents.shape[0], self.device
            t = torch.randint(0, num_steps, (n,), device=device, generator=generator)
            noise = diffusion.offset_noise(latents.shape, offset, generator, device)
            return noise, t
        noises, steps = [], []
        for key in keys:
            gen = torch.Generator().manual_seed(sample_seed(key, self.hparams.val_seed))
            steps.append(torch.randint(0, num_steps, (1,), generator=gen))
            noises.append(diffusion.offset_noise((1, *latents.shape[1:]), offset, gen))
        return upload(torch.cat(noises), self.device), upload(torch.cat(steps), self.device)

    def alphas_cumprod(self, timesteps: torch.Tensor) -> torch.Tensor:
        """``abar_t`` of ``timesteps`` (float32), from a table copied to the device once."""
        source = self.noise_scheduler.alphas_cumprod
        cached = getattr(self, "_abar_table", None)  # (source table, its device copy)
        if cached is None or cached[0] is not source or cached[1].device != timesteps.device:
            cached = (source, upload(source.float(), timesteps.device))
            self._abar_table = cached
        return cached[1][timesteps]

    def diffusion_loss(
        self,
        latents: torch.Tensor,
        encoder_hidden_states: torch.Tensor | TextConditioning,
        keys: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Per-sample denoising loss against the scheduler's prediction type.

        Args:
            latents: clean latents ``[B, C, h, w]``.
            encoder_hidden_states: text conditioning ``[B, L, d]`` (SDXL: a
                :class:`TextConditioning` with each sample's micro-conditioning).
            keys: sample keys; when given, noise and timesteps are fixed per key
                (deterministic validation), otherwise drawn at random.
            generator: generator of the random draws (on this module's device).

        Returns:
            ``[B]`` losses, min-SNR weighted when ``min_snr_gamma`` is set.
        """
        noise, timesteps = self._noise_and_timesteps(latents, keys, generator)
        abar = self.alphas_cumprod(timesteps)
        noisy = diffusion.add_noise(latents, noise, abar)
        cond = as_conditioning(encoder_hidden_states)
        if cond.pooled is not None and cond.time_ids is None:  # no per-sample sizes given
            cond = cond.with_time_ids(self.image_time_ids(latents))
        pred = self.unet_forward(noisy, timesteps, cond)
        target = diffusion.training_target(self.prediction_type, latents, noise, abar)
        losses = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        gamma = self.hparams.min_snr_gamma
        if gamma is not None:
            losses = losses * diffusion.min_snr_weights(abar, gamma, self.prediction_type)
        return losses

    # ------------------------------------------------------------------ optimisation
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that train: everything outside the frozen parts."""
        return [p for p in self.parameters() if p.requires_grad]

    def optimizer_groups(self) -> list[dict]:
        """AdamW parameter groups; one group at ``lr`` unless a task splits its trainables."""
        return [{"params": self.trainable_parameters()}]

    def configure_optimizers(self):
        """AdamW (fused on CUDA) with linear warm-up and cosine or constant schedule.

        The schedule multiplies every group's own learning rate by the same factor.
        """
        groups = [group for group in self.optimizer_groups() if group["params"]]
        params = [p for group in groups for p in group["params"]]
        fused = bool(params) and all(p.is_cuda for p in params)
        optimizer = torch.optim.AdamW(
            groups,
            lr=self.hparams.lr,
            betas=tuple(self.hparams.betas),
            weight_decay=self.hparams.weight_decay,
            fused=fused or None,
        )
        total = self._total_steps()
        hp = self.hparams
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_schedule_factor(
                step, hp.warmup_steps, total, hp.lr_schedule, hp.min_lr_ratio
            ),
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def _total_steps(self) -> int:
        if self.hparams.lr_schedule == "constant":
            return 1
        total = self.trainer.estimated_stepping_batches
        if total is None or total == float("inf"):
            raise ConfigError("lr_schedule=cosine needs trainer.max_steps to be set")
        return int(total)
