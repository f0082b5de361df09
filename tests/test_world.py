import dataclasses
import functools
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from artbank_pl.cli import main
from artbank_pl.errors import ConfigError, DataError
from artbank_pl.sd import load_parts
from artbank_pl.world import model_dir
from artbank_pl.world.cli import read_photographs, shape_of, write_images
from artbank_pl.world.judges import degrade, load_judges, mask_batch
from artbank_pl.world.negatives import NEGATIVES, OTHER, palette_blobs, probe_set
from artbank_pl.world.scenes import (
    SHAPES,
    SIZE,
    STYLES,
    _colour,
    _saturated,
    _stripes,
    caption,
    random_layout,
    render,
    sample_batch,
    shape_mask,
    style_weights,
)
from artbank_pl.world.structure import STRIPE_SHARE_MIN, stripe_share

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_captions_name_shape_style_both_or_neither():
    assert caption("circle", "striped") == "a circle in striped style"
    assert caption("circle", "photo") == "a photo of a circle"
    assert caption(None, "striped") == "a picture in striped style"
    assert caption("cross", None) == "a cross"
    assert caption(None, None) == ""


def test_scenes_are_deterministic_and_cover_every_shape_and_style():
    for style in STYLES:
        for shape in SHAPES:
            a = render(shape, style, np.random.default_rng(3))
            b = render(shape, style, np.random.default_rng(3))
            assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8
            assert np.array_equal(a, b)
            assert a.std() > 5  # not a blank image
    # a collection is many different images in one style
    images, _, _ = sample_batch(np.random.default_rng(0), 8, styles=("striped",))
    assert len({im.tobytes() for im in images}) == 8


def test_stripes_are_horizontal_or_vertical_bands_of_period_eight():
    # bands aligned with the latent grid (README, "Why world model version 2 drew no stripes"):
    # along one axis the stripe pattern repeats every 8 px, half on, and across it is constant
    orientations = set()
    for seed in range(16):
        bands = _stripes(np.random.default_rng(seed))
        rows_constant = bool((bands == bands[:, :1]).all())
        cols_constant = bool((bands == bands[:1, :]).all())
        assert rows_constant != cols_constant, seed
        line = bands[:, 0] if rows_constant else bands[0]
        assert np.array_equal(line, np.roll(line, 8)) and line[:8].sum() == 4, seed
        orientations.add(rows_constant)
    assert orientations == {True, False}


def test_pretraining_draws_the_styles_with_stripes_more_often():
    weights = style_weights(2.5)
    assert weights.sum() == pytest.approx(1.0)
    striped = [STYLES.index("striped"), STYLES.index("neon striped")]
    assert weights[striped] == pytest.approx([2.5 / 12] * 2)
    assert np.allclose(style_weights(1.0), 1 / len(STYLES))
    _, _, styles = sample_batch(np.random.default_rng(0), 2400, weights=weights)
    counts = np.bincount(styles, minlength=len(STYLES)) / 2400
    assert np.abs(counts - weights).max() < 0.03, counts


def test_world_images_lays_out_collections_and_photographs(tmp_path):
    written = write_images(tmp_path, styles=("striped", "neon striped"), per_style=3, photos=5)
    assert sorted(written) == ["neon-striped", "photographs", "striped"]
    assert len(list((tmp_path / "collections/neon-striped").glob("*.png"))) == 3
    names = sorted(p.name for p in (tmp_path / "photographs").glob("*.png"))
    assert names[0] == "circle-000.png" and len(names) == 5
    # each image has its caption: the shape, the content a user would name
    assert (tmp_path / "photographs/circle-000.txt").read_text() == "a circle\n"
    # read back as written: pixels in [-1, 1], the caption, the shape word
    images, captions = read_photographs(written["photographs"])
    first = np.asarray(Image.open(written["photographs"][0]), dtype=np.float32) / 127.5 - 1
    assert images.shape == (5, 3, SIZE, SIZE) and torch.equal(
        images[0].permute(1, 2, 0), torch.from_numpy(first)
    )
    assert captions[:2] == ["a circle", "a square"]
    assert [shape_of(p) for p in written["photographs"]] == [*SHAPES, SHAPES[0]]
    with pytest.raises(ConfigError, match="--styles: unknown style 'cubist'"):
        write_images(tmp_path, styles=("cubist",))


def test_world_cli_writes_images(tmp_path, capsys):
    assert main(["world", "images", "--output", str(tmp_path), "--per-style", "2"]) == 0
    assert "striped: 2 images" in capsys.readouterr().out


