"""The world's CLIP image tower, trained against the world model's frozen text encoder.

InST reads a painting through a CLIP image encoder, and the evaluation's CLIP metrics do
too; a random encoder sees pixels, not styles. This one is a transformers
``CLIPVisionModelWithProjection`` (ViT, 32 px, 4 px patches) whose projected embedding is
trained contrastively against the pooled text embedding of the world's frozen text encoder:
for a scene, the caption that describes it ("a circle in striped style") against every
other caption of the world (CLIP's loss with the captions as the other side, Radford et al.
2021, Eq. in Fig. 3). It ships as ``image_encoder/`` beside the world model and loads as
``vision_model: world`` or ``metrics_model: world``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from artbank_pl.optim import warmup_schedule_factor
from artbank_pl.vision import clip_preprocess
from artbank_pl.world.pretrain import to_pixels
from artbank_pl.world.scenes import SHAPES, SIZE, STYLES, caption, sample_batch

log = logging.getLogger(__name__)

VISION_CONFIG = {
    "image_size": SIZE,
    "patch_size": 4,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "projection_dim": 32,  # the world text encoder's width
    "hidden_act": "quick_gelu",
}
#: scenes of the held-out evaluation (a generator seed no training run uses)
HELD_OUT_SEED = 20261207


@torch.no_grad()
def caption_embeddings(text_encoder, tokenizer) -> torch.Tensor:
    """Return unit pooled text embeddings ``[len(SHAPES) * len(STYLES), d]`` (shape * 9 + style)."""
    texts = [caption(shape, style) for shape in SHAPES for style in STYLES]
    ids = tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    return F.normalize(text_encoder(ids).pooler_output, dim=-1)


def image_embeddings(model: CLIPVisionModelWithProjection, images: np.ndarray) -> torch.Tensor:
    """Return unit image embeddings of ``uint8 [N, SIZE, SIZE, 3]`` scenes, preprocessed as used."""
    pixels = clip_preprocess(to_pixels(images), model.config.image_size)
    return F.normalize(model(pixel_values=pixels).image_embeds, dim=-1)


def train_world_clip(
    text_encoder, tokenizer, seed: int = 0, steps: int = 1500, batch_size: int = 128
) -> tuple[CLIPVisionModelWithProjection, list[float]]:
    """Train the image tower; return it (frozen, eval) and the per-step losses."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION_CONFIG))
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    texts = caption_embeddings(text_encoder, tokenizer)
    params = [*model.parameters(), logit_scale]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_schedule_factor(s, 100, steps, "cosine")
    )
    losses = []
    for step in range(steps):
        images, shapes, styles = sample_batch(rng, batch_size)
        labels = torch.tensor([s * len(STYLES) + k for s, k in zip(shapes, styles, strict=True)])
        logits = logit_scale.exp().clamp(max=100) * image_embeddings(model, images) @ texts.T
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            log.info("world clip step %d/%d: loss %.4f", step + 1, steps, np.mean(losses[-100:]))
    return model.eval().requires_grad_(False), losses


@torch.no_grad()
def evaluate_world_clip(model, text_encoder, tokenizer, count: int = 1024) -> dict[str, float]:
    """Held-out image-to-caption retrieval and the same-style cosine AUC.

    Retrieval: the share of held-out scenes whose nearest caption (of all the world's) is
    their own, and whose nearest caption names their style. AUC: the probability that two
    scenes of the same style are more similar than two of different styles (every pair).
    """
    images, shapes, styles = sample_batch(np.random.default_rng(HELD_OUT_SEED), count)
    embeds = image_embeddings(model, images)
    nearest = (embeds @ caption_embeddings(text_encoder, tokenizer).T).argmax(-1)
    truth = torch.tensor([s * len(STYLES) + k for s, k in zip(shapes, styles, strict=True)])
    style = torch.tensor(styles)
    same = style[:, None] == style[None, :]
    upper = torch.triu(torch.ones_like(same), diagonal=1)
    cosine = embeds @ embeds.T
    positives, negatives = cosine[same & upper], cosine[~same & upper]
    return {
        "caption_retrieval": float((nearest == truth).float().mean()),
        "style_retrieval": float((nearest % len(STYLES) == style).float().mean()),
        "same_style_auc": pairwise_auc(positives, negatives),
    }


def pairwise_auc(positives: torch.Tensor, negatives: torch.Tensor) -> float:
    """Probability that a positive scores above a negative (ties count half): the ROC AUC."""
    scores = torch.cat([positives, negatives])
    ranks = torch.empty_like(scores)
    ranks[scores.argsort()] = torch.arange(1, len(scores) + 1, dtype=scores.dtype)
    # ties share their mean rank
    unique, inverse = scores.unique(return_inverse=True)
    mean_rank = torch.zeros_like(unique).scatter_add_(0, inverse, ranks)
    mean_rank /= torch.bincount(inverse).to(scores.dtype)
    rank_sum = mean_rank[inverse][: len(positives)].sum()
    n_pos, n_neg = len(positives), len(negatives)
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def build_world_clip(output: str | Path, seed: int = 0, steps: int = 1500) -> dict:
    """Train, evaluate and save ``output`` (a ``CLIPVisionModelWithProjection`` folder).

    The folder also holds ``world_clip.json``: the command, the held-out figures and the
    training time.
    """
    from artbank_pl.sd import build_tiny_parts

    started = time.monotonic()
    parts = build_tiny_parts()
    model, losses = train_world_clip(parts.text_encoder, parts.tokenizer, seed, steps)
    figures = evaluate_world_clip(model, parts.text_encoder, parts.tokenizer)
    output = Path(output)
    model.save_pretrained(output)
    summary = {
        "command": f"artbank world clip --output {output} --seed {seed} --steps {steps}",
        "seed": seed, "steps": steps, "seconds": round(time.monotonic() - started, 1),
        "loss_start": float(np.mean(losses[:100])), "loss_end": float(np.mean(losses[-100:])),
        "held_out": figures,
    }  # fmt: skip
    (output / "world_clip.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
