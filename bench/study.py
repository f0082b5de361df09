"""The papers' claims, measured on the planted style world on one footing (``make study``).

    python bench/study.py --seeds 0 1 2 3 4 --tuning-seeds 100 --output outputs/study

``--tune-only`` stops after the tuning (``tuning.json``); with ``--tune-arms`` it tunes only
the arms named, e.g. one more rate below a grid whose bottom an arm picked. ``--extend
STUDY_JSON --tune-arms ARM ... --lrs ...`` adds those rates to an earlier study's grids: an
arm whose best rate changes is re-run on every reported seed, the rest is copied, and the
report is written again.

The footing, the same for every arm:

- the same steps (``--steps``), batch 8 and schedule (the quickstart's: 20 warm-up steps,
  cosine decay), no flips;
- the same prompt form in training and in the probe: the world's caption grammar
  ``{caption} in {} style`` ("a circle in * style");
- the best of ``--lrs`` (banks, embeddings) or ``--inverter-lrs`` learning rates, chosen per
  arm on tuning worlds (``--tuning-seeds``: their own training images, paintings and
  photographs, which the reported figures never use) by final style accuracy, then IoU;
- each reported seed ``s`` draws its own world sample (training images, paintings and
  photographs from world seed ``1000 + s``), seeds the start (SSAM's, self-attention's and
  the inverter's weights; a bank's vectors start at the initializer word in every mode, so
  ``none`` starts alike) and the sampling noise (stylization seed ``s``);
- one probe: 16 world photographs per style stylized with stochastic inversion at strength
  ``--strength``, guidance 10, 20 DDIM steps, no AdaIN, judged by the world's judges: style
  accuracy, shape accuracy and content IoU (the photograph's shape where it was, which the
  prompt cannot supply); for one painting also how often the output shows the painting's
  shape where the photograph's differs.

Claims (``--arms``):

1. ``bank``: a prompt bank over three collections (``--bank-styles``) with SSAM vs
   self-attention vs ``none`` (multi-vector textual inversion); style against step.
2. ``painting``: one painting of each ``--painting-styles``: the InST inverter (world CLIP,
   pooled features, queries from the image embedding) vs one embedding trained directly.
3. ``sampling``, on each seed's trained SSAM bank: stochastic vs noise vs DDIM inversion at
   several strengths; AdaIN on and off; DDIM at 20 and 50 steps against DPM-Solver++ at 20.

Figures are means over seeds with 95 % t-intervals, and paired differences (the same world
sample, start and sampling seed) with theirs. Writes ``study.json`` (every number),
``study.md`` (the tables), ``curves.png`` and ``tradeoff.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from study_report import write_report

from artbank_pl.datamodules import ArtworkDataModule, build_shards
from artbank_pl.datamodules.shards import manifest_collections, read_manifest
from artbank_pl.styles import load_image
from artbank_pl.tasks import InverterTask, PromptBankTask
from artbank_pl.world.cli import read_photographs, shape_of, style_slug, write_images
from artbank_pl.world.judges import load_judges

#: the world model's caption grammar, in training and in every probe
TEMPLATE = "{caption} in {} style"
PROBE = {"steps": 20, "guidance_scale": 10.0}
BANK_ARMS = ("ssam", "self", "none")
PAINTING_ARMS = ("inverter", "embedding")
ARMS = ("bank", "painting", "sampling")
log = logging.getLogger("study")


class WorldDraw:
    """One world sample: bank collections, one painting per style, photographs, judges.

    Args:
        root: an empty folder.
        seed: the world seed (training images, paintings, photographs).
        bank_styles: the bank's collections (sorted, as the manifest orders them).
        painting_styles: one painting each.
        photos: photographs per probe (they cycle through the shapes).
        judges: the world's judges, loaded once.
    """

    def __init__(self, root: Path, seed: int, bank_styles, painting_styles, photos, judges):
        self.root, self.judges = root, judges
        self.bank_styles = tuple(sorted(bank_styles))
        written = write_images(root / "bank", self.bank_styles, per_style=24, photos=photos,
                               seed=seed)  # fmt: skip
        build_shards(root / "bank/collections", root / "bank/shards", size=32, maxcount=8,
                     image_format="png")  # fmt: skip
        order = manifest_collections(read_manifest(root / "bank/shards/manifest.json"))
        assert order == [style_slug(s) for s in self.bank_styles], order  # bank index k
        # one training image per collection: AdaIN's reference in the sampling claims
        self.exemplars = [load_image(written[style_slug(s)][0])[0] for s in self.bank_styles]
        self.paintings = {}
        for i, style in enumerate(painting_styles):
            folder = root / f"one-{style_slug(style)}"
            path = write_images(folder, (style,), per_style=1, photos=0, seed=seed + 1 + i)
            build_shards(folder / "collections", folder / "shards", size=32, maxcount=1,
                         image_format="png")  # fmt: skip
            self.paintings[style] = next(iter(path.values()))[0]
        self.photos, self.captions = read_photographs(written["photographs"])  # [-1, 1]
        self.shapes = [shape_of(p) for p in written["photographs"]]

    def judge(self, images: torch.Tensor, style: str, painting_shape: str | None = None) -> dict:
        """Style, shape, content IoU (and painting's shape copied) of stylized photographs."""
        style_acc, shape_acc = self.judges.accuracy(images, style, self.shapes)
        iou = float(self.judges.content_iou(images, (self.photos + 1) / 2).mean())
        row = {"style": style_acc, "shape": shape_acc, "iou": iou}
        if painting_shape is not None:
            row["copied"] = self.judges.shape_copied(images, self.shapes, painting_shape)
        return row

    def stylize(self, task, collection: int, reference, seed: int, **options):
        """Stylize the photographs with ``task``'s ``collection`` in the study's prompt form."""
        options = {**PROBE, **options}
        return task.stylize(self.photos.to(task.device), collection, reference, seed=seed,
                            captions=self.captions, template=TEMPLATE, **options)  # fmt: skip


class Probe(Callback):
    """Judge the task's stylizations at step 0, every ``every`` steps and at the end.

    Args:
        world: the draw whose photographs are stylized.
        styles: ``(collection index, style, reference pixels, painting's shape or None)``.
        every: probe period in optimizer steps (0: only the start and the end).
        strength: img2img strength of the probe.
        seed: the sampling seed.
    """

    def __init__(self, world: WorldDraw, styles, every: int, strength: float, seed: int):
        self.world, self.styles, self.every = world, styles, every
        self.strength, self.seed = strength, seed
        self.curve: list[dict] = []

    def probe(self, task, step: int) -> None:
        """Append one row: per style and the mean of each measure."""
        was_training = task.training
        task.eval()
        row: dict = {"step": step}
        for k, style, reference, painting_shape in self.styles:
            out = self.world.stylize(task, k, reference, self.seed, strength=self.strength)
            row[style] = self.world.judge(out, style, painting_shape)
        for measure in row[self.styles[0][1]]:
            row[measure] = float(np.mean([row[s[1]][measure] for s in self.styles]))
        self.curve.append(row)
        task.train(was_training)

    def on_train_start(self, trainer, pl_module) -> None:
        """Step 0: the untrained style."""
        self.probe(pl_module, 0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Every ``every`` optimizer steps, and the last."""
        step = trainer.global_step
        if step == trainer.max_steps or (self.every and step % self.every == 0):
            self.probe(pl_module, step)


def fit(task, manifest: Path, probe: Probe, steps: int, root: Path) -> list[dict]:
    """Train ``task`` for ``steps`` on ``manifest`` with ``probe`` attached; return its curve."""
    data = ArtworkDataModule(manifest=str(manifest), resolution=32, batch_size=8, num_workers=0,
                             samples_per_epoch=10**6, random_flip=False)  # fmt: skip
    trainer = Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False,
                      limit_val_batches=0, callbacks=[probe], default_root_dir=root)  # fmt: skip
    trainer.fit(task, data)
    return probe.curve


def schedule(lr: float, seed: int) -> dict:
    """Return the optimizer settings every arm shares (the quickstart's)."""
    return {"pretrained": "world", "lr": lr, "warmup_steps": 20, "lr_schedule": "cosine",
            "templates": [TEMPLATE], "use_captions": True, "val_seed": seed}  # fmt: skip


def bank_run(world: WorldDraw, arm: str, lr: float, seed: int, args, every: int):
    """Claim 1: train one bank over the draw's collections; return ``(task, curve)``."""
    seed_everything(seed, verbose=False)
    task = PromptBankTask(collections=[style_slug(s) for s in world.bank_styles], num_tokens=4,
                          bank_attention=arm, bank_heads=4, **schedule(lr, seed))  # fmt: skip
    styles = [(k, s, world.exemplars[k], None) for k, s in enumerate(world.bank_styles)]
    probe = Probe(world, styles, every, args.strength, seed)
    curve = fit(task, world.root / "bank/shards/manifest.json", probe, args.steps, world.root)
    return task, curve


def painting_run(world: WorldDraw, arm: str, style: str, lr: float, seed: int, args, every: int):
    """Claim 2: learn one painting with the inverter or a direct embedding; return the curve."""
    seed_everything(seed, verbose=False)
    if arm == "inverter":  # InST: the token is the inverter's output alone (no word inside)
        task = InverterTask(collections=[style_slug(style)], vision_model="world",
                            image_features="pooled", image_queries=True, learned_base=False,
                            initializer_token=None, num_tokens=1, inverter_layers=2,
                            inverter_heads=4, **schedule(lr, seed))  # fmt: skip
    else:  # textual inversion: one vector, from the initializer word
        task = PromptBankTask(collections=[style_slug(style)], num_tokens=1,
                              bank_attention="none", **schedule(lr, seed))  # fmt: skip
    path = world.paintings[style]
    painting_shape = shape_of(path)
    probe = Probe(world, [(0, style, load_image(path)[0], painting_shape)], every,
                  args.strength, seed)  # fmt: skip
    folder = world.root / f"one-{style_slug(style)}"
    return fit(task, folder / "shards/manifest.json", probe, args.steps, world.root)


def sampling_run(world: WorldDraw, task: PromptBankTask, seed: int, args) -> dict:
    """Claim 3 on a trained bank: each setting's mean style, shape and IoU over collections."""
    settings = {
        f"{inversion} {strength:g}": {"inversion": inversion, "strength": strength}
        for inversion in ("stochastic", "noise", "ddim")
        for strength in args.sampling_strengths
    }
    settings.update({
        "adain off": {"strength": args.strength},
        "adain on": {"strength": args.strength, "adain": True},
        "sampler ddim 20": {"strength": args.strength},
        "sampler ddim 50": {"strength": args.strength, "steps": 50},
        "sampler dpmsolver++ 20": {"strength": args.strength, "scheduler": "dpmsolver++"},
    })  # fmt: skip
    task.eval()
    results = {}
    for name, options in settings.items():
        rows = [world.judge(world.stylize(task, k, world.exemplars[k], seed, **options),
                            style)
                for k, style in enumerate(world.bank_styles)]  # fmt: skip
        results[name] = {m: float(np.mean([r[m] for r in rows])) for m in rows[0]}
    return results


def final_score(curve: list[dict]) -> tuple[float, float]:
    """Return what a learning rate is chosen by: final style accuracy, then IoU."""
    return curve[-1]["style"], curve[-1]["iou"]


def draw(root: Path, seed: int, args, judges) -> WorldDraw:
    """Return the world sample of ``seed`` (world seed ``1000 + seed``) in its own folder."""
    folder = root / f"world-{seed}"
    return WorldDraw(folder, 1000 + seed, args.bank_styles, args.painting_styles, args.photos,
                     judges)  # fmt: skip


def tune(worlds: list[WorldDraw], args) -> dict:
    """Pick each arm's learning rate on the tuning worlds; return ``{arm: {lr, scores}}``."""
    grids = {arm: args.lrs for arm in BANK_ARMS if "bank" in args.arms}
    if "painting" in args.arms:
        grids.update({"inverter": args.inverter_lrs, "embedding": args.lrs})
    if args.tune_arms:
        grids = {arm: grid for arm, grid in grids.items() if arm in args.tune_arms}
    chosen = {}
    for arm, grid in grids.items():
        scores = {}
        for lr in grid:
            runs = []
            for world, seed in zip(worlds, args.tuning_seeds, strict=True):
                log.info("tune %s lr %g seed %d", arm, lr, seed)
                if arm in BANK_ARMS:
                    runs.append(final_score(bank_run(world, arm, lr, seed, args, 0)[1]))
                else:
                    runs += [final_score(painting_run(world, arm, style, lr, seed, args, 0))
                             for style in args.painting_styles]  # fmt: skip
            scores[lr] = tuple(float(np.mean(m)) for m in zip(*runs, strict=True))
        best = max(grid, key=lambda lr: scores[lr])
        chosen[arm] = {"lr": best, "tuning": {f"{lr:g}": s for lr, s in scores.items()}}
        log.info("%s: lr %g (tuning style, iou: %s)", arm, best, scores)
    return chosen


def report_seed(world, seed: int, chosen: dict, args, arms=None, earlier=None) -> dict:
    """Every arm at its chosen rate on one reported seed: curves and sampling results.

    Args:
        world: the seed's draw (unused when ``arms`` is empty).
        seed: the reported seed.
        chosen: each arm's rate.
        args: the study's options.
        arms: run only these arms (default: every arm of ``--arms``); the rest come from
            ``earlier``.
        earlier: this seed's record in an earlier study of the same footing (``--extend``).
    """
    out: dict = copy.deepcopy(earlier) if earlier else {"curves": {}, "sampling": None}
    for arm in BANK_ARMS if "bank" in args.arms else ():
        if arms is not None and arm not in arms:
            continue
        log.info("bank %s seed %d", arm, seed)
        task, curve = bank_run(world, arm, chosen[arm]["lr"], seed, args, args.every)
        out["curves"][arm] = curve
        if arm == "ssam" and "sampling" in args.arms:
            out["sampling"] = sampling_run(world, task, seed, args)
    for arm in PAINTING_ARMS if "painting" in args.arms else ():
        if arms is not None and arm not in arms:
            continue
        for style in args.painting_styles:
            log.info("painting %s %s seed %d", arm, style, seed)
            curve = painting_run(world, arm, style, chosen[arm]["lr"], seed, args, args.every)
            out["curves"][f"{arm} {style}"] = curve
    return out


#: the options an extended study must share with the study it extends
FOOTING = ("seeds", "tuning_seeds", "steps", "every", "strength", "sampling_strengths",
           "bank_styles", "painting_styles", "photos", "arms")  # fmt: skip


def read_earlier(path: str, args) -> dict:
    """Read the study that ``--extend`` names and check that it shares this run's footing.

    Raises:
        SystemExit: the file is missing or not a study, or an option of :data:`FOOTING`
            differs (one line naming it).
    """
    try:
        earlier = json.loads(Path(path).read_text())
        options, chosen, seeds = earlier["args"], earlier["chosen"], earlier["seeds"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"--extend {path}: not a readable study.json ({err})") from None
    for name in FOOTING:
        if options.get(name) != vars(args)[name]:
            raise SystemExit(f"--extend {path}: its --{name.replace('_', '-')} is "
                             f"{options.get(name)}, this run's {vars(args)[name]}")  # fmt: skip
    missing = [arm for arm in args.tune_arms if arm not in chosen]
    if missing or any(str(seed) not in seeds for seed in args.seeds):
        raise SystemExit(f"--extend {path}: it lacks the tuning of {missing} or a seed's runs")
    return earlier


def merge_choices(earlier: dict, tuned: dict) -> tuple[dict, set[str]]:
    """Join the new rates' scores to the earlier grid's; return the choices and what changed.

    Each tuned arm's rate is the best over both grids (by style, then IoU; on a tie the
    lower rate, as one grid in ascending order picks); the others keep theirs.
    """
    chosen, changed = copy.deepcopy(earlier), set()
    for arm, result in tuned.items():
        scores = {**earlier[arm]["tuning"], **result["tuning"]}
        scores = dict(sorted(scores.items(), key=lambda item: float(item[0])))
        best = float(max(scores, key=lambda lr: tuple(scores[lr])))
        chosen[arm] = {"lr": best, "tuning": scores}
        if best != earlier[arm]["lr"]:
            changed.add(arm)
    return chosen, changed


def parse_args() -> argparse.Namespace:
    """Parse the study's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--tuning-seeds", type=int, nargs="+", default=[100])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps of every arm")
    parser.add_argument("--every", type=int, default=50, help="probe every N steps")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.00125, 0.005, 0.02, 0.08])
    parser.add_argument(
        "--inverter-lrs", type=float, nargs="+", default=[2.5e-4, 1e-3, 4e-3, 1.6e-2]
    )
    parser.add_argument("--strength", type=float, default=0.8, help="the probe's strength")
    parser.add_argument("--sampling-strengths", type=float, nargs="+", default=[0.6, 0.8, 0.9])
    # styles the world model draws (text-to-image 0.875-1.0 by the judges; it draws no
    # stripes, so "striped" would only add a floor every arm shares)
    parser.add_argument("--bank-styles", nargs="+", default=["checkered", "dotted", "sketch"])
    parser.add_argument("--painting-styles", nargs="+", default=["dotted", "mosaic"])
    parser.add_argument("--photos", type=int, default=16, help="photographs per probe")
    parser.add_argument("--threshold", type=float, default=0.5, help="style of 'steps to'")
    parser.add_argument("--output", default="outputs/study")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument(
        "--tune-only", action="store_true",
        help="tune the rates on --tuning-seeds, write tuning.json and stop (no reported seeds)",
    )  # fmt: skip
    parser.add_argument(
        "--tune-arms", nargs="+", choices=[*BANK_ARMS, *PAINTING_ARMS],
        help="with --tune-only or --extend: tune these arms alone (default: every arm)",
    )  # fmt: skip
    parser.add_argument(
        "--extend", metavar="STUDY_JSON",
        help="an earlier study.json of the same footing: tune --tune-arms on the rates of "
        "--lrs / --inverter-lrs as well, re-run an arm whose choice changes, copy the rest",
    )  # fmt: skip
    args = parser.parse_args()
    if args.tune_arms and not (args.tune_only or args.extend):
        parser.error("--tune-arms needs --tune-only or --extend (every reported arm needs "
                     "its rate)")  # fmt: skip
    if args.extend and not args.tune_arms:
        parser.error("--extend needs --tune-arms (the arms whose grid it extends)")
    if set(args.seeds) & set(args.tuning_seeds):
        parser.error("--tuning-seeds must differ from --seeds (their photographs are held out)")
    if "sampling" in args.arms and "bank" not in args.arms:
        parser.error("--arms sampling needs bank (it samples from the trained SSAM banks)")
    return args


def write_tuning(output: Path, chosen: dict, args, seconds: float) -> None:
    """Write and print ``tuning.json``: each tuned arm's rate and its score per rate."""
    record = {"args": vars(args), "seconds": round(seconds), "chosen": chosen}
    (output / "tuning.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(chosen))


def main() -> None:
    """Tune, run every reported seed, write the study."""
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    earlier = read_earlier(args.extend, args) if args.extend else None
    judges = load_judges("world")
    with tempfile.TemporaryDirectory() as tmp:
        tuning = [draw(Path(tmp), seed, args, judges) for seed in args.tuning_seeds]
        chosen = tune(tuning, args)
        if args.tune_only:
            write_tuning(output, chosen, args, time.monotonic() - started)
            return
        rerun = None
        if earlier:
            chosen, rerun = merge_choices(earlier["chosen"], chosen)
            log.info("extending %s: re-running %s", args.extend, sorted(rerun) or "nothing")
        seeds = {}
        for seed in args.seeds:
            world = draw(Path(tmp), seed, args, judges) if rerun is None or rerun else None
            before = earlier["seeds"][str(seed)] if earlier else None
            seeds[seed] = report_seed(world, seed, chosen, args, rerun, before)
    study = {"args": vars(args), "seconds": round(time.monotonic() - started),
             "chosen": chosen, "seeds": seeds}  # fmt: skip
    if earlier:  # the time of the runs this study's figures come from, in all
        study["seconds"] += earlier["seconds"]
        study["extends"] = args.extend
    study["summary"] = write_report(study, output)
    (output / "study.json").write_text(json.dumps(study, indent=1) + "\n")
    print((output / "study.md").read_text())


if __name__ == "__main__":
    main()
