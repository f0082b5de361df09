"""The papers' claims, measured on the planted style world (``make study``).

    python bench/study.py --seeds 0 1 2 --output outputs/study

Every arm gets the same budget (steps, batch, learning rate, evaluation) and runs once per
seed; the world's judges read style and content back from stylized world photographs.

1. ArtBank: does SSAM speed up training of the prompt bank? ``bank_attention`` ssam vs self
   vs none: style accuracy against step, steps to reach ``--threshold``, final accuracies.
   The banks train and stylize with ``--template`` (the world's caption grammar, as the
   demo); ``ssam-default-templates`` is ssam with the generic "in the style of" templates
   and the caption after a comma, to show what the template does.
2. InST: does the attention inverter learn faster than plain textual inversion? The
   inverter on CLIP ``patch`` tokens and on the ``pooled`` embedding vs a multi-vector
   embedding trained directly (a one-collection bank with ``bank_attention: none``), each on
   one painting.
3. InST: does stochastic inversion preserve content? ``stochastic`` vs ``noise`` vs ``ddim``
   inversion at several strengths: style accuracy against content accuracy.
4. AdaIN on and off; DDIM at 50 steps against DPM-Solver++ at 20.

Writes ``study.json`` (every number), ``curves.png`` and ``tradeoff.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, Trainer

from artbank_pl.datamodules import ArtworkDataModule, build_shards
from artbank_pl.datamodules.shards import manifest_collections, read_manifest
from artbank_pl.styles import load_image
from artbank_pl.tasks import InverterTask, PromptBankTask
from artbank_pl.world.cli import DEFAULT_STYLES, style_slug, write_images
from artbank_pl.world.judges import load_judges

#: the demo's styles, in bank order (the manifest sorts collections by name)
STYLES = tuple(sorted(DEFAULT_STYLES))
#: the demo's stylization (configs/stylize-quickstart.yaml): every probe judges what it shows
GUIDANCE = 10.0
PROBE = {"steps": 20, "strength": 0.7, "guidance_scale": GUIDANCE}
#: the world model's caption grammar ("a circle in striped style"), the demo's bank template
WORLD_TEMPLATE = "{caption} in {} style"
log = logging.getLogger("study")
#: the claims ``--arms`` can pick: the bank's modes, one painting, the sampling options
ARMS = ("bank", "painting", "sampling")


class World:
    """Collections, one painting per style, photographs and the judges, made once."""

    def __init__(self, root: Path, per_style: int, photos: int) -> None:
        self.root = root
        write_images(root / "bank", STYLES, per_style=per_style, photos=photos, seed=100)
        build_shards(root / "bank/collections", root / "bank-shards", size=32, maxcount=8,
                     image_format="png")  # fmt: skip
        order = manifest_collections(read_manifest(root / "bank-shards/manifest.json"))
        assert order == [style_slug(s) for s in STYLES], order  # bank index k is STYLES[k]
        self.paintings = {}
        for style in STYLES:
            single = root / f"one-{style_slug(style)}"
            write_images(single, (style,), per_style=1, photos=0, seed=200)
            build_shards(single / "collections", single / "shards", size=32, maxcount=1,
                         image_format="png")  # fmt: skip
            self.paintings[style] = single
        files = sorted((root / "bank/photographs").glob("*.png"))
        self.photos = torch.cat([load_image(p) for p in files])  # [-1, 1]
        self.captions = [p.with_suffix(".txt").read_text().strip() for p in files]
        self.judges = load_judges("world")
        self.content = self.judges.predict("content", (self.photos + 1) / 2)
        # one training image per bank collection: the inverter's input, AdaIN's reference
        self.exemplars = {
            k: load_image(sorted((root / "bank/collections" / style_slug(s)).glob("*.png"))[0])[0]
            for k, s in enumerate(STYLES)
        }

    def accuracy(self, images: torch.Tensor, style: str) -> tuple[float, float]:
        """(style accuracy, content accuracy) of stylized photographs ``[N, 3, H, W]``."""
        return self.judges.accuracy(images, style, self.content)


class Probe(Callback):
    """Judge the task's stylizations of the photographs every ``every`` steps (and at 0)."""

    def __init__(
        self, world: World, styles: dict[int, str], exemplars, every: int, template: str = "{}"
    ) -> None:
        self.world, self.styles, self.exemplars, self.every = world, styles, exemplars, every
        self.template = template
        self.curve: list[dict] = []

    def _probe(self, task, step: int) -> None:
        was_training = task.training
        task.eval()
        row = {"step": step}
        for k, style in self.styles.items():
            out = task.stylize(self.world.photos.to(task.device), k, self.exemplars[k], seed=0,
                               captions=self.world.captions, template=self.template,
                               **PROBE)  # fmt: skip
            row[style] = self.world.accuracy(out, style)
        row["style_acc"] = float(np.mean([row[s][0] for s in self.styles.values()]))
        row["content_acc"] = float(np.mean([row[s][1] for s in self.styles.values()]))
        self.curve.append(row)
        task.train(was_training)

    def on_train_start(self, trainer, pl_module) -> None:
        """Step 0: the untrained style."""
        self._probe(pl_module, 0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Every ``every`` optimizer steps."""
        if trainer.global_step % self.every == 0:
            self._probe(pl_module, trainer.global_step)


def fit(task, manifest: Path, probe: Probe, steps: int, seed: int, root: Path):
    """Train ``task`` for ``steps`` on ``manifest`` with ``probe`` attached."""
    from lightning.pytorch import seed_everything

    seed_everything(seed, verbose=False)
    data = ArtworkDataModule(manifest=str(manifest), resolution=32, batch_size=8,
                             num_workers=0, samples_per_epoch=10**6)  # fmt: skip
    trainer = Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False,
                      limit_val_batches=0, callbacks=[probe], default_root_dir=root)  # fmt: skip
    trainer.fit(task, data)
    return probe.curve


def steps_to(curve: list[dict], threshold: float) -> int | None:
    """Return the first probed step whose style accuracy reaches ``threshold``."""
    return next((row["step"] for row in curve if row["style_acc"] >= threshold), None)


def world_bank(
    mode: str, seed: int, lr: float, template: str | None, attention_lr: float | None = None
) -> PromptBankTask:
    """Build a prompt bank over the study's collections.

    ``template`` None: the generic templates; ``attention_lr`` None: the task's default rate
    for the attention's weights.
    """
    return PromptBankTask(collections=[style_slug(s) for s in STYLES], num_tokens=4,
                          bank_attention=mode, bank_heads=4, pretrained="world", lr=lr,
                          attention_lr=attention_lr, lr_schedule="constant", val_seed=seed,
                          templates=[template] if template else None)  # fmt: skip


def bank_arm(world: World, mode: str, seed: int, args, root: Path, template: str | None):
    """Claim 1: one prompt bank over all collections, trained and probed with ``template``.

    ``ssam-lr-same`` is ``ssam`` with its attention at the vectors' rate (one AdamW group, as
    before the attention had its own).
    """
    attention_lr = args.lr if mode == "ssam-lr-same" else None
    task = world_bank(mode.removesuffix("-lr-same"), seed, args.lr, template, attention_lr)
    probe = Probe(world, dict(enumerate(STYLES)), world.exemplars, args.every, template or "{}")
    return fit(task, world.root / "bank-shards/manifest.json", probe, args.steps, seed, root)


def single_painting_arm(world: World, arm: str, style: str, seed: int, args, root: Path):
    """Claim 2: learn one painting's style with an inverter or a direct embedding."""
    folder = world.paintings[style]
    if arm == "embedding":
        task = PromptBankTask(collections=[style_slug(style)], num_tokens=1,
                              bank_attention="none", pretrained="world", lr=args.lr,
                              lr_schedule="constant", val_seed=seed)  # fmt: skip
    else:
        task = InverterTask(collections=[style_slug(style)], vision_model="tiny",
                            image_features=arm, inverter_heads=4, pretrained="world",
                            lr=args.inverter_lr, lr_schedule="constant", val_seed=seed)  # fmt: skip
    painting = load_image(next((folder / "collections" / style_slug(style)).glob("*.png")))[0]
    probe = Probe(world, {0: style}, {0: painting}, args.every)
    return fit(task, folder / "shards/manifest.json", probe, args.inst_steps, seed, root)


