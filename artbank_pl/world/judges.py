"""The world's judges: a style classifier and a content (shape) classifier.

Each is a small CNN trained on generator output across every style and shape, so the style
judge does not care which shape it sees and the content judge does not care about style.
They read back what a stylization did: ``style_accuracy`` is the fraction of outputs the
style judge assigns to the intended style, ``content_accuracy`` the fraction whose shape
the content judge still recognises.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from artbank_pl.errors import DataError
from artbank_pl.world.scenes import SHAPES, SIZE, STYLES, sample_batch

log = logging.getLogger(__name__)
KINDS = {"style": STYLES, "content": SHAPES}


class Judge(nn.Module):
    """A small CNN from ``[B, 3, SIZE, SIZE]`` images in ``[0, 1]`` to class logits.

    Args:
        num_classes: number of classes.
        width: channels of the first layer.
    """

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, stride=2), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GELU(),
        )  # fmt: skip
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, num_classes]``; images of another size are resized first."""
        if images.shape[-2:] != (SIZE, SIZE):
            images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", antialias=True)
        x = self.features(images * 2 - 1)
        pooled = torch.cat([x.mean((2, 3)), x.amax((2, 3))], dim=1)
        return self.head(pooled)


def _batch(rng: np.random.Generator, n: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, shapes, styles = sample_batch(rng, n)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return x, torch.tensor(styles if kind == "style" else shapes)


def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Apply, per image, what a diffusion model's output shows and a style does not define.

    A random mix of blur, pixel noise, washed-out colour and a contrast change, so that a
    judge decides by the style's structure (stripes, dots, outlines, glow on black, tiles)
    and not by the exact pixel values of clean generator output. Half the batch stays clean.

    Args:
        x: images ``[B, 3, H, W]`` in ``[0, 1]``.
        gen: the generator that draws the degradations.
    """
    b = x.shape[0]

    def draw(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(b, 1, 1, 1, generator=gen)) * keep

    keep = (torch.rand(b, 1, 1, 1, generator=gen) < 0.5).float()
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = torch.lerp(x, blurred, draw(0.0, 0.7))
    grey = x.mean(1, keepdim=True)
    x = torch.lerp(x, grey.expand_as(x), draw(0.0, 0.6))  # washed-out colour
    mid = x.mean((1, 2, 3), keepdim=True)
    x = mid + (x - mid) * (1 - draw(-0.2, 0.3))  # contrast in [0.7, 1.2]
    x = x + draw(0.0, 0.08) * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1)


def train_judge(kind: str, seed: int, steps: int, batch_size: int = 64) -> tuple[Judge, float]:
    """Train one judge; return it and its accuracy on 1,024 held-out scenes."""
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 1 if kind == "style" else 2])
    gen = torch.Generator().manual_seed(seed)
    judge = Judge(len(KINDS[kind]))
    optimizer = torch.optim.AdamW(judge.parameters(), lr=2e-3)
    for step in range(steps):
        x, y = _batch(rng, batch_size, kind)
        loss = F.cross_entropy(judge(degrade(x, gen)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 100 == 0:
            log.info("%s judge step %d/%d: loss %.4f", kind, step + 1, steps, loss.item())
    judge.eval().requires_grad_(False)
    x, y = _batch(np.random.default_rng([seed, 99]), 1024, kind)
    accuracy = float((judge(x).argmax(1) == y).float().mean())
    return judge, accuracy


def train_judges(folder: str | Path, seed: int = 0, steps: int = 500) -> dict[str, float]:
    """Train both judges and save them to ``folder``; return their held-out accuracies."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    accuracies = {}
    for kind in KINDS:
        judge, accuracies[kind] = train_judge(kind, seed, steps)
        save_file(judge.state_dict(), folder / f"{kind}.safetensors")
    meta = {"classes": {k: list(v) for k, v in KINDS.items()}, "held_out_accuracy": accuracies}
    (folder / "judges.json").write_text(json.dumps(meta, indent=2) + "\n")
    return accuracies


class Judges:
    """Both judges, loaded from a folder written by :func:`train_judges`.

    Raises:
        DataError: the folder lacks a judge file.
    """

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        meta_path = folder / "judges.json"
        if not meta_path.is_file():
            raise DataError(f"no judges in {folder}: judges.json is missing")
        self.classes = json.loads(meta_path.read_text())["classes"]
        self.models = {}
        for kind, names in self.classes.items():
            judge = Judge(len(names))
            judge.load_state_dict(load_file(folder / f"{kind}.safetensors"))
            self.models[kind] = judge.eval().requires_grad_(False)

    @torch.no_grad()
    def predict(self, kind: str, images: torch.Tensor) -> list[str]:
        """Class names of ``[B, 3, H, W]`` images in ``[0, 1]`` (uint8 is rescaled)."""
        if images.dtype == torch.uint8:
            images = images.float() / 255
        model = self.models[kind]
        device = next(model.parameters()).device
        logits = model(images.float().to(device))
        return [self.classes[kind][i] for i in logits.argmax(1).tolist()]

    def accuracy(
        self, images: torch.Tensor, style: str, contents: list[str]
    ) -> tuple[float, float]:
        """Read a stylization back: ``(style_accuracy, content_accuracy)``.

        Args:
            images: stylized images ``[B, 3, H, W]`` in ``[0, 1]``.
            style: the intended style.
            contents: the shape each image must still show (for example the content judge's
                reading of the input photographs).
        """
        styles = self.predict("style", images)
        shapes = self.predict("content", images)
        style_hits = [s == style for s in styles]
        content_hits = [a == b for a, b in zip(shapes, contents, strict=True)]
        return float(np.mean(style_hits)), float(np.mean(content_hits))

    def to(self, device: torch.device | str) -> Judges:
        """Move both judges to ``device``."""
        for model in self.models.values():
            model.to(device)
        return self


def load_judges(name: str) -> Judges:
    """Load ``world`` (the shipped judges) or the judges in a folder."""
    from artbank_pl.world import judges_dir

    return Judges(judges_dir(name))
