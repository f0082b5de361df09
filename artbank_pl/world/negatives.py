"""Scenes that are no style of the world: the style judge's "other" class and its probe set.

A judge trained only on the world's styles must put every image into one of them, and the
first one did: it called 98 % of shapes filled with random per-pixel colours "striped". These
renderers draw what a diffusion model produces when it does not render a style (colour
noise, colour blobs, two flat colours, a style blurred past recognition, pure noise), so
the judge learns to answer "other" for them. The probe set is drawn from a seed the judge
never trained on (:data:`PROBE_SEED`); its confusion table is kept with the judges.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from artbank_pl.world.scenes import (
    RENDERERS,
    SHAPES,
    SIZE,
    _blur,
    _colour,
    _light_background,
    _saturated,
    random_layout,
    shape_mask,
)

#: the reject class of the style judge
OTHER = "other"
#: seed of the probe set (training draws from other seeds)
PROBE_SEED = 20261206
#: styles with a texture or an outline that heavy blur erases
TEXTURED = ("striped", "dotted", "checkered", "sketch", "neon", "mosaic", "neon striped",
            "checkered sketch")  # fmt: skip


def _pixel_colours(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    canvas = _light_background(rng)
    canvas[mask] = rng.uniform(0, 1, (int(mask.sum()), 3))
    return canvas


def _colour_patches(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    cells = int(rng.integers(2, 7))
    coarse = rng.uniform(0, 1, (cells, cells, 3)).astype(np.float32)
    patches = np.repeat(np.repeat(coarse, -(-SIZE // cells), 0), -(-SIZE // cells), 1)
    if rng.random() < 0.5:
        patches = _blur(patches[:SIZE, :SIZE], int(rng.integers(1, 4)))
    canvas = _light_background(rng)
    canvas[mask] = patches[:SIZE, :SIZE][mask]
    return canvas


def _rainbow_blobs(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Paint smooth blobs of saturated colours and dark spots into the shape.

    What a model that cannot draw a texture paints instead: the demo's failed "striped"
    outputs look like this.
    """
    cells = int(rng.integers(3, 9))
    coarse = np.stack([_saturated(rng) for _ in range(cells * cells)]).reshape(cells, cells, 3)
    dark = rng.random((cells, cells)) < rng.uniform(0.0, 0.3)
    coarse[dark] *= rng.uniform(0.0, 0.3)
    step = -(-SIZE // cells)
    blobs = _blur(
        np.repeat(np.repeat(coarse, step, 0), step, 1)[:SIZE, :SIZE], int(rng.integers(2, 5))
    )
    canvas = _light_background(rng)
    soft = _blur(mask.astype(np.float32), int(rng.integers(0, 3)))[..., None]
    return canvas * (1 - soft) + blobs * soft


def palette_blobs(
    rng: np.random.Generator, mask: np.ndarray, first: np.ndarray, second: np.ndarray
) -> np.ndarray:
    """Paint two colours as smooth blobs inside the shape: a style's palette without its texture."""
    cells = int(rng.integers(3, 7))
    step = -(-SIZE // cells)
    coarse = (rng.random((cells, cells)) < 0.5).astype(np.float32)
    field = np.repeat(np.repeat(coarse, step, 0), step, 1)[:SIZE, :SIZE, None]
    field = _blur(np.repeat(field, 3, -1), int(rng.integers(1, 3)))
    canvas = _light_background(rng)
    canvas[mask] = (field * first + (1 - field) * second)[mask]
    return canvas


def _stripe_palette_blobs(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Paint version 2's stripe colours (a vivid one and a dark one) as smooth blobs.

    What world model version 2 drew for "a circle in striped style": the palette without
    the stripes. The stripe check (:mod:`artbank_pl.world.structure`) rejects them whatever
    the CNN judge reads. (With version 3's palette, a vivid and a near-white colour, this
    negative looks like a photograph with a lighter patch: judges trained on it read 36 %
    of clean photographs as no style, against 25 % with this palette.)
    """
    return palette_blobs(rng, mask, _saturated(rng), _colour(rng, 0.0, 0.3))


def _two_colour_halves(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Two flat colours split by a line through the shape's centre (each holds a good part)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cy, cx = yy[mask].mean(), xx[mask].mean()
    angle = rng.uniform(0, np.pi)
    side = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle) > rng.uniform(-1.5, 1.5)
    first, second = _saturated(rng), _saturated(rng)
    while np.abs(first - second).max() < 0.4:  # two colours that differ at a glance
        second = _saturated(rng)
    canvas = _light_background(rng)
    canvas[mask & side] = first
    canvas[mask & ~side] = second
    return canvas


def _over_blurred(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    style = TEXTURED[int(rng.integers(len(TEXTURED)))]
    return _blur(RENDERERS[style](rng, mask), int(rng.integers(4, 7)))


def _noise(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    if rng.random() < 0.5:
        return rng.uniform(0, 1, (SIZE, SIZE, 3)).astype(np.float32)
    return (0.5 + rng.normal(0, rng.uniform(0.1, 0.35), (SIZE, SIZE, 3))).astype(np.float32)


NEGATIVES: dict[str, Callable[[np.random.Generator, np.ndarray], np.ndarray]] = {
    "pixel colours": _pixel_colours,
    "colour patches": _colour_patches,
    "rainbow blobs": _rainbow_blobs,
    "stripe-palette blobs": _stripe_palette_blobs,
    "two-colour halves": _two_colour_halves,
    "over-blurred style": _over_blurred,
    "noise": _noise,
}


def render_negative(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Render one scene of a negative ``kind`` as ``uint8 [SIZE, SIZE, 3]`` (a random shape)."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    mask = shape_mask(shape, *random_layout(rng))
    return (np.clip(NEGATIVES[kind](rng, mask), 0, 1) * 255).round().astype(np.uint8)


def negative_batch(rng: np.random.Generator, n: int) -> np.ndarray:
    """Draw ``n`` negatives of random kinds, ``uint8 [n, SIZE, SIZE, 3]``."""
    kinds = list(NEGATIVES)
    return np.stack([render_negative(kinds[int(rng.integers(len(kinds)))], rng) for _ in range(n)])


def probe_set(per_kind: int = 64, seed: int = PROBE_SEED) -> dict[str, np.ndarray]:
    """Draw the fixed adversarial probe set: ``per_kind`` scenes of each negative kind."""
    rng = np.random.default_rng([seed, 7])
    return {kind: np.stack([render_negative(kind, rng) for _ in range(per_kind)])
            for kind in NEGATIVES}  # fmt: skip
