"""The world model's own ceiling per style: img2img and text-to-image from the true words.

    python bench/world_ceiling.py --photos 16 --seed 11 [--pretrained FOLDER | world-xl]

A bank stands where the style word stood ("a circle in <x> style"), so what the model does
with the true word ("a circle in striped style") is the most a bank can be expected to reach
on this world. For every style it stylizes world photographs with diffusers' img2img
pipeline (DDIM, the demo's strength and guidance, no AdaIN) and draws text-to-image
samples from the same captions, and prints the judges' style accuracy, shape accuracy and
content IoU per style (text-to-image's IoU is the floor a prompt alone reaches). With
``--pretrained world-xl`` the pipelines are diffusers' SDXL ones around world-xl's parts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from artbank_pl.sd import load_parts
from artbank_pl.world.cli import read_photographs, shape_of, write_images
from artbank_pl.world.judges import load_judges
from artbank_pl.world.scenes import PHOTO, STYLES


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


def main() -> None:
    """Judge img2img and text-to-image from the true caption of every style."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--strength", type=float, default=0.7)
    parser.add_argument("--guidance", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pretrained", default=None, help="another world model folder")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    judges = load_judges("world")
    photos, shapes = photographs(args.photos, args.seed)
    img2img, txt2img = pipelines(args.pretrained)
    common = {"num_inference_steps": args.steps, "guidance_scale": args.guidance,
              "output_type": "pt"}  # fmt: skip
    rows = []
    for style in (s for s in STYLES if s != PHOTO):
        prompts = [f"a {shape} in {style} style" for shape in shapes]
        gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
        row = {"style": style}
        edited = img2img(prompts, image=photos, strength=args.strength, generator=gens, **common)
        drawn = txt2img(prompts, height=32, width=32, generator=gens, **common)
        for name, out in (("img2img", edited.images), ("text-to-image", drawn.images)):
            style_acc, shape_acc = judges.accuracy(out, style, shapes)
            iou = float(judges.content_iou(out, photos).mean())
            row[name] = {"style": round(style_acc, 3), "shape": round(shape_acc, 3),
                         "iou": round(iou, 3)}  # fmt: skip
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
