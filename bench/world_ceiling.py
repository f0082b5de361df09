"""The world model's own ceiling per style: img2img and text-to-image from the true words.

    python bench/world_ceiling.py --photos 16 --seed 11 [--pretrained FOLDER | world-xl]
    python bench/world_ceiling.py --denoise 50 150 250 400 [--pretrained FOLDER]

A bank stands where the style word stood ("a circle in <x> style"), so what the model does
with the true word ("a circle in striped style") is the most a bank can be expected to reach
on this world. For every style it stylizes world photographs with diffusers' img2img
pipeline (DDIM, the demo's strength and guidance, no AdaIN) and draws text-to-image
samples from the same captions, and prints the judges' style accuracy, shape accuracy and
content IoU per style (text-to-image's IoU is the floor a prompt alone reaches). With
``--pretrained world-xl`` the pipelines are diffusers' SDXL ones around world-xl's parts.

``--denoise T ...`` asks something narrower: whether the UNet keeps a style where it
already is. Generator scenes of each style are noised to each timestep T and the UNet's
one-step estimate of the clean image is decoded and judged. A model that loses a style
there cannot draw it from noise either (world version 2 keeps striped 0.97 at T = 50 but
0.28 at T = 600, where every other style stays at 0.84 or above).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from artbank_pl.diffusion import add_noise, eps_from_output
from artbank_pl.errors import DataError
from artbank_pl.sd import load_parts
from artbank_pl.world.cli import read_photographs, shape_of, write_images
from artbank_pl.world.judges import Judges, load_judges, mask_batch
from artbank_pl.world.scenes import PHOTO, STYLES, caption


def photographs(count: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """World photographs ``[N, 3, H, W]`` in ``[0, 1]`` and their shape words."""
    with tempfile.TemporaryDirectory() as tmp:
        write_images(Path(tmp), (), per_style=0, photos=count, seed=seed)
        files = sorted((Path(tmp) / "photographs").glob("*.png"))
        images = read_photographs(files)[0] / 2 + 0.5
        return images, [shape_of(f) for f in files]


def pipelines(pretrained: str | None):
    """Return diffusers' img2img and text-to-image pipelines (DDIM) of a world model."""
    parts = load_parts(pretrained or "world")
    return parts.diffusers_pipeline(True), parts.diffusers_pipeline(False)


def ceiling_row(
    img2img,
    txt2img,
    judges: Judges,
    style: str,
    photos: torch.Tensor,
    shapes: list[str],
    strength: float,
    guidance: float,
    steps: int,
) -> dict:
    """Judge img2img over ``photos`` and text-to-image from their captions in ``style``.

    Returns ``{"img2img": {...}, "text-to-image": {...}}``, each with the style accuracy,
    the shape accuracy and the content IoU against the photographs. img2img draws first:
    text-to-image then reads the same generators where img2img left them.
    """
    prompts = [f"a {shape} in {style} style" for shape in shapes]
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    common = {"num_inference_steps": steps, "guidance_scale": guidance, "output_type": "pt"}
    size = photos.shape[-1]
    edited = img2img(prompts, image=photos, strength=strength, generator=gens, **common)
    drawn = txt2img(prompts, height=size, width=size, generator=gens, **common)
    row = {}
    for name, out in (("img2img", edited.images), ("text-to-image", drawn.images)):
        style_acc, shape_acc = judges.accuracy(out, style, shapes)
        iou = float(judges.content_iou(out, photos).mean())
        row[name] = {"style": round(style_acc, 3), "shape": round(shape_acc, 3),
                     "iou": round(iou, 3)}  # fmt: skip
    return row


@torch.no_grad()
def one_step_denoise(parts, judges: Judges, timesteps: list[int], count: int, seed: int):
    """Print, per style, the judged share of one-step clean estimates from each timestep.

    Each style's ``count`` generator scenes are encoded, noised to ``t`` (one noise draw per
    seed), denoised in one step with their style's caption ("a picture in striped style")
    and decoded: ``x0 = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (DDPM Eq. 4 solved for
    ``x0``).
    """
    if parts.is_xl:
        raise DataError("--denoise: SD 1.x/2.x world models only (world-xl needs its added "
                        "conditioning)")  # fmt: skip
    abar = parts.noise_scheduler.alphas_cumprod.float()
    scale = parts.vae.config.scaling_factor
    for style in (s for s in STYLES if s != PHOTO):
        images, _ = mask_batch(np.random.default_rng([seed, 5]), count, styles=(style,))
        ids = parts.tokenizer([caption(None, style)] * count, padding="max_length",
                              max_length=parts.tokenizer.model_max_length,
                              return_tensors="pt").input_ids  # fmt: skip
        features = parts.text_encoder(ids).last_hidden_state
        latents = parts.vae.encode(images * 2 - 1).latent_dist.mode() * scale
        row = {"style": style}
        for t in timesteps:
            noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
            noisy = add_noise(latents, noise, abar[t].expand(count))
            output = parts.unet(noisy, torch.full((count,), t), features).sample
            eps = eps_from_output(output, noisy, float(abar[t]), parts.prediction_type)
            x0 = (noisy - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()
            decoded = (parts.vae.decode(x0 / scale).sample / 2 + 0.5).clamp(0, 1)
            hits = [name == style for name in judges.predict("style", decoded)]
            row[f"t={t}"] = round(float(np.mean(hits)), 3)
        print(json.dumps(row), flush=True)


def main() -> None:
    """Judge img2img and text-to-image from the true caption of every style."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--strength", type=float, default=0.7)
    parser.add_argument("--guidance", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pretrained", default=None, help="another world model folder")
    parser.add_argument("--denoise", type=int, nargs="+", default=None, metavar="T",
                        help="only the one-step denoising probe, at these timesteps")  # fmt: skip
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    judges = load_judges("world")
    if args.denoise:
        parts = load_parts(args.pretrained or "world")
        return one_step_denoise(parts, judges, args.denoise, args.photos * 2, args.seed)
    photos, shapes = photographs(args.photos, args.seed)
    img2img, txt2img = pipelines(args.pretrained)
    rows = []
    for style in (s for s in STYLES if s != PHOTO):
        row = {
            "style": style,
            **ceiling_row(
                img2img,
                txt2img,
                judges,
                style,
                photos,
                shapes,
                args.strength,
                args.guidance,
                args.steps,
            ),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    for name in ("img2img", "text-to-image"):
        mean = float(np.mean([row[name]["style"] for row in rows]))
        print(json.dumps({"mean_style": name, "value": round(mean, 3)}))
    print(json.dumps({"photos": args.photos, "seed": args.seed,
                      "judged_photo_shapes": float(np.mean(
                          [a == b for a, b in zip(judges.predict("content", photos), shapes,
                                                  strict=True)]))}))  # fmt: skip


if __name__ == "__main__":
    main()
