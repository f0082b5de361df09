"""The world's judges: a style classifier, a content (shape) classifier and a shape mask.

Each is a small CNN trained on generator output across every style and shape, so the style
judge does not care which shape it sees and the content judges do not care about style.
They read back what a stylization did: ``style_accuracy`` is the fraction of outputs the
style judge assigns to the intended style, ``content_accuracy`` the fraction whose shape
the content judge still recognises, and ``content_iou`` how well the output's shape covers
the photograph's (IoU of the mask judge's foregrounds): position and size, which a prompt
that names the shape cannot supply.

The style judge has a reject class, ``other``, trained on scenes that are no style
(:mod:`artbank_pl.world.negatives`), so colour noise or blobs are not read as "striped";
and a ``striped`` verdict also needs stripes' structure in the spectrum
(:mod:`artbank_pl.world.structure`; judges with a mask judge), which the model's own
colour blobs lack. The answers on a fixed probe set are kept in ``judges.json``.
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
from artbank_pl.optim import warmup_schedule_factor
from artbank_pl.world.negatives import OTHER, negative_batch, probe_set
from artbank_pl.world.scenes import (
    SHAPES,
    SIZE,
    STYLES,
    random_layout,
    render,
    sample_batch,
    shape_mask,
)
from artbank_pl.world.structure import STRIPE_SHARE_MIN, stripe_share

log = logging.getLogger(__name__)
KINDS = {"style": (*STYLES, OTHER), "content": SHAPES}
#: share of the style judge's training scenes drawn from the negatives
NEGATIVE_SHARE = 0.25


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


class MaskJudge(nn.Module):
    """A fully convolutional net from ``[B, 3, SIZE, SIZE]`` scenes to shape-mask logits.

    Dilated convolutions see 31 pixels, enough to fill a neon or sketch outline's inside.

    Args:
        width: channels of every layer.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.GELU()]
        for dilation in (2, 4, 8):
            layers += [nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation), nn.GELU()]
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Mask logits ``[B, SIZE, SIZE]``; images of another size are resized first."""
        if images.shape[-2:] != (SIZE, SIZE):
            images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", antialias=True)
        return self.net(images * 2 - 1)[:, 0]


def mask_batch(
    rng: np.random.Generator, n: int, styles: tuple[str, ...] = STYLES
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` scenes of random shapes and ``styles`` with their true shape masks.

    Returns:
        images ``[n, 3, SIZE, SIZE]`` in ``[0, 1]`` and masks ``[n, SIZE, SIZE]`` (0 or 1).
    """
    images, masks = [], []
    for _ in range(n):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        style = styles[int(rng.integers(len(styles)))]
        layout = random_layout(rng)
        images.append(render(shape, style, rng, layout))
        masks.append(shape_mask(shape, *layout))
    return to_unit(np.stack(images)), torch.from_numpy(np.stack(masks)).float()


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image IoU of boolean masks ``[B, H, W]`` (1 where both are empty)."""
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def _optimizer(judge: nn.Module, steps: int):
    """AdamW at 2e-3 with a cosine decay to a tenth over ``steps``.

    At a constant rate the style judge's loss still swung between 0.10 and 0.26 in its last
    300 of 800 steps, so where the last step fell decided the judge; the decay settles it.
    """

    def factor(step: int) -> float:
        return warmup_schedule_factor(step, 0, steps, "cosine", min_ratio=0.1)

    optimizer = torch.optim.AdamW(judge.parameters(), lr=2e-3)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_mask_judge(seed: int, steps: int, batch_size: int = 64) -> tuple[MaskJudge, float]:
    """Train the mask judge; return it and its mean IoU on 512 held-out scenes."""
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 3])
    gen = torch.Generator().manual_seed(seed)
    judge = MaskJudge()
    optimizer, schedule = _optimizer(judge, steps)
    for step in range(steps):
        x, y = mask_batch(rng, batch_size)
        loss = F.binary_cross_entropy_with_logits(judge(degrade(x, gen)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0:
            log.info("mask judge step %d/%d: loss %.4f", step + 1, steps, loss.item())
    judge.eval().requires_grad_(False)
    x, y = mask_batch(np.random.default_rng([seed, 99]), 512)
    return judge, float(mask_iou(judge(x) > 0, y > 0.5).mean())


def to_unit(images: np.ndarray) -> torch.Tensor:
    """``uint8 [B, H, W, 3]`` scenes to ``[B, 3, H, W]`` floats in ``[0, 1]``."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def _batch(rng: np.random.Generator, n: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "style":  # a quarter of no-style scenes, labelled "other"
        negatives = int(rng.binomial(n, NEGATIVE_SHARE))
        images, _, styles = sample_batch(rng, n - negatives)
        images = np.concatenate([images, negative_batch(rng, negatives)])
        return to_unit(images), torch.tensor(styles + [len(STYLES)] * negatives)
    images, shapes, _ = sample_batch(rng, n)
    return to_unit(images), torch.tensor(shapes)


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
    optimizer, schedule = _optimizer(judge, steps)
    for step in range(steps):
        x, y = _batch(rng, batch_size, kind)
        loss = F.cross_entropy(judge(degrade(x, gen)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0:
            log.info("%s judge step %d/%d: loss %.4f", kind, step + 1, steps, loss.item())
    judge.eval().requires_grad_(False)
    x, y = _batch(np.random.default_rng([seed, 99]), 1024, kind)
    accuracy = float((judge(x).argmax(1) == y).float().mean())
    return judge, accuracy


def train_judges(folder: str | Path, seed: int = 0, steps: int = 500) -> dict[str, float]:
    """Train the three judges and save them to ``folder``; return their held-out scores.

    ``judges.json`` also keeps the style judge's answers on the probe set
    (:func:`probe_table`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    accuracies, models = {}, {}
    for kind in KINDS:
        models[kind], accuracies[kind] = train_judge(kind, seed, steps)
        save_file(models[kind].state_dict(), folder / f"{kind}.safetensors")
    mask, accuracies["mask_iou"] = train_mask_judge(seed, steps)
    save_file(mask.state_dict(), folder / "mask.safetensors")
    meta = {"classes": {k: list(v) for k, v in KINDS.items()}, "held_out_accuracy": accuracies}
    (folder / "judges.json").write_text(json.dumps(meta, indent=2) + "\n")
    write_probe_table(folder, seed)
    return accuracies


def write_probe_table(folder: str | Path, seed: int = 0) -> dict[str, dict]:
    """Put the judges' answers on the probe set (:func:`probe_table`) into ``judges.json``."""
    meta_path = Path(folder) / "judges.json"
    meta = json.loads(meta_path.read_text())
    meta["probe"] = probe_table(Judges(folder), seed)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta["probe"]


@torch.no_grad()
def probe_table(judges: Judges, seed: int = 0, per_kind: int = 64) -> dict[str, dict]:
    """Return the style verdicts on the probe set, as shares per answer and row.

    Rows: each negative kind (must be ``other``) and each style, clean and degraded
    (must be that style). The probe scenes come from seeds the judge never trained on.
    The verdicts are :meth:`Judges.predict`'s, the stripe check included.
    """
    rows = {f"no style: {kind}": to_unit(images) for kind, images in probe_set(per_kind).items()}
    rng = np.random.default_rng([seed, 1234])
    gen = torch.Generator().manual_seed(seed + 1234)
    for style in STYLES:
        images, _, _ = sample_batch(rng, per_kind, styles=(style,))
        rows[style] = to_unit(images)
        rows[f"{style}, degraded as in training"] = degrade(to_unit(images), gen)
    table = {}
    for row, images in rows.items():
        votes = judges.predict("style", images)
        shares = {name: round(votes.count(name) / len(votes), 3) for name in set(votes)}
        table[row] = dict(sorted(shares.items(), key=lambda kv: (-kv[1], kv[0])))
    return table


class Judges:
    """The judges, loaded from a folder written by :func:`train_judges`.

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
        self.mask = None  # judges trained before the mask judge have none
        if (folder / "mask.safetensors").is_file():
            self.mask = MaskJudge()
            self.mask.load_state_dict(load_file(folder / "mask.safetensors"))
            self.mask.eval().requires_grad_(False)

    @torch.no_grad()
    def predict(self, kind: str, images: torch.Tensor) -> list[str]:
        """Class names of ``[B, 3, H, W]`` images in ``[0, 1]`` (uint8 is rescaled).

        A ``striped`` style verdict stands only if the image has stripes' structure
        (:func:`~artbank_pl.world.structure.stripe_share` inside the mask judge's shape);
        otherwise it is ``other``: colour blobs fool the CNN, not the spectrum.
        """
        if images.dtype == torch.uint8:
            images = images.float() / 255
        model = self.models[kind]
        device = next(model.parameters()).device
        images = images.float().to(device)
        names = [self.classes[kind][i] for i in model(images).argmax(1).tolist()]
        if kind == "style" and self.mask is not None and "striped" in names:
            names = self._check_stripes(images, names)
        return names

    def _check_stripes(self, images: torch.Tensor, names: list[str]) -> list[str]:
        """Turn the ``striped`` verdicts without stripes' structure into ``other``."""
        if images.shape[-2:] != (SIZE, SIZE):
            images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", antialias=True)
        shares = stripe_share(images, self.mask(images) > 0).tolist()
        return [OTHER if name == "striped" and share < STRIPE_SHARE_MIN else name
                for name, share in zip(names, shares, strict=True)]  # fmt: skip

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

    def shape_copied(self, images: torch.Tensor, shapes: list[str], source_shape: str) -> float:
        """Share of outputs judged to show ``source_shape`` where the content's shape differs.

        An inverter that learns a painting's content instead of its style draws the
        painting's shape (``source_shape``) over every photograph: this counts it.

        Args:
            images: stylized images ``[B, 3, H, W]`` in ``[0, 1]``.
            shapes: the shape each content image shows.
            source_shape: the style image's shape.
        """
        judged = self.predict("content", images)
        differs = [i for i, shape in enumerate(shapes) if shape != source_shape]
        return sum(judged[i] == source_shape for i in differs) / max(1, len(differs))

    @torch.no_grad()
    def content_iou(self, outputs: torch.Tensor, contents: torch.Tensor) -> torch.Tensor:
        """Per-image IoU ``[B]`` of the shape masks the mask judge reads in outputs and contents.

        Both ``[B, 3, H, W]`` in ``[0, 1]``. A shape of the right class in the wrong place or
        at the wrong size scores low: the prompt names the class, not where the shape is.

        Raises:
            DataError: these judges have no mask judge.
        """
        if self.mask is None:
            raise DataError("these judges have no mask judge (mask.safetensors): retrain them")
        device = next(self.mask.parameters()).device
        ours = self.mask(outputs.float().to(device)) > 0
        theirs = self.mask(contents.float().to(device)) > 0
        return mask_iou(ours, theirs)

    def to(self, device: torch.device | str) -> Judges:
        """Move the judges to ``device``."""
        for model in [*self.models.values(), *([self.mask] if self.mask else [])]:
            model.to(device)
        return self


def load_judges(name: str) -> Judges:
    """Load ``world`` (the shipped judges) or the judges in a folder."""
    from artbank_pl.world import judges_dir

    return Judges(judges_dir(name))