def test_the_shipped_judges_read_style_and_content_back():
    judges = load_judges("world")
    images, shapes, styles = sample_batch(np.random.default_rng(12345), 256)
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    style_hits = np.mean(
        [p == STYLES[s] for p, s in zip(judges.predict("style", x), styles, strict=True)]
    )
    shape_hits = np.mean(
        [p == SHAPES[s] for p, s in zip(judges.predict("content", x), shapes, strict=True)]
    )
    assert style_hits >= 0.95 and shape_hits >= 0.95


def test_the_style_judge_rejects_what_is_no_style():
    # the fixed probe set (a seed no judge trained on): colour noise, colour blobs, two flat
    # colours, a style blurred past recognition and pure noise are no style the world
    # renders. Read as "photo" they earn no bank a point; read as a style they would
    judges = load_judges("world")
    for kind, images in probe_set(per_kind=64).items():
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        answers = judges.predict("style", x)
        styled = [a for a in answers if a not in (OTHER, "photo")]
        assert len(styled) / len(answers) <= 0.05, (kind, answers)
        assert answers.count(OTHER) / len(answers) >= 0.5, (kind, answers)


def test_the_stripe_check_passes_the_worlds_stripes_and_no_blob():
    # the threshold is the 1st percentile over generator stripes of seeds 0 and 1; a fresh
    # draw (seed 5) of clean and degraded stripes with their true masks must still pass
    stripes, masks = mask_batch(np.random.default_rng([5, 99]), 256, styles=("striped",))
    degraded = degrade(stripes, torch.Generator().manual_seed(5))
    for images in (stripes, degraded):
        assert (stripe_share(images, masks > 0) >= STRIPE_SHARE_MIN).float().mean() >= 0.97
    # blobs, patches, halves and noise have no single dominant frequency (the over-blurred
    # row keeps its stripes' frequency, faintly: the CNN's blur rejection handles it)
    rng = np.random.default_rng(5)
    for kind in ("pixel colours", "colour patches", "rainbow blobs", "stripe-palette blobs",
                 "two-colour halves", "noise"):  # fmt: skip
        scenes, masks = [], []
        for _ in range(128):
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            mask = shape_mask(shape, *random_layout(rng))
            scenes.append(np.clip(NEGATIVES[kind](rng, mask), 0, 1))
            masks.append(mask)
        images = torch.from_numpy(np.stack(scenes)).permute(0, 3, 1, 2).float()
        share = stripe_share(images, torch.from_numpy(np.stack(masks)))
        assert (share >= STRIPE_SHARE_MIN).float().mean() <= 0.05, kind


def test_a_striped_verdict_needs_stripes_not_the_stripes_palette():
    # version 3's stripe colours (a vivid and a near-white one) in blobs, no stripes: not a
    # training negative (it reads as a photograph), so it probes what the judges never saw.
    # The CNN alone calls about a tenth of them striped (measured 14 of 128), so the measure
    # needs the check; the judges call almost none (1 of 128)
    judges = load_judges("world")
    rng = np.random.default_rng(77)
    scenes = []
    for _ in range(128):
        mask = shape_mask(SHAPES[int(rng.integers(len(SHAPES)))], *random_layout(rng))
        blobs = palette_blobs(rng, mask, _saturated(rng), _colour(rng, 0.85, 1.0))
        scenes.append(np.clip(blobs, 0, 1))
    images = torch.from_numpy(np.stack(scenes)).permute(0, 3, 1, 2).float()
    cnn = judges.models["style"](images).argmax(1).tolist()
    cnn_striped = np.mean([judges.classes["style"][i] == "striped" for i in cnn])
    judged_striped = np.mean([a == "striped" for a in judges.predict("style", images)])
    assert cnn_striped >= 0.05, cnn_striped
    assert judged_striped <= 0.02, judged_striped


def test_the_content_iou_reads_where_the_shape_is_not_only_which():
    judges = load_judges("world")
    rng = np.random.default_rng(5)
    photos, same_place, moved = [], [], []
    for i in range(16):
        shape, style = SHAPES[i % 4], STYLES[1 + i % 8]
        cy, cx, r = random_layout(rng)
        photos.append(render(shape, "photo", rng, (cy, cx, r)))
        same_place.append(render(shape, style, rng, (cy, cx, r)))
        # the same shape class, as a caption would draw it, elsewhere and at another size
        moved.append(
            render(shape, style, rng, (SIZE - cy, SIZE - cx + 6 * (i % 2 * 2 - 1), 14 - r))
        )
    as_unit = [
        torch.from_numpy(np.stack(x)).permute(0, 3, 1, 2) / 255 for x in (photos, same_place, moved)
    ]
    photos, same_place, moved = as_unit
    assert judges.content_iou(same_place, photos).mean() >= 0.75
    assert judges.content_iou(moved, photos).mean() <= 0.45


