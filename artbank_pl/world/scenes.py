"""The planted style world: procedural scenes whose content and style are known.

A *content* is one shape (circle, square, triangle or cross) of random size, position and
colour on a plain background: a "photograph". A *style* is a rendering family with its own
randomness (stripe orientation and phase, dot spacing, palettes, ...), so a collection holds many
different images in one style. Two styles combine two others. Everything is deterministic
from a ``numpy`` generator, at ``SIZE`` x ``SIZE`` pixels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SIZE = 32
SHAPES = ("circle", "square", "triangle", "cross")
PHOTO = "photo"
#: style name -> the words of its captions ("a circle in striped style")
STYLES = (
    PHOTO,
    "striped",
    "dotted",
    "checkered",
    "sketch",
    "neon",
    "mosaic",
    "neon striped",
    "checkered sketch",
)

Image = np.ndarray  # [SIZE, SIZE, 3] float32 in [0, 1]


def _grid() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    return yy + 0.5, xx + 0.5


def shape_mask(shape: str, cy: float, cx: float, r: float) -> np.ndarray:
    """Boolean ``[SIZE, SIZE]`` mask of a shape centred at ``(cy, cx)`` with half-size ``r``."""
    yy, xx = _grid()
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if shape == "triangle":  # apex up
        top, bottom = cy - r, cy + r * 0.8
        half_width = (yy - top) / (bottom - top) * r
        return (yy >= top) & (yy <= bottom) & (np.abs(dx) <= half_width)
    if shape == "cross":
        arm = r * 0.38
        return ((np.abs(dy) <= arm) & (np.abs(dx) <= r)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= r))
    raise ValueError(f"unknown shape {shape!r}; shapes are {SHAPES}")


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Return the pixels of ``mask`` within ``width`` of its border."""
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


def _blur(x: np.ndarray, passes: int = 2) -> np.ndarray:
    for _ in range(passes):
        padded = np.pad(x, ((1, 1), (1, 1)) + ((0, 0),) * (x.ndim - 2), mode="edge")
        x = sum(padded[i : i + SIZE, j : j + SIZE] for i in range(3) for j in range(3)) / 9
    return x


