"""How far the prompt bank's output moves under training, per attention learning rate.

    python bench/ssam_stability.py --pretrained world --lr 0.02 --steps 300 \
        --attention-lr same 0.002 auto
    python bench/ssam_stability.py --pretrained random-sd15 --resolution 64 --lr 0.005 \
        --steps 20 --attention-lr same auto

Trains the quickstart bank (4 tokens, SSAM) on world collections for ``--steps`` steps per
attention learning rate (``same``: the vectors' ``lr``, the old single group; ``auto``:
:func:`default_attention_lr`; or a number) and reports, for the bank's output ``O_t``:

- ``first``: the first step's move relative to the start, ``|O_1 - O_0| / |O_0|``;
- ``late``: the mean move per step over the third quarter of the run (before the cosine
  schedule has taken the rate down), ``|O_t - O_{t-1}| / |O_0|``;
- ``norm``: the largest output norm over the run, ``max_t |O_t| / |O_0|``;
- ``none_*``: the same figures for a bank without attention, the scale to compare with;
- ``repeat``: with ``--repeat``, the largest weight difference between two identical runs.

Prints one JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from artbank_pl.datamodules import ArtworkDataModule, build_shards
from artbank_pl.datamodules.shards import manifest_collections, read_manifest
from artbank_pl.tasks import PromptBankTask
from artbank_pl.world.cli import DEFAULT_STYLES, write_images


class OutputTrace(Callback):
    """The bank's output after every optimizer step (and before the first)."""

    def __init__(self) -> None:
        self.outputs: list[torch.Tensor] = []

    def on_train_start(self, trainer, pl_module) -> None:
        """Record the starting output."""
        self.outputs.append(pl_module.bank.embeddings().detach().clone())

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        """Record the output after this step."""
        self.outputs.append(pl_module.bank.embeddings().detach().clone())

    def summary(self) -> dict:
        """``first``, ``late`` and ``norm`` of the module docstring."""
        start = self.outputs[0].norm()
        moves = [
            (b - a).norm() / start for a, b in zip(self.outputs[:-1], self.outputs[1:], strict=True)
        ]
        return {
            "first": round(float(moves[0]), 4),
            "late": round(
                float(torch.stack(moves[len(moves) // 2 : 3 * len(moves) // 4]).mean()), 4
            ),
            "norm": round(float(max(o.norm() for o in self.outputs) / start), 3),
        }


def train(args, manifest: Path, attention: str, attention_lr: float | None, root: Path):
    """Train one bank; return its trace and the trained task."""
    seed_everything(args.seed, verbose=False)
    collections = manifest_collections(read_manifest(manifest))
    task = PromptBankTask(
        collections=collections, pretrained=args.pretrained, num_tokens=4,
        bank_attention=attention, bank_heads=4, lr=args.lr, attention_lr=attention_lr,
        warmup_steps=min(20, args.steps // 10), templates=["{caption} in {} style"],
    )  # fmt: skip
    trace = OutputTrace()
    trainer = Trainer(
        accelerator="cpu", max_steps=args.steps, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
        callbacks=[trace], default_root_dir=root,
    )  # fmt: skip
    data = ArtworkDataModule(
        manifest=str(manifest), resolution=args.resolution, batch_size=8, num_workers=0,
        samples_per_epoch=400,
    )  # fmt: skip
    trainer.fit(task, data)
    return trace, task


def attention_rate(choice: str, lr: float) -> float | None:
    """Read ``--attention-lr``: ``same`` is ``lr``, ``auto`` None (the default), else a number."""
    return {"same": lr, "auto": None}.get(choice) if choice in ("same", "auto") else float(choice)


def main() -> None:
    """Train the baseline and each setting; print one JSON line per setting."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrained", default="world")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attention", default="ssam", choices=["ssam", "self"])
    parser.add_argument("--attention-lr", nargs="+", default=["same", "auto"])
    parser.add_argument("--repeat", action="store_true", help="run each setting twice")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root / "images", DEFAULT_STYLES, per_style=24, photos=0, seed=0)
        build_shards(root / "images/collections", root / "shards", size=args.resolution,
                     maxcount=8, val_per_collection=2, image_format="png")  # fmt: skip
        manifest = root / "shards/manifest.json"
        baseline, _ = train(args, manifest, "none", None, root)
        for choice in args.attention_lr:
            rate = attention_rate(choice, args.lr)
            trace, task = train(args, manifest, args.attention, rate, root)
            row = {
                "attention_lr": choice,
                "rate": task.optimizer_groups()[1]["lr"],
                **trace.summary(),
            }
            row.update({f"none_{k}": v for k, v in baseline.summary().items()})
            if args.repeat:
                _, again = train(args, manifest, args.attention, rate, root)
                pairs = zip(task.trainable_parameters(), again.trainable_parameters(), strict=True)
                row["repeat"] = max(float((a - b).abs().max()) for a, b in pairs)
            print(json.dumps({"pretrained": args.pretrained, "lr": args.lr, **row}), flush=True)


if __name__ == "__main__":
    main()
