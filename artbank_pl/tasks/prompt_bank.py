"""ArtBank training: an Implicit Style Prompt Bank with SSAM on a frozen Stable Diffusion."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from artbank_pl.errors import ConfigError
from artbank_pl.modules import ImplicitStylePromptBank
from artbank_pl.modules.ssam import BankAttention, default_attention_lr
from artbank_pl.optim import LRSchedule
from artbank_pl.options import check_at_least, check_fraction
from artbank_pl.tasks.conditioning import TextConditioning
from artbank_pl.tasks.prompts import PromptTokens
from artbank_pl.tasks.style import StyleTask
from artbank_pl.tokenizer import (
    add_placeholder_tokens,
    expand_placeholder,
    placeholder_token,
    single_token_id,
)


class PromptBankTask(StyleTask):
    """Train an ArtBank prompt bank: one ``n x d`` matrix per collection, read through SSAM.

    Each training prompt is a template holding the collection's placeholder (``<name>``,
    expanded to ``n`` tokens), optionally followed by the sample's caption. The bank's output
    replaces the placeholder token embeddings inside the frozen text encoder, so only the
    bank and its attention train.

    Args:
        collections: collection names in bank order; linked from the datamodule's manifest.
        num_tokens: token vectors per collection.
        bank_attention: ``ssam`` (ArtBank), ``self`` (plain self-attention, as in the
            released ArtBank weights) or ``none`` (multi-vector textual inversion). Every
            mode starts exactly at the initializer's embedding. With ``num_tokens: 1`` the
            row and statistical branches of ``ssam`` degenerate to linear maps.
        bank_heads: heads of the bank's row attention.
        bank_dropout: attention dropout in the bank.
        attention_lr: learning rate of the bank attention's weights (SSAM's or
            self-attention's projections and norms), their own AdamW group beside the
            vectors at ``lr``. ``None``: ``lr * 3.2 / d`` (see
            :func:`default_attention_lr`), so the first step moves the output by as much as
            at the measured width, whatever the text encoder's width ``d``.
        initializer_token: a one-token word whose embedding starts every prompt vector;
            ``None`` starts from small random vectors.
        init_embeddings: continue existing embeddings instead: an exported ``.safetensors``
            file or folder (diffusers or A1111 form, ours or another tool's) or a bank
            checkpoint. Each collection starts at the entry of its name; a source holding
            one embedding starts every collection. Its vectors must be ``num_tokens x d``
            and finite.
        templates: prompt templates with one ``{}`` for the placeholder.
        use_captions: append each sample's caption (when it has one) to its prompt.
        pretrained: ``tiny``, a local diffusers folder, or a hub id.
        revision: hub revision of ``pretrained``.
        variant: weight variant of ``pretrained``.
        vae_fp32: keep the VAE in float32 under half precision.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear warm-up steps.
        lr_schedule: ``cosine`` or ``constant``.
        min_lr_ratio: final learning-rate fraction of the cosine schedule.
        min_snr_gamma: min-SNR-gamma weighting; ``None`` turns it off.
        noise_offset: noise offset.
        val_seed: seed of the fixed validation noise.
        compile_unet: ``torch.compile`` the UNet (long runs; minutes of warm-up).
        channels_last: channels-last memory format for the UNet and VAE.
        clip_skip: condition on the output of the text encoder's ``clip_skip``-th layer from
            the end (1: the penultimate, for models trained that way), final-normed as
            diffusers does; 0 is the last layer.
        vae: another autoencoder (a folder or hub id), e.g. SDXL's fp16-fix VAE
            (``madebyollin/sdxl-vae-fp16-fix``); ``None`` keeps ``pretrained``'s.
    """

    def __init__(
        self,
        collections: list[str] | None = None,
        num_tokens: int = 4,
        bank_attention: BankAttention = "ssam",
        bank_heads: int = 8,
        bank_dropout: float = 0.0,
        attention_lr: float | None = None,
        initializer_token: str | None = "painting",
        init_embeddings: str | None = None,
        templates: list[str] | None = None,
        use_captions: bool = True,
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
        # checked before the base class loads Stable Diffusion
        check_at_least("model.num_tokens", num_tokens, 1)
        check_at_least("model.bank_heads", bank_heads, 1)
        check_fraction("model.bank_dropout", bank_dropout)
        if attention_lr is not None:
            check_at_least("model.attention_lr", attention_lr, 0)
        super().__init__(
            collections, templates, use_captions, pretrained, revision, variant, vae_fp32, lr,
            weight_decay, betas, warmup_steps, lr_schedule, min_lr_ratio, min_snr_gamma,
            noise_offset, val_seed, compile_unet, channels_last, clip_skip, vae,
        )  # fmt: skip
        self.placeholders = [placeholder_token(name) for name in self.collections]
        token_ids = add_placeholder_tokens(self.tokenizer, self.placeholders, num_tokens)
        self.first_placeholder_id = token_ids[0][0]
        widths = self.text_widths
        count = len(self.collections)
        self.bank = ImplicitStylePromptBank(
            count, num_tokens, widths[0], bank_attention, bank_heads, bank_dropout
        )
        # SDXL: the second encoder's tokens, their own table and attention (1280 wide on SDXL)
        self.bank_2 = (
            ImplicitStylePromptBank(
                count, num_tokens, widths[1], bank_attention, bank_heads, bank_dropout
            )
            if self.is_xl
            else None
        )
        if init_embeddings:
            self._init_from_tables(self._start_tables(init_embeddings))
        elif initializer_token:
            init_id = single_token_id(self.tokenizer, initializer_token)
            for bank, encoder in zip(self.banks, self.text_encoders, strict=True):
                bank.init_from_embedding(encoder.get_input_embeddings().weight[init_id])

    @property
    def banks(self) -> list[ImplicitStylePromptBank]:
        """One bank per text encoder: ``[bank]``, on SDXL ``[bank, bank_2]``."""
        return [self.bank] if self.bank_2 is None else [self.bank, self.bank_2]

    def _init_from_tables(self, tables: torch.Tensor) -> None:
        """Start each bank at its encoder's slice of ``[K, n, sum(text_widths)]`` tables."""
        for bank, part in zip(self.banks, tables.split(self.text_widths, dim=-1), strict=True):
            bank.init_from_tables(part)

    def _start_tables(self, source: str) -> torch.Tensor:
        """Read ``init_embeddings``: one ``[n, d]`` table per collection, checked."""
        from artbank_pl.styles import fitting_styles, read_bank_styles, select_styles

        # an SD 1.5 file on SDXL, or the reverse, is refused naming the option
        label = f"model.init_embeddings {source}"
        found = fitting_styles(read_bank_styles(source), self.text_widths, label)
        if len(found) == 1:
            tables = [next(iter(found.values()))] * len(self.collections)
        else:
            tables = list(select_styles(found, self.collections, source).values())
        expected = (self.bank.num_tokens, sum(self.text_widths))
        for name, table in zip(self.collections, tables, strict=True):
            if tuple(table.shape) != expected:
                raise ConfigError(
                    f"model.init_embeddings {source}: the vectors for {name} are "
                    f"{tuple(table.shape)}, the bank needs num_tokens x d = {expected}"
                )
        return torch.stack(tables)

    def optimizer_groups(self) -> list[dict]:
        """Return the groups: the bank's vectors at ``lr``, its attention at ``attention_lr``.

        The attention's weights multiply the vectors (``P + rho(P) (R + C + T) W_o``), so at
        the vectors' rate their updates compound and the output norm runs away (8.2x in the
        quickstart's 300 steps, against 5.3x for the bare vectors; 277x in 20 steps at
        d = 768); their own group and rate keep it at the bare vectors' (README).
        """
        groups = [{"params": [bank.prompts for bank in self.banks]}]
        for bank in self.banks:  # on SDXL each encoder's attention at its own width's rate
            attention = [p for p in bank.attention.parameters() if p.requires_grad]
            rate = self.hparams.attention_lr
            dim = bank.prompts.shape[-1]
            rate = default_attention_lr(self.hparams.lr, dim) if rate is None else rate
            groups.append({"params": attention, "lr": rate})
        return groups

    def placeholder_text(self, collection: int) -> str:
        """Return the collection's placeholder expanded to its tokens: ``<x> <x>_1 ...``."""
        placeholder = self.placeholders[collection]
        return expand_placeholder(placeholder, placeholder, self.bank.num_tokens)

    def bank_vectors(self, tokens: PromptTokens) -> torch.Tensor:
        """Return the bank's vectors ``[M, d]`` for the placeholder tokens of ``tokens``.

        Placeholder id ``first + k * n + j`` is collection ``k``'s token ``j``, so an
        index into the flattened bank picks it. Every collection is computed (the bank's
        attention is per collection, so one collection's rows do not depend on the
        others): an index gather needs no host-device sync, where selecting only the
        batch's collections would.
        """
        return self.bank_tables().flatten(0, 1)[tokens.offsets]

    def bank_tables(self) -> torch.Tensor:
        """Every collection's vectors ``[K, n, sum(text_widths)]`` (SDXL: CLIP-L then G)."""
        return torch.cat([bank.embeddings() for bank in self.banks], dim=-1)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor | TextConditioning:
        """Text conditioning ``[B, 77, d]`` with the bank spliced into the prompts."""
        return self.conditioning({}, self.prompt_tokens(prompts, self.first_placeholder_id))

    def conditioning(self, batch: dict, tokens: PromptTokens) -> torch.Tensor | TextConditioning:
        """Encode the prompts; each placeholder names its collection's bank rows."""
        return self.encode_text(tokens, self.bank_vectors(tokens))

    def embeddings(self) -> dict[str, torch.Tensor]:
        """Each collection's token embeddings ``[n, d]`` (float32, CPU), bank in eval mode."""
        was_training = self.bank.training
        for bank in self.banks:
            bank.eval()
        with torch.no_grad():
            table = self.bank_tables().float().cpu()
        for bank in self.banks:
            bank.train(was_training)
        return dict(zip(self.collections, table, strict=True))