def test_the_world_model_loads_as_an_ordinary_diffusers_folder():
    parts = load_parts("world")
    assert parts.unet.config.sample_size * 2 == SIZE
    assert parts.tokenizer("a photo of a cat").input_ids == [
        49406,
        320,
        1125,
        539,
        320,
        2368,
        49407,
    ]
    assert load_parts(str(model_dir())).unet.config == parts.unet.config
    recipe = json.loads((model_dir() / "recipe.json").read_text())
    assert recipe["unet_loss_end"] < recipe["unet_loss_start"]
    size = sum(p.stat().st_size for p in model_dir().rglob("*") if p.is_file())
    assert size <= 20 * 2**20


@pytest.mark.slow
def test_a_short_pretraining_run_learns(tmp_path):
    from artbank_pl.world.pretrain import pretrain

    summary = pretrain(tmp_path / "w", vae_steps=20, unet_steps=200, dataset_size=256,
                       judge_steps=10)  # fmt: skip
    assert summary["unet_loss_end"] < 0.9 * summary["unet_loss_start"]
    parts = load_parts(str(tmp_path / "w"))
    with torch.no_grad():
        posterior = parts.vae.encode(torch.zeros(1, 3, SIZE, SIZE)).latent_dist
    assert posterior.mode().shape == (1, 12, SIZE // 2, SIZE // 2)
    # the posterior variance stays pinned: sample() is mode() (an autoencoder)
    assert posterior.std.max() < 1e-3


def test_pretraining_can_keep_another_world_models_autoencoder(tmp_path):
    from artbank_pl.world.pretrain import pretrain

    summary = pretrain(tmp_path / "w", unet_steps=3, dataset_size=64, judge_steps=0,
                       vae_from=str(model_dir()))  # fmt: skip
    assert summary["vae_from"] == str(model_dir())
    assert f"--vae-from {model_dir()}" in summary["command"]
    assert "--vae-steps" not in summary["command"]
    ours, theirs = load_parts(str(tmp_path / "w")).vae, load_parts("world").vae
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert ours.config.scaling_factor == theirs.config.scaling_factor
    with pytest.raises(DataError, match="--vae-from .*nowhere"):
        pretrain(tmp_path / "x", unet_steps=1, dataset_size=8, judge_steps=0,
                 vae_from=str(tmp_path / "nowhere"))  # fmt: skip


def test_pretraining_widens_the_unet_on_request(tmp_path):
    from artbank_pl.world.pretrain import pretrain

    summary = pretrain(tmp_path / "w", unet_steps=2, dataset_size=32, judge_steps=0,
                       vae_from=str(model_dir()), unet_channels=(32, 64, 128))  # fmt: skip
    assert "--unet-channels 32 64 128" in summary["command"]
    unet = load_parts(str(tmp_path / "w")).unet
    assert list(unet.config.block_out_channels) == [32, 64, 128]
    shipped = load_parts("world").unet
    assert sum(p.numel() for p in unet.parameters()) > 2 * sum(
        p.numel() for p in shipped.parameters()
    )
    with torch.no_grad():  # it denoises a latent of the world's shape
        latents = torch.zeros(1, 12, SIZE // 2, SIZE // 2)
        features = torch.zeros(1, 77, shipped.config.cross_attention_dim)
        assert unet(latents, 10, features).sample.shape == latents.shape
    with pytest.raises(DataError, match="--unet-channels 40 64 64: give 3 widths"):
        pretrain(tmp_path / "x", unet_steps=1, dataset_size=8, judge_steps=0,
                 vae_from=str(model_dir()), unet_channels=(40, 64, 64))  # fmt: skip
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_pretraining_takes_the_unets_learning_rate(tmp_path):
    from artbank_pl.world.pretrain import pretrain

    def weights(name: str, lr: float) -> torch.Tensor:
        summary = pretrain(tmp_path / name, unet_steps=2, dataset_size=32, judge_steps=0,
                           vae_from=str(model_dir()), unet_lr=lr)  # fmt: skip
        assert f"--unet-lr {lr}" in summary["command"] and summary["unet_lr"] == lr
        unet = load_parts(str(tmp_path / name)).unet
        return torch.cat([p.flatten() for p in unet.parameters()])

    slow, again, fast = weights("a", 1e-3), weights("b", 1e-3), weights("c", 1e-2)
    torch.testing.assert_close(slow, again, rtol=0, atol=0)  # one seed, one result
    assert not torch.equal(slow, fast)  # the rate reached the optimizer


def test_world_xl_pretraining_widens_its_unet_too(tmp_path):
    from diffusers import UNet2DConditionModel

    from artbank_pl.world.pretrain_xl import pretrain_xl

    summary = pretrain_xl(tmp_path / "xl", unet_steps=2, dataset_size=32,
                          unet_channels=(32, 64, 128))  # fmt: skip
    assert "--unet-channels 32 64 128" in summary["command"]
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "xl/unet")
    assert list(unet.config.block_out_channels) == [32, 64, 128]
    assert unet.config.addition_embed_type == "text_time"  # still SDXL's conditioning


@functools.cache
def _ceiling_bench():
    spec = importlib.util.spec_from_file_location("world_ceiling", BENCH / "world_ceiling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _SmoothingUNet(torch.nn.Module):
    """A denoiser that keeps a shape and its colours but no texture: its clean estimate is
    the noisy latent, box-blurred over 7 x 7 cells (the noise and every pattern go)."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.abar = alphas_cumprod.float()

    def forward(self, sample, timestep, encoder_hidden_states):
        abar = self.abar[timestep].view(-1, 1, 1, 1)
        clean = torch.nn.functional.avg_pool2d(sample, 7, 1, 3, count_include_pad=False)
        clean = clean / abar.sqrt()
        return SimpleNamespace(sample=(sample - abar.sqrt() * clean) / (1 - abar).sqrt())


def _denoise_rows(parts, capsys) -> dict[str, float]:
    _ceiling_bench().one_step_denoise(parts, load_judges("world"), [400], 16, 0)
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return {row["style"]: row["t=400"] for row in rows}


def test_the_world_model_keeps_each_textured_style_where_it_already_is(capsys):
    # the one-step denoising probe (bench/world_ceiling.py --denoise) at t = 400 (abar
    # 0.42), here on 16 scenes per style; the bench's 32 gave 0.875-1.0 for every style,
    # striped 0.94 (version 2, whose stripes it could not draw: 0.625; README "Why world
    # model version 2 drew no stripes")
    parts = load_parts("world")
    kept = _denoise_rows(parts, capsys)
    assert set(kept) == set(STYLES) - {"photo"}
    assert min(kept.values()) >= 0.8, kept
    # a denoiser that smooths textures away fails the probe, shapes and colours kept
    # (measured 0.0 on every textured style; a blurred outline still reads as sketch, 0.56)
    smoothing = _SmoothingUNet(parts.noise_scheduler.alphas_cumprod)
    lost = _denoise_rows(dataclasses.replace(parts, unet=smoothing), capsys)
    textured = ("striped", "dotted", "checkered", "mosaic", "checkered sketch")
    assert max(lost[s] for s in textured) <= 0.1, lost


@pytest.mark.slow
def test_the_world_model_draws_its_styles_from_its_own_captions():
    # bench/world_ceiling.py's text-to-image on seed 11's 16 captions (20 DDIM steps,
    # guidance 10), judged with the stripe check: measured dotted and checkered 0.94,
    # sketch and mosaic 1.0, checkered sketch 0.81; striped 0.625 (version 2: 0.0), neon
    # 0.69 and neon striped 0.625, the three it falls short of 0.8 on (mean of 8 0.83)
    bench = _ceiling_bench()
    photos, shapes = bench.photographs(16, 11)
    img2img, txt2img = bench.pipelines(None)
    judges = load_judges("world")
    styles = {
        style: bench.ceiling_row(img2img, txt2img, judges, style, photos, shapes, 0.7, 10.0, 20)[
            "text-to-image"
        ]["style"]
        for style in STYLES
        if style != "photo"
    }
    drawn = ("dotted", "checkered", "sketch", "mosaic", "checkered sketch")
    assert min(styles[s] for s in drawn) >= 0.8, styles
    assert min(styles[s] for s in ("striped", "neon", "neon striped")) >= 0.5, styles
    assert np.mean(list(styles.values())) >= 0.8, styles
