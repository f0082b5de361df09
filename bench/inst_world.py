"""InST on the planted world: one inverter per style, judged on held-out paintings.

    python bench/inst_world.py --styles dotted sketch checkered mosaic --steps 300

For each style: an ``InverterTask`` (world model, ``vision_model: world``) trains on a
collection of 24 world paintings of that style with the world's own caption grammar
(``{caption} in {} style``: the caption names the painting's shape, so the token need not);
then a painting it never saw is inverted, and world photographs it never saw are stylized
with the same prompt form (``{caption} in * style``). The judges say, per style: style
accuracy, shape accuracy, content IoU (the photograph's shape where it was), and how often
the output is judged as the *painting's* shape where the photograph's differs (an inverter
that copies the painting's content, not its style, scores high there).

Options are the inverter's (``--features``, ``--no-image-queries``, ``--learned-base``) and
the stylization's (``--strengths``, ``--guidance``, ``--adain``: start from the held-out
painting's latent statistics). ``--seed-offset`` draws other training paintings, held-out
paintings and photographs, to choose options on one draw and report on another. Prints a
json line per style and strength and a mean per strength.
``--steps 0`` is the control: the same prompt with an untrained inverter (its token the
zero vector), what the prompt and the model give without any style learned.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Trainer

from artbank_pl.cli import quiet_console
from artbank_pl.datamodules import ArtworkDataModule, ContentDataModule
from artbank_pl.datamodules.shards import build_shards
from artbank_pl.tasks import InverterTask, StylizeTask
from artbank_pl.world.cli import read_photographs, shape_of, style_slug, write_images
from artbank_pl.world.judges import load_judges
from artbank_pl.world.scenes import STYLES

TRAIN_SEED, PAINTING_SEED, PHOTO_SEED = 101, 202, 303


def quiet_trainer(**kwargs) -> Trainer:
    """Return a CPU Trainer that prints nothing."""
    return Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                   enable_model_summary=False, **kwargs)  # fmt: skip


def train_inverter(style: str, root: Path, args) -> Path:
    """Fit one inverter on 24 paintings of ``style``; return its checkpoint."""
    write_images(root / "train", [style], per_style=24, photos=0,
                 seed=TRAIN_SEED + args.seed_offset)  # fmt: skip
    build_shards(root / "train/collections", root / "shards", size=32, image_format="png")
    task = InverterTask(
        collections=[style_slug(style)], pretrained="world", vision_model=args.vision_model,
        image_features=args.features,
        image_queries=args.image_queries, learned_base=args.learned_base,
        initializer_token=None, templates=["{caption} in {} style"], use_captions=True,
        num_tokens=1, inverter_layers=2, inverter_heads=4, lr=args.lr, warmup_steps=20,
        lr_schedule="cosine",
    )  # fmt: skip
    data = ArtworkDataModule(str(root / "shards/manifest.json"), resolution=32, batch_size=8,
                             num_workers=0, samples_per_epoch=8 * max(1, args.steps),
                             random_flip=args.flip)  # fmt: skip
    trainer = quiet_trainer(max_steps=args.steps, limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(task, data)
    trainer.save_checkpoint(root / "inst.ckpt")
    return root / "inst.ckpt"


def write_held_out(style: str, root: Path, args) -> tuple[Path, list[Path]]:
    """Write a painting of ``style`` and the photographs the inverter never saw."""
    # a seed per style, so the held-out paintings are not all the same shape
    seed = PAINTING_SEED + args.seed_offset + STYLES.index(style)
    painting = write_images(root / "painting", [style], per_style=1, photos=0, seed=seed)
    photos = write_images(root / "photos", [], per_style=0, photos=args.photos,
                          seed=PHOTO_SEED + args.seed_offset)  # fmt: skip
    return next(iter(painting.values()))[0], sorted(photos["photographs"])


def judge_stylization(
    style: str, ckpt: Path, held_out: tuple[Path, list[Path]], args, judges, strength: float
) -> dict:
    """Stylize held-out photographs with a held-out painting at ``strength``; judge them."""
    painting_path, files = held_out
    painting_shape = shape_of(painting_path)
    task = StylizeTask(
        inverter=str(ckpt), style_images=[str(painting_path)], prompt="{caption} in * style",
        pretrained="world", strength=strength, guidance_scale=args.guidance,
        steps=args.sample_steps, adain=args.adain,
    )  # fmt: skip
    data = ContentDataModule(str(files[0].parent), resolution=32, batch_size=8,
                             num_workers=0)  # fmt: skip
    predictions = quiet_trainer().predict(task, data)
    by_key = {k: img for p in predictions for k, img in zip(p["keys"], p["images"], strict=True)}
    outputs = torch.stack([by_key[f.stem] for f in files]).permute(0, 3, 1, 2).float() / 255
    contents = read_photographs(files)[0] / 2 + 0.5
    shapes = [shape_of(f) for f in files]
    style_acc, shape_acc = judges.accuracy(outputs, style, shapes)
    copied = judges.shape_copied(outputs, shapes, painting_shape)
    iou = float(judges.content_iou(outputs, contents).mean())
    return {
        "style": style, "strength": strength, "style_accuracy": round(style_acc, 3),
        "shape_accuracy": round(shape_acc, 3), "content_iou": round(iou, 3),
        "painting_shape_copied": round(copied, 3), "painting_shape": painting_shape,
    }  # fmt: skip


def main() -> None:
    """Train and judge one inverter per style; print a json line each and the means."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--styles", nargs="+", default=["dotted", "sketch", "checkered", "mosaic"])
    parser.add_argument("--steps", type=int, default=400, help="0: the untrained control")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--vision-model", default="world")
    parser.add_argument("--features", choices=("patch", "pooled"), default="pooled")
    parser.add_argument("--no-image-queries", dest="image_queries", action="store_false")
    parser.add_argument("--learned-base", action="store_true")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.8])
    parser.add_argument("--adain", action="store_true")
    parser.add_argument("--flip", action="store_true", help="random flips in training")
    parser.add_argument("--seed-offset", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=10.0)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--photos", type=int, default=16)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    quiet_console()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(0)
    judges, rows = load_judges("world"), []
    for style in args.styles:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = train_inverter(style, Path(tmp), args)
            held_out = write_held_out(style, Path(tmp), args)
            for strength in args.strengths:
                rows.append(judge_stylization(style, ckpt, held_out, args, judges, strength))
                print(json.dumps(rows[-1]), flush=True)
    keys = ("style_accuracy", "shape_accuracy", "content_iou", "painting_shape_copied")
    for strength in args.strengths:
        at = [r for r in rows if r["strength"] == strength]
        means = {k: round(float(np.mean([r[k] for r in at])), 3) for k in keys}
        print(json.dumps({"strength": strength, "mean": means, "options": vars(args)}))


if __name__ == "__main__":
    main()
