"""Cache VAE latents (and CLIP image features) into shards: ``artbank shards cache``.

Each sample is resized and centre-cropped to ``resolution`` once; its VAE posterior
parameters (``moments.npy``: mean and log-variance, so training still samples the
posterior) and those of its mirror image (``moments_flip.npy``, so random flips still work)
are stored next to the image, as float16 ``.npy`` arrays (no pickle). With a vision model,
CLIP features (``clip.npy``, ``clip_flip.npy``) are stored too, for InST. SDXL's
micro-conditioning comes along: ``size.npy`` (the original height and width, from the json's
``original_height``/``original_width`` or the stored image) and ``crop.npy``/``crop_flip.npy``
(the centre crop's top-left corner, and the mirror's), as int32. The new manifest records
what was cached; ``ArtworkDataModule`` then trains from the cache.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

from artbank_pl.atomic import atomic_write_text
from artbank_pl.datamodules.artwork import crop_square_at, original_size, to_tensor
from artbank_pl.datamodules.shards import (
    MANIFEST,
    AtomicShardWriter,
    read_manifest,
    resize_shorter_side,
)
from artbank_pl.datamodules.stream import decode_image, iter_tar_samples, sample_meta
from artbank_pl.sd import load_parts
from artbank_pl.tool_args import ToolParser
from artbank_pl.vision import clip_preprocess, load_vision_encoder


def to_npy(array: torch.Tensor) -> bytes:
    """Serialise a tensor as float16 ``.npy`` bytes."""
    buffer = io.BytesIO()
    np.save(buffer, array.detach().to(torch.float16).cpu().numpy(), allow_pickle=False)
    return buffer.getvalue()


class FeatureEncoder:
    """The frozen encoders whose outputs are cached, on one device."""

    def __init__(self, pretrained: str, vision_model: str | None, image_features: str, device):
        parts = load_parts(pretrained)
        self.vae = parts.vae.to(device)
        self.vision = load_vision_encoder(vision_model).to(device) if vision_model else None
        self.image_features = image_features
        self.device = device

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode a batch ``[B, 3, H, W]`` and its mirror; returns per-key ``[B, ...]``."""
        out = {}
        for suffix, batch in (("", pixels), ("_flip", pixels.flip(-1))):
            batch = batch.to(self.device)
            out[f"moments{suffix}"] = self.vae.encode(batch).latent_dist.parameters
            if self.vision is not None:
                clip = self.vision(
                    pixel_values=clip_preprocess(batch, self.vision.config.image_size)
                )
                if self.image_features == "pooled":
                    out[f"clip{suffix}"] = clip.image_embeds.unsqueeze(1)
                else:
                    hidden = self.vision.vision_model.post_layernorm(clip.last_hidden_state)
                    out[f"clip{suffix}"] = hidden
        return out


def to_int_npy(values: list[int]) -> bytes:
    """Serialise integers as int32 ``.npy`` bytes (sizes beyond float16's exact range)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(values, dtype=np.int32), allow_pickle=False)
    return buffer.getvalue()


def size_and_crops(sample: dict, resolution: int) -> tuple[torch.Tensor, dict[str, bytes]]:
    """Return a sample's centre-cropped pixels and its micro-conditioning ``.npy`` entries."""
    decoded = decode_image(sample)
    try:
        meta = sample_meta(sample) if "json" in sample else None
    except ValueError:
        meta = None  # the training stream skips and counts such a sample
    resized = resize_shorter_side(decoded, resolution)
    image, (top, left) = crop_square_at(resized, resolution, None)
    entries = {
        "size.npy": to_int_npy(list(original_size(meta, decoded))),
        "crop.npy": to_int_npy([top, left]),
        "crop_flip.npy": to_int_npy([top, resized.width - resolution - left]),
    }
    return to_tensor(image), entries


def _cache_split(urls, writer, encoder, resolution, batch_size) -> int:
    pending, count = [], 0

    def flush() -> None:
        pixels = torch.stack([p for _, p, _ in pending])
        features = encoder(pixels)
        for i, (sample, _, sizes) in enumerate(pending):
            extra = {f"{k}.npy": to_npy(v[i]) for k, v in features.items()} | sizes
            writer.write({k: v for k, v in sample.items() if not k.startswith("__url")} | extra)
        pending.clear()

    for url in urls:
        for sample in iter_tar_samples(url):
            pending.append((sample, *size_and_crops(sample, resolution)))
            count += 1
            if len(pending) == batch_size:
                flush()
    if pending:
        flush()
    return count


def cache_shards(
    manifest: str | Path,
    output: str | Path,
    pretrained: str,
    resolution: int,
    vision_model: str | None = None,
    image_features: str = "patch",
    batch_size: int = 8,
    device: str = "cpu",
    maxcount: int = 1000,
) -> Path:
    """Write cached copies of a manifest's shards and a manifest that describes the cache.

    Args:
        manifest: manifest of the source shards.
        output: folder for the cached shards and their manifest.
        pretrained: the Stable Diffusion whose VAE encodes (must match training's).
        resolution: side the images are centre-cropped to (training's ``resolution``).
        vision_model: also cache CLIP image features of this model (InST).
        image_features: ``patch`` or ``pooled`` CLIP features.
        batch_size: images per encoder batch.
        device: where the encoders run.
        maxcount: samples per cached shard.

    Returns:
        The new manifest's path.
    """
    source = Path(manifest)
    source_manifest = read_manifest(source)
    root = source if source.is_dir() else source.parent
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    encoder = FeatureEncoder(pretrained, vision_model, image_features, device)
    splits = {}
    for split, info in source_manifest["splits"].items():
        writer = AtomicShardWriter(out, f"{split}-cached", maxcount)
        urls = [str(root / s) for s in info["shards"]]
        _cache_split(urls, writer, encoder, resolution, batch_size)
        splits[split] = dict(info, shards=writer.close())
    new = dict(source_manifest, splits=splits)
    new["cache"] = {
        "pretrained": pretrained, "resolution": resolution, "vision_model": vision_model,
        "image_features": image_features if vision_model else None,
    }  # fmt: skip
    return atomic_write_text(out / MANIFEST, json.dumps(new, indent=2))


def main(argv: list[str]) -> int:
    """``artbank shards cache``: cache latents (and CLIP features) into new shards."""
    parser = ToolParser(
        prog="artbank shards cache",
        description="Cache VAE latents (and flipped ones) and optional CLIP features in shards.",
    )
    parser.add_argument("--manifest", required=True, help="manifest.json of the source shards")
    parser.add_argument("--output", required=True, help="folder for the cached shards")
    parser.add_argument("--pretrained", required=True, help="SD model: tiny, folder or hub id")
    parser.add_argument("--resolution", type=int, required=True, help="training resolution")
    parser.add_argument("--vision-model", default=None, help="also cache CLIP features (InST)")
    parser.add_argument("--image-features", default="patch", choices=("patch", "pooled"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    opts = parser.parse_args(argv)
    path = cache_shards(
        opts.manifest, opts.output, opts.pretrained, opts.resolution, opts.vision_model,
        opts.image_features, opts.batch_size, opts.device, opts.maxcount,
    )  # fmt: skip
    print(f"cached manifest {path}")
    return 0