def sampling_arms(world: World, task: PromptBankTask, template: str) -> dict:
    """Claims 3 and 4 on a trained bank: inversions x strengths, AdaIN, samplers."""
    settings = {}
    for inversion in ("stochastic", "noise", "ddim"):
        for strength in (0.5, 0.6, 0.7, 0.8, 0.9):
            settings[f"{inversion} {strength}"] = {"inversion": inversion, "strength": strength,
                                                   "steps": 20}  # fmt: skip
    photos = world.photos.to(task.device)
    settings["adain on"] = {"inversion": "stochastic", "strength": 0.7, "steps": 20, "adain": True}
    settings["adain off"] = {"inversion": "stochastic", "strength": 0.7, "steps": 20}
    settings["ddim 50"] = {"inversion": "stochastic", "strength": 0.7, "steps": 50}
    settings["dpmsolver++ 20"] = {"inversion": "stochastic", "strength": 0.7, "steps": 20,
                                  "scheduler": "dpmsolver++"}  # fmt: skip
    results = {}
    for name, options in settings.items():
        scores = [
            world.accuracy(task.stylize(photos, k, world.exemplars[k], guidance_scale=GUIDANCE,
                                        seed=0, captions=world.captions, template=template,
                                        **options), style)
            for k, style in enumerate(STYLES)
        ]  # fmt: skip
        results[name] = {"style_acc": float(np.mean([s for s, _ in scores])),
                         "content_acc": float(np.mean([c for _, c in scores]))}  # fmt: skip
    return results