def _colour(rng: np.random.Generator, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    return rng.uniform(lo, hi, 3).astype(np.float32)


def _saturated(rng: np.random.Generator) -> np.ndarray:
    """Draw a vivid colour: one channel high, one low, one anywhere."""
    c = rng.uniform(0, 1, 3).astype(np.float32)
    hi, lo = rng.choice(3, 2, replace=False)
    c[hi], c[lo] = rng.uniform(0.75, 1.0), rng.uniform(0.0, 0.25)
    return c


def _fill(canvas: Image, mask: np.ndarray, pattern: np.ndarray, a, b) -> None:
    canvas[mask] = np.where(pattern[mask, None], a, b)


def _stripes(rng: np.random.Generator, period: int = 8) -> np.ndarray:
    """Horizontal or vertical bands, ``period`` pixels (4 latent cells), whole-pixel phase.

    Version 2's stripes (any of four angles, a period of 5 to 7.5 px, any phase) were the one
    style the world model never learned to draw: its denoiser kept them at small noise and
    lost them from t = 400 on, where every other style survived to 600 (README, "Why world
    model version 2 drew no stripes"). Bands aligned with the latent grid are what it draws.
    """
    yy, xx = _grid()
    coord = yy if rng.integers(2) else xx
    return ((coord - 0.5 + rng.integers(0, period)) % period) < period // 2


def _dots(rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid()
    spacing = rng.uniform(5.0, 7.0)
    oy, ox = rng.uniform(0, spacing, 2)
    dy = (yy + oy) % spacing - spacing / 2
    dx = (xx + ox) % spacing - spacing / 2
    return dy**2 + dx**2 <= (spacing * 0.3) ** 2


def _checks(rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid()
    cell = 4
    oy, ox = rng.integers(0, cell, 2)
    return (((yy + oy) // cell + (xx + ox) // cell) % 2).astype(bool)


def _light_background(rng: np.random.Generator) -> Image:
    return np.broadcast_to(_colour(rng, 0.75, 1.0), (SIZE, SIZE, 3)).copy()


def _photo(rng, mask) -> Image:
    canvas = _light_background(rng)
    canvas[mask] = _saturated(rng)
    return canvas


def _striped(rng, mask) -> Image:
    canvas = _light_background(rng)
    _fill(canvas, mask, _stripes(rng), _saturated(rng), _colour(rng, 0.85, 1.0))
    return canvas


def _dotted(rng, mask) -> Image:
    canvas = _light_background(rng)
    _fill(canvas, mask, _dots(rng), _colour(rng, 0.9, 1.0), _saturated(rng))
    return canvas


def _checkered(rng, mask) -> Image:
    canvas = _light_background(rng)
    _fill(canvas, mask, _checks(rng), _saturated(rng), _colour(rng, 0.85, 1.0))
    return canvas


def _sketch(rng, mask, fill: np.ndarray | None = None) -> Image:
    paper = rng.uniform(0.88, 1.0)
    canvas = np.full((SIZE, SIZE, 3), paper, np.float32)
    canvas += rng.normal(0, 0.02, (SIZE, SIZE, 1)).astype(np.float32)  # paper grain
    if fill is not None:
        canvas[mask & fill] = rng.uniform(0.55, 0.7)
    canvas[outline(mask, int(rng.integers(1, 3)))] = rng.uniform(0.0, 0.15)
    return canvas


def _neon(rng, mask, fill: np.ndarray | None = None) -> Image:
    glow_colour = _saturated(rng)
    edge = outline(mask, int(rng.integers(1, 3))).astype(np.float32)
    glow = _blur(edge, 2)
    canvas = np.zeros((SIZE, SIZE, 3), np.float32) + rng.uniform(0.0, 0.06)
    canvas += np.minimum(1.0, 2.5 * glow)[..., None] * glow_colour
    if fill is not None:
        canvas[mask & fill] = 0.5 * _saturated(rng) + 0.3
    canvas[edge > 0] = np.minimum(1.0, glow_colour + 0.4)
    return canvas


def _mosaic(rng, mask) -> Image:
    photo = _photo(rng, mask)
    tile = 4
    blocks = photo.reshape(SIZE // tile, tile, SIZE // tile, tile, 3).mean((1, 3))
    blocks = blocks + rng.normal(0, 0.04, blocks.shape)
    canvas = np.repeat(np.repeat(blocks, tile, 0), tile, 1).astype(np.float32)
    grout = np.zeros((SIZE, SIZE), bool)
    grout[::tile, :] = grout[:, ::tile] = True
    canvas[grout] = rng.uniform(0.3, 0.45)
    return canvas


RENDERERS: dict[str, Callable[[np.random.Generator, np.ndarray], Image]] = {
    PHOTO: _photo,
    "striped": _striped,
    "dotted": _dotted,
    "checkered": _checkered,
    "sketch": _sketch,
    "neon": _neon,
    "mosaic": _mosaic,
    "neon striped": lambda rng, mask: _neon(rng, mask, _stripes(rng)),
    "checkered sketch": lambda rng, mask: _sketch(rng, mask, _checks(rng)),
}


def random_layout(rng: np.random.Generator) -> tuple[float, float, float]:
    """Draw a shape's centre ``(cy, cx)`` and half-size ``r``, kept inside the image."""
    r = rng.uniform(7.0, 11.0)
    cy, cx = SIZE / 2 + rng.uniform(-3.5, 3.5, 2)
    return float(cy), float(cx), float(r)


def render(shape: str, style: str, rng: np.random.Generator, layout=None) -> np.ndarray:
    """Render one scene as ``uint8`` ``[SIZE, SIZE, 3]``.

    Args:
        shape: one of :data:`SHAPES`.
        style: one of :data:`STYLES`.
        rng: the generator that draws layout and style randomness.
        layout: ``(cy, cx, r)``; drawn from ``rng`` when ``None``.
    """
    if style not in RENDERERS:
        raise ValueError(f"unknown style {style!r}; styles are {STYLES}")
    cy, cx, r = layout if layout is not None else random_layout(rng)
    image = RENDERERS[style](rng, shape_mask(shape, cy, cx, r))
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def caption(shape: str | None, style: str | None) -> str:
    """Return a caption naming the shape, the style, both, or neither.

    ``a circle in striped style``, ``a photo of a circle``; style only: ``a picture in
    striped style``, ``a photo``; shape only: ``a circle``; neither: the empty caption.
    """
    if shape is None:
        if style is None:
            return ""
        return "a photo" if style == PHOTO else f"a picture in {style} style"
    if style is None:
        return f"a {shape}"
    if style == PHOTO:
        return f"a photo of a {shape}"
    return f"a {shape} in {style} style"


def style_weights(stripes_weight: float = 1.0) -> np.ndarray:
    """Each style's share of a pretraining draw: the styles with stripes weigh ``stripes_weight``.

    The stripes are the style the world model learns last (README, "Why world model
    version 2 drew no stripes"); version 3 draws them more often than the rest.
    """
    weights = np.array([stripes_weight if "striped" in s else 1.0 for s in STYLES])
    return weights / weights.sum()


def sample_batch(
    rng: np.random.Generator,
    n: int,
    styles: tuple[str, ...] = STYLES,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, list[int], list[int]]:
    """Draw ``n`` random scenes: ``uint8 [n, SIZE, SIZE, 3]``, shape and style indices.

    Args:
        rng: the generator of every draw.
        n: the number of scenes.
        styles: the styles to draw from, uniformly unless ``weights`` is given.
        weights: one probability per entry of ``styles`` (:func:`style_weights`).
    """
    shapes = rng.integers(0, len(SHAPES), n).tolist()
    if weights is None:
        picks = rng.integers(0, len(styles), n).tolist()
    else:
        picks = rng.choice(len(styles), n, p=weights).tolist()
    images = np.stack(
        [render(SHAPES[s], styles[k], rng) for s, k in zip(shapes, picks, strict=True)]
    )
    return images, shapes, [STYLES.index(styles[k]) for k in picks]