def summarise(curves: dict[str, list[list[dict]]], threshold: float) -> dict:
    """Per arm: mean/std of final accuracies and of steps to threshold over seeds."""
    table = {}
    for arm, runs in curves.items():
        reach = [steps_to(c, threshold) for c in runs]
        table[arm] = {
            "final_style_acc": [c[-1]["style_acc"] for c in runs],
            "final_content_acc": [c[-1]["content_acc"] for c in runs],
            "steps_to_threshold": reach,
            "reached": sum(r is not None for r in reach),
        }
    return table


def plot(curves: dict, tradeoff: dict, output: Path) -> None:
    """Accuracy against step per arm (mean and seed band), and the inversion trade-off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bank_arms = ("ssam", "ssam-lr-same", "self", "none", "ssam-default-templates")
    panels = [
        (tuple(arm for arm in group if arm in curves), title)  # --arms may leave a group out
        for group, title in ((bank_arms, "prompt bank (claim 1)"),
                             (("patch", "pooled", "embedding"), "one painting (claim 2)"))
        if any(arm in curves for arm in group)
    ]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (group, title) in zip(axes[0], panels, strict=True):
        for arm in group:
            runs = curves[arm]
            steps = [row["step"] for row in runs[0]]
            acc = np.array([[row["style_acc"] for row in run] for run in runs])
            ax.plot(steps, acc.mean(0), label=arm, linewidth=2)
            ax.fill_between(steps, acc.min(0), acc.max(0), alpha=0.2)
        ax.set(title=title, xlabel="step", ylabel="style accuracy (judge)", ylim=(-0.02, 1.02))
        ax.legend()
    fig.tight_layout()
    fig.savefig(output / "curves.png", dpi=120)
    fig, ax = plt.subplots(figsize=(6, 5))
    for inversion, marker in (("stochastic", "o"), ("noise", "s"), ("ddim", "^")):
        points = [(v["content_acc"], v["style_acc"], k.split()[1]) for k, v in tradeoff.items()
                  if k.startswith(inversion + " ")]  # fmt: skip
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=inversion)
        for x, y, strength in points:
            ax.annotate(strength, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(title="style vs content per inversion (labels: strength)",
           xlabel="content accuracy", ylabel="style accuracy")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / "tradeoff.png", dpi=120)


def main() -> None:
    """Run every arm over the seeds and write the study."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200, help="bank steps per run")
    parser.add_argument("--inst-steps", type=int, default=150, help="one-painting steps per run")
    parser.add_argument("--every", type=int, default=25, help="probe every N steps")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--inverter-lr", type=float, default=1e-3)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--template", default=WORLD_TEMPLATE, help="the banks' prompt template")
    parser.add_argument("--output", default="outputs/study")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS),
                        help="which claims to run (default: all)")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world = World(root, per_style=24, photos=16)
        curves: dict[str, list[list[dict]]] = {}
        for seed in args.seeds:
            for mode in ("ssam", "ssam-lr-same", "self", "none") if "bank" in args.arms else ():
                log.info("bank %s seed %d", mode, seed)
                run = bank_arm(world, mode, seed, args, root, args.template)
                curves.setdefault(mode, []).append(run)
            if "bank" in args.arms:
                log.info("bank ssam with the generic templates, seed %d", seed)
                run = bank_arm(world, "ssam", seed, args, root, None)
                curves.setdefault("ssam-default-templates", []).append(run)
            for arm in ("patch", "pooled", "embedding") if "painting" in args.arms else ():
                log.info("one painting %s seed %d", arm, seed)
                run = single_painting_arm(world, arm, "dotted", seed, args, root)
                curves.setdefault(arm, []).append(run)
        tradeoff = {}
        if "sampling" in args.arms:
            # claims 3 and 4 on an ssam bank of the first seed, trained again for the same budget
            trained = world_bank("ssam", args.seeds[0], args.lr, args.template)
            probe = Probe(world, {}, {}, args.steps + 1)
            fit(trained, root / "bank-shards/manifest.json", probe, args.steps, args.seeds[0], root)
            tradeoff = sampling_arms(world, trained.eval(), args.template)
    study = {
        "args": vars(args), "styles": list(STYLES), "seconds": round(time.monotonic() - started),
        "summary": summarise(curves, args.threshold), "curves": curves, "sampling": tradeoff,
    }  # fmt: skip
    (output / "study.json").write_text(json.dumps(study, indent=1) + "\n")
    plot(curves, tradeoff, output)
    print(json.dumps({"summary": study["summary"], "sampling": tradeoff}, indent=1))


if __name__ == "__main__":
    main()
