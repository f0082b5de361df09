import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, StableDiffusionImg2ImgPipeline
from lightning.pytorch import Callback, Trainer
from PIL import Image

from artbank_pl.callbacks import StylizedImageWriter
from artbank_pl.callbacks.prediction_writer import content_sha256
from artbank_pl.datamodules import ContentDataModule
from artbank_pl.export import CheckpointError, write_embeddings
from artbank_pl.tasks import EvaluateTask, StylizeTask
from artbank_pl.tasks.base import sample_seed
from artbank_pl.tasks.sampling import SAMPLERS, img2img_timesteps, make_sampler
from tests.conftest import write_collections
from tests.report_page import ReportPage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bank_export(tmp_path_factory):
    """Exported embeddings of two styles, as `artbank export` writes them."""
    out = tmp_path_factory.mktemp("export")
    gen = torch.Generator().manual_seed(1)
    styles = {
        "monet": torch.randn(2, 32, generator=gen) * 0.02,
        "ukiyo": torch.randn(3, 32, generator=gen) * 0.02,
    }
    write_embeddings(styles, out, formats=("diffusers",))
    return out / "diffusers"


@pytest.fixture(scope="module")
def content_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("content")
    write_collections(root, {"photos": 6}, size=(40, 48), seed=3)
    return root / "photos"


def stylizer(bank_export, task_class=StylizeTask, **kwargs):
    args = dict(bank=str(bank_export), steps=10, strength=0.6, guidance_scale=3.0)
    return task_class(**(args | kwargs)).eval()


def evaluator(bank_export, **kwargs):
    return stylizer(bank_export, EvaluateTask, **kwargs)


def reference_stochastic_img2img(task, z0, cond, uncond, seed, strength, steps, scale):
    """InST stochastic inversion + DDIM (eta 0) with CFG, written out from the equations."""
    abar = [float(a) for a in task.noise_scheduler.alphas_cumprod]
    ratio = 1000 // steps
    timesteps = [i * ratio + 1 for i in reversed(range(steps))][steps - int(steps * strength) :]
    t0 = timesteps[0]
    noise = torch.randn(z0.shape[1:], generator=torch.Generator().manual_seed(seed))[None]
    with torch.no_grad():
        noisy = abar[t0] ** 0.5 * z0 + (1 - abar[t0]) ** 0.5 * noise
        eps_hat = task.unet(noisy, t0, cond).sample  # conditional, no guidance
        z = abar[t0] ** 0.5 * z0 + (1 - abar[t0]) ** 0.5 * eps_hat  # start at t0 itself
        for i, t in enumerate(timesteps):
            a_t = abar[t]
            a_prev = abar[timesteps[i + 1]] if i + 1 < len(timesteps) else abar[0]
            both = task.unet(torch.cat([z, z]), t, torch.cat([uncond, cond])).sample
            out_u, out_c = both.chunk(2)
            eps = out_u + scale * (out_c - out_u)
            x0 = (z - (1 - a_t) ** 0.5 * eps) / a_t**0.5
            z = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    return z


@pytest.fixture()
def inputs(bank_export):
    task = stylizer(bank_export)
    z0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    return task, z0, task.encode([task.prompt_for("monet", "")]), task.encode([""])


def test_stochastic_inversion_matches_the_equations(inputs):
    task, z0, cond, uncond = inputs
    ours = task.img2img(z0, cond, uncond, [torch.Generator().manual_seed(7)], 0.7, 10, 4.0)
    reference = reference_stochastic_img2img(task, z0, cond, uncond, 7, 0.7, 10, 4.0)
    # diffusers' float32 scheduler arithmetic against float64 scalars: equal to rounding
    torch.testing.assert_close(ours, reference, rtol=0, atol=3e-4)


def diffusers_img2img(task, sampler, z0, cond, uncond, seed, strength, steps, scale):
    """diffusers' own img2img pipeline around the task's frozen parts (latents in and out)."""
    pipe = StableDiffusionImg2ImgPipeline(
        task.vae, task.text_encoder, task.tokenizer, task.unet,
        make_sampler(task.noise_scheduler.config, sampler),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt_embeds=cond, negative_prompt_embeds=uncond, image=z0, strength=strength,
        num_inference_steps=steps, guidance_scale=scale,
        generator=torch.Generator().manual_seed(seed), output_type="latent",
    ).images  # fmt: skip


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++", "euler", "unipc"])
def test_noise_inversion_equals_the_diffusers_img2img_pipeline(inputs, sampler, spacing):
    task, z0, cond, uncond = inputs
    task.noise_scheduler = DDPMScheduler.from_config(
        scheduler_config(task, timestep_spacing=spacing)
    )
    generators = [torch.Generator().manual_seed(7)]
    ours = task.img2img(z0, cond, uncond, generators, 0.7, 10, 4.0, 0.0, "noise", sampler)
    reference = diffusers_img2img(task, sampler, z0, cond, uncond, 7, 0.7, 10, 4.0)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)


def scheduler_config(task, **overrides):
    """The task's scheduler config with keys set as if they were in its file."""
    config = {k: v for k, v in task.noise_scheduler.config.items() if k != "_use_default_values"}
    return config | overrides


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_timesteps_equal_diffusers_for_every_spacing(inputs, sampler, spacing):
    task = inputs[0]
    config = scheduler_config(task, timestep_spacing=spacing)
    pipe = StableDiffusionImg2ImgPipeline(
        task.vae, task.text_encoder, task.tokenizer, task.unet, make_sampler(config, sampler),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.scheduler.set_timesteps(10)
    expected, _ = pipe.get_timesteps(10, 0.6, "cpu")
    ours = img2img_timesteps(make_sampler(config, sampler), 10, 0.6)
    assert torch.equal(ours, expected)
    if sampler == "ddim" and spacing == "trailing":
        full = img2img_timesteps(make_sampler(config, sampler), 10, 1.0)
        assert full.tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_a_zero_snr_v_prediction_model_samples_without_nan(inputs, sampler):
    task, z0, cond, uncond = inputs
    task.noise_scheduler = DDPMScheduler.from_config(
        scheduler_config(
            task,
            rescale_betas_zero_snr=True,
            timestep_spacing="trailing",
            prediction_type="v_prediction",
        )  # fmt: skip
    )
    assert task.noise_scheduler.alphas_cumprod[-1] == 0
    for inversion in ("stochastic", "noise"):  # strength 1 starts at t = 999, where abar = 0
        gens = [torch.Generator().manual_seed(1)]
        z = task.img2img(z0, cond, uncond, gens, 1.0, 5, 4.0, 0.0, inversion, sampler)
        assert torch.isfinite(z).all(), inversion


def test_ddim_inversion_with_guidance_1_reconstructs_the_content(bank_export):
    task = stylizer(bank_export)
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = task.encode([task.prompt_for("monet", "")])
    rec = task.img2img(z0, cond, cond, [torch.Generator()], 0.5, 50, 1.0, inversion="ddim")
    noised = task.img2img(z0, cond, cond, [torch.Generator()], 0.5, 50, 1.0, inversion="noise")
    error = (rec - z0).pow(2).mean() / z0.pow(2).mean()
    assert error < 0.01
    assert (noised - z0).pow(2).mean() / z0.pow(2).mean() > 10 * error


def predict(task, content_dir, out, batch_size, writer_kwargs=None, **trainer_kwargs):
    writer = StylizedImageWriter(str(out), **(writer_kwargs or {}))
    trainer = Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[writer, *trainer_kwargs.pop("callbacks", [])], **trainer_kwargs,
    )  # fmt: skip
    data = ContentDataModule(str(content_dir), resolution=32, batch_size=batch_size, num_workers=0)
    trainer.predict(task, data, return_predictions=False)
    return writer


def test_outputs_do_not_depend_on_batch_size(bank_export, content_dir, tmp_path):
    task = stylizer(bank_export, batch_invariant=True)
    predict(task, content_dir, tmp_path / "b1", 1)
    predict(task, content_dir, tmp_path / "b4", 4)
    files = sorted(p.relative_to(tmp_path / "b1") for p in (tmp_path / "b1").rglob("*.png"))
    assert len(files) == 12  # 6 images x 2 styles
    for rel in files:
        assert (tmp_path / "b1" / rel).read_bytes() == (tmp_path / "b4" / rel).read_bytes()
    manifest = [json.loads(x) for x in (tmp_path / "b1/manifest.jsonl").read_text().splitlines()]
    record = manifest[0]
    assert set(record) >= {"key", "style", "seed", "strength", "steps", "source"}
    assert record["seed"] == sample_seed(f"{record['key']}/{record['style']}", 0)
    # provenance: the sampler, the model and the exact bank that made the output
    assert record["sampler"] == "ddim" and record["model"] == "tiny"
    assert record["style_source"] == str(bank_export)
    assert record["style_sha256"] == content_sha256(str(bank_export))
    assert len(record["style_sha256"]) == 64


class Interrupt(Callback):
    def on_predict_batch_end(self, trainer, *args):
        raise RuntimeError("simulated preemption")


class CountUNet(Callback):
    def __init__(self):
        self.calls = 0

    def on_predict_start(self, trainer, pl_module):
        pl_module.unet.register_forward_pre_hook(lambda *a: setattr(self, "calls", self.calls + 1))


def test_interrupted_run_is_finished_by_a_rerun_and_a_finished_run_does_nothing(
    bank_export, content_dir, tmp_path
):
    task = stylizer(bank_export)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated preemption"):
        # synchronous writes, so that what the first batch left is known exactly
        predict(task, content_dir, out, 2, {"background": False}, callbacks=[Interrupt()])
    assert len(list(out.rglob("*.png"))) == 4  # first batch: 2 images x 2 styles
    (out / "monet" / ".stale.png.x.tmp").write_bytes(b"half")
    predict(task, content_dir, out, 2)
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == 12
    lines = (out / "manifest.jsonl").read_text().splitlines()
    pairs = [(json.loads(x)["key"], json.loads(x)["style"]) for x in lines]
    assert len(pairs) == len(set(pairs)) == 12
    assert not list(out.rglob("*.tmp")) and not list(out.glob(".manifest*"))
    mtimes = {p: p.stat().st_mtime_ns for p in pngs + [out / "manifest.jsonl"]}
    counter = CountUNet()
    writer = predict(task, content_dir, out, 2, callbacks=[counter])
    assert counter.calls == 0 and writer.written == 0
    assert mtimes == {p: p.stat().st_mtime_ns for p in mtimes}


def test_a_garbage_manifest_and_stray_files_do_not_count_as_done(
    bank_export, content_dir, tmp_path, caplog
):
    task = stylizer(bank_export)
    out = tmp_path / "out"
    (out / "monet").mkdir(parents=True)
    garbage = '[1, 2]\nnot json\n{"key": "img00", "style": "monet", "file": "../../x.png"}\n'
    (out / "manifest.jsonl").write_text(garbage)
    stray = out / "monet" / "img00.png"
    stray.write_bytes(b"")  # an empty file at an output's final name
    writer = predict(task, content_dir, out, 4)
    assert writer.written == 12
    assert "skipped 3 of 3 lines that are not output records" in caplog.text
    assert Image.open(stray).size == (32, 32)
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 12 and not list(out.glob(".manifest*"))
    assert predict(task, content_dir, out, 4).written == 0


def test_shard_output_is_complete_after_an_interruption_and_a_rerun(
    bank_export, content_dir, tmp_path
):
    import webdataset as wds

    task = stylizer(bank_export)
    out, shards = tmp_path / "out", {"shards": True, "samples_per_shard": 4, "background": False}
    with pytest.raises(RuntimeError, match="simulated preemption"):
        predict(task, content_dir, out, 2, shards, callbacks=[Interrupt()])
    first = list(out.glob("shards/*.tar"))
    assert len(first) == 1  # the first batch filled one shard; nothing else was half-written
    predict(task, content_dir, out, 2, shards)
    keys = [
        s["__key__"]
        for s in wds.WebDataset(sorted(map(str, out.glob("shards/*.tar"))), shardshuffle=False)
    ]
    assert len(keys) == len(set(keys)) == 12
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 12 and all(json.loads(x)["file"].startswith("shards/") for x in lines)
    writer = predict(task, content_dir, out, 2, shards)
    assert writer.written == 0 and len(list(out.glob("shards/*.tar"))) == 3


def test_pickled_inst_embeddings_are_refused(tmp_path):
    marker = tmp_path / "was-unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"string_to_token": {"*": 265}, "attention": Payload()}, tmp_path / "embeddings.pt")
    with pytest.raises(CheckpointError, match="never loaded"):
        StylizeTask(bank=str(tmp_path / "embeddings.pt"))
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        StylizeTask(inverter=str(tmp_path / "embeddings.pt"), style_images=["x.png"])
    assert not marker.exists()


def test_bad_options_are_named(bank_export):
    from artbank_pl.errors import ConfigError

    with pytest.raises(ConfigError, match="exactly one style source"):
        StylizeTask()
    with pytest.raises(ConfigError, match="no '\\*'"):
        StylizeTask(bank=str(bank_export), prompt="a photo")
    with pytest.raises(ConfigError, match="\\['degas'\\] are not in"):
        StylizeTask(bank=str(bank_export), collections=["degas"])


@pytest.mark.slow
def test_ddp_predict_on_two_cpu_processes_covers_each_input_once(
    bank_export, content_dir, tmp_path
):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "artbank_pl", "predict",
        "--config", str(ROOT / "configs/stylize-quickstart.yaml"),
        "--trainer.strategy", "ddp", "--trainer.devices", "2",
        "--model.init_args.bank", str(bank_export),
        "--model.init_args.steps", "4",
        "--data.init_args.content", str(content_dir),
        "--data.init_args.resolution", "32", "--data.init_args.batch_size", "2",
        "--trainer.callbacks.init_args.output_dir", str(out),
    ]  # fmt: skip
    env = dict(os.environ, PL_DISABLE_FORK="1")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    pairs = [(r["key"], r["style"]) for r in records]
    assert len(pairs) == len(set(pairs)) == 12
    assert len(list(out.rglob("*.png"))) == 12


def test_artbank_test_writes_metrics_and_a_report_for_a_sweep(bank_export, content_dir, tmp_path):
    exemplars = tmp_path / "exemplars"
    write_collections(exemplars, {"monet": 3, "ukiyo": 3}, size=(32, 32), seed=5)
    task = evaluator(
        bank_export, metrics_model="tiny", exemplars=str(exemplars),
        report_dir=str(tmp_path / "report"), sweep_strengths=[0.4, 0.8], report_images=2,
    )  # fmt: skip
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    data = ContentDataModule(str(content_dir), resolution=32, batch_size=3, num_workers=0)
    logged = trainer.test(task, data)[0]
    report = json.loads((tmp_path / "report/metrics.json").read_text())
    assert list(report["results"]) == ["strength=0.4 guidance=3", "strength=0.8 guidance=3"]
    for results in report["results"].values():
        assert set(results) == {"style_sim", "content_sim", "ssim", "kid"}
        assert set(results["style_sim"]) == {"monet", "ukiyo"}
    for setting, results in report["results"].items():  # every setting logged, labelled
        key = f"test/{setting.replace(' ', '_')}/style_sim/monet"
        assert logged[key] == pytest.approx(results["style_sim"]["monet"])
    page = ReportPage(tmp_path / "report/report.html")
    assert set(page.tables) == {"style_sim", "content_sim", "ssim", "kid"}
    for metric, table in page.tables.items():  # styles x settings, as in metrics.json
        assert table["settings"] == list(report["results"])
        for style in ("monet", "ukiyo"):
            assert table["rows"][style] == [
                f"{report['results'][s][metric][style]:.4f}" for s in table["settings"]
            ]
    assert sorted(page.images) == ["grid-monet.png", "grid-ukiyo.png", "metrics.png"]
    for name in page.images:
        assert (tmp_path / "report" / name).stat().st_size > 0
    # a label column, then two content images; rows: content, then one per setting
    assert Image.open(tmp_path / "report/grid-monet.png").size == (3 * 96, 18 + 3 * 96)


def test_artbank_test_names_what_is_missing(bank_export, content_dir, tmp_path):
    from artbank_pl.errors import ConfigError

    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    data = ContentDataModule(str(content_dir), resolution=32, batch_size=3, num_workers=0)
    with pytest.raises(ConfigError, match="model.metrics_model"):
        trainer.test(evaluator(bank_export), data)
    with pytest.raises(ConfigError, match="model.exemplars"):
        trainer.test(evaluator(bank_export, metrics_model="tiny"), data)


def test_a_swept_guidance_of_0_and_strength_are_used_as_given(bank_export, monkeypatch):
    task = stylizer(bank_export, guidance_scale=7.0)
    seen = []

    def record(z0, cond, uncond, generators, strength, steps, scale, *args):
        seen.append((strength, scale))
        return z0

    monkeypatch.setattr(task, "img2img", record)
    z0 = torch.zeros(1, 4, 4, 4)
    task._render("monet", z0, [""], [0], strength=0.3, guidance_scale=0.0)
    task._render("monet", z0, [""], [0])
    assert seen == [(0.3, 0.0), (0.6, 7.0)]


def test_sampling_options_are_checked_before_anything_runs(bank_export):
    with pytest.raises(Exception, match="inversion: ddim needs scheduler: ddim"):
        stylizer(bank_export, inversion="ddim", scheduler="euler")
    with pytest.raises(Exception, match="steps=10 x strength=0.05 leaves no denoising step"):
        stylizer(bank_export, strength=0.05)
    with pytest.raises(Exception, match="guidance_scale must be >= 0"):
        evaluator(bank_export, sweep_guidance_scales=[5.0, -1.0])
    with pytest.raises(Exception, match="steps=10 x strength=0.05 leaves no denoising step"):
        evaluator(bank_export, sweep_strengths=[0.5, 0.05])


@pytest.mark.parametrize("image_format", ["png", "jpg", "webp"])
def test_the_writer_encodes_each_format_and_png_fast_by_default(tmp_path, image_format):
    from PIL import Image

    writer = StylizedImageWriter(str(tmp_path), image_format=image_format)
    gen = torch.Generator().manual_seed(0)
    image = (torch.rand(64, 64, 3, generator=gen) * 255).byte()
    data = writer._encode(image)
    (tmp_path / f"x.{image_format}").write_bytes(data)
    decoded = Image.open(tmp_path / f"x.{image_format}")
    assert decoded.format == {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[image_format]
    if image_format == "png":  # lossless, and level 1 is not level 9
        assert torch.equal(torch.from_numpy(np.asarray(decoded)), image)
        slow = StylizedImageWriter(str(tmp_path), png_compress_level=9)._encode(image)
        assert slow != data


def test_style_images_with_one_file_name_stay_separate_styles():
    from artbank_pl.errors import ConfigError
    from artbank_pl.tasks.stylize import style_image_names

    names = style_image_names(["a/x.jpg", "b/x.jpg", "c/y.png"])
    assert names == {"a-x": "a/x.jpg", "b-x": "b/x.jpg", "y": "c/y.png"}
    with pytest.raises(ConfigError, match=r"a b.jpg and q/a_b.jpg both name the style <a-b>"):
        style_image_names(["p/a b.jpg", "q/a_b.jpg"])


def test_adain_with_a_bank_takes_each_styles_reference_from_a_folder(bank_export, tmp_path):
    from artbank_pl.errors import DataError
    from artbank_pl.styles import load_image

    references = tmp_path / "collections"
    write_collections(references, {"monet": 2, "ukiyo": 2}, size=(32, 32), seed=9)
    task = stylizer(bank_export, adain=True, adain_reference=str(references))
    for style in ("monet", "ukiyo"):
        first = sorted((references / style).glob("*.png"))[0]
        expected = task.encode_latents(load_image(first), sample=False)
        assert torch.equal(task.style_latent(style), expected)
    assert not torch.equal(task.style_latent("monet"), task.style_latent("ukiyo"))
    (references / "ukiyo").rename(tmp_path / "elsewhere")
    with pytest.raises(DataError, match=r"no image for style 'ukiyo' in .*collections/ukiyo"):
        stylizer(bank_export, adain=True, adain_reference=str(references))
    with pytest.raises(DataError, match=r"model.adain_reference .*missing does not exist"):
        stylizer(bank_export, adain=True, adain_reference=str(tmp_path / "missing"))


def write_content_shards(root, counts, bad=()):
    """Content shards as other tools write them (jpg + json caption); ``bad`` (shard, i) are
    not images. Returns the readable keys per shard name."""
    import webdataset as wds

    rng = np.random.default_rng(4)
    keys = {}
    for number, count in enumerate(counts):
        shard = f"{number:05d}"
        keys[shard] = []
        with wds.TarWriter(str(root / f"{shard}.tar")) as sink:
            for i in range(count):
                key = f"s{shard}_{i}"
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), np.uint8)).save(buffer, "JPEG")
                jpg = b"not a jpeg" if (shard, i) in bad else buffer.getvalue()
                sink.write({"__key__": key, "jpg": jpg, "json": json.dumps({"caption": "x"})})
                keys[shard] += [] if (shard, i) in bad else [key]
    return keys


@pytest.fixture(scope="module")
def content_shards(tmp_path_factory):
    """Three content shards of 3, 2 and 3 samples; the second's last is not an image."""
    root = tmp_path_factory.mktemp("content-shards")
    return root, write_content_shards(root, (3, 2, 3), bad={("00001", 1)})


def read_output_shards(out):
    """(style, shard name) -> {key: (image bytes, record)} of every output shard."""
    import webdataset as wds

    found = {}
    for tar in sorted(out.glob("shards/*/*.tar")):
        samples = wds.WebDataset(str(tar), shardshuffle=False)
        found[(tar.parent.name, tar.stem)] = {
            s["__key__"]: (s["png"], json.loads(s["json"])) for s in samples
        }
    return found


class InterruptAfter(Callback):
    def __init__(self, batches):
        self.batches = batches

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args):
        if batch_idx + 1 == self.batches:
            raise RuntimeError("simulated preemption")


def test_shards_in_give_one_output_shard_per_input_shard_and_style(
    bank_export, content_shards, tmp_path
):
    root, keys = content_shards
    task = stylizer(bank_export)
    out = tmp_path / "out"
    predict(task, f"{root}/{{00000..00002}}.tar", out, 2, {"shards": True, "background": False})
    found = read_output_shards(out)
    assert sorted(found) == [(s, n) for s in ("monet", "ukiyo") for n in sorted(keys)]
    for (style, name), samples in found.items():
        assert sorted(samples) == sorted(keys[name])
        for key, (png, record) in samples.items():
            assert Image.open(io.BytesIO(png)).size == (32, 32)
            assert record["source_shard"] == f"{root}/{name}.tar"
            assert record["key"] == key and record["style"] == style
            assert record["seed"] == sample_seed(f"{key}/{style}", 0)
            assert {"strength", "guidance_scale", "steps", "sampler", "model"} <= set(record)
        stats = json.loads((out / "shards" / style / f"{name}_stats.json").read_text())
        assert stats["written"] == len(keys[name])
        assert stats["skipped_unreadable"] == (1 if name == "00001" else 0)
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 2 * 7


def test_shards_out_after_an_interruption_equal_an_uninterrupted_run(
    bank_export, content_shards, tmp_path
):
    root, _ = content_shards
    task = stylizer(bank_export)
    pattern, kwargs = f"{root}/{{00000..00002}}.tar", {"shards": True, "background": False}
    whole = CountUNet()  # its hook stays on the task's UNet: that task runs once
    predict(stylizer(bank_export), pattern, tmp_path / "whole", 2, kwargs, callbacks=[whole])
    out = tmp_path / "cut"
    with pytest.raises(RuntimeError, match="simulated preemption"):
        # batches: [00000 x 2], [00000, 00001] (its other sample is unreadable: it ends
        # there), [00002 x 2], [00002]; cut after the third, inside shard 00002
        predict(task, pattern, out, 2, kwargs, callbacks=[InterruptAfter(3)])
    assert {tar.stem for tar in out.glob("shards/*/*.tar")} == {"00000", "00001"}
    assert not list(out.rglob("*.tmp"))
    counter = CountUNet()
    writer = predict(stylizer(bank_export), pattern, out, 2, kwargs, callbacks=[counter])
    assert writer.written == 2 * 3  # shard 00002 only: the others were complete
    # UNet work for batches 3 and 4 only: of the uninterrupted run's four, the same share
    assert counter.calls * 2 == whole.calls
    assert read_output_shards(out) == read_output_shards(tmp_path / "whole")
    assert predict(task, pattern, out, 2, kwargs).written == 0


def test_content_shards_of_the_same_name_are_refused_naming_both(tmp_path):
    from artbank_pl.errors import DataError

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "00000.tar").write_bytes(b"")
    data = ContentDataModule(f"{tmp_path}/{{a,b}}/00000.tar", resolution=32, num_workers=0)
    with pytest.raises(DataError, match=r"a/00000.tar and .*b/00000.tar have the same name"):
        data.predict_dataloader()


@pytest.mark.slow
def test_a_dataset_killed_mid_run_under_ddp_ends_as_an_uninterrupted_run(bank_export, tmp_path):
    """6 content shards, 2 DDP processes x 2 workers, kill -9 of every rank, then a rerun."""
    keys = write_content_shards(tmp_path, (3, 3, 2, 3, 3, 2))

    def run(out, *extra):
        cmd = [
            sys.executable, "-m", "artbank_pl", "predict",
            "--config", str(ROOT / "configs/stylize-quickstart.yaml"),
            "--trainer.strategy", "ddp", "--trainer.devices", "2",
            "--model.init_args.bank", str(bank_export), "--model.init_args.steps", "4",
            "--model.init_args.batch_invariant", "true",
            "--data.init_args.content", f"{tmp_path}/{{00000..00005}}.tar",
            "--data.init_args.resolution", "32", "--data.init_args.batch_size", "2",
            "--data.init_args.num_workers", "2",
            "--trainer.callbacks.init_args.output_dir", str(out),
            "--trainer.callbacks.init_args.shards", "true",
            # synchronous writes: what a batch completed is on disk before the kill
            "--trainer.callbacks.init_args.background", "false", *extra,
        ]  # fmt: skip
        env = dict(os.environ, PL_DISABLE_FORK="1", PYTHONPATH=str(ROOT))
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600,
                              cwd=ROOT, start_new_session=True)  # fmt: skip

    whole = run(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "killed"
    kill = ["--trainer.callbacks+=tests.ddp_helpers.KillGroupAfterPredictBatches",
            "--trainer.callbacks.batches=3"]  # fmt: skip
    killed = run(out, *kill)
    assert killed.returncode == -9, killed.stderr[-3000:]
    done_before = {p.relative_to(out) for p in out.glob("shards/*/*.tar")}
    assert 0 < len(done_before) < 2 * 6, done_before  # killed in the middle
    rerun = run(out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    found = read_output_shards(out)
    for style in ("monet", "ukiyo"):
        written = [k for (s, _), samples in found.items() if s == style for k in samples]
        assert sorted(written) == sorted(k for shard in keys.values() for k in shard)
    assert not list(out.rglob("*.tmp")) and not list(out.glob(".manifest*"))
    assert found == read_output_shards(tmp_path / "whole")
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 16


@pytest.mark.parametrize(("workers", "batch_size"), [(0, 2), (2, 3)])
def test_content_from_a_manifest_knows_its_exact_batch_count(tmp_path, workers, batch_size):
    from artbank_pl.datamodules.index import index_shards
    from artbank_pl.datamodules.shards import build_shards

    images = write_collections(tmp_path / "images", {"monet": 5, "ukiyo": 4}, size=(40, 48))
    build_shards(images, tmp_path / "built", size=32, maxcount=2, val_per_collection=1)
    (tmp_path / "foreign").mkdir()
    write_content_shards(tmp_path / "foreign", (3, 2, 3))  # labelled by caption "x"
    index_shards(f"{tmp_path}/foreign/{{00000..00002}}.tar", collection_key="caption")
    for manifest, total in ((tmp_path / "built/manifest.json", 9),
                            (tmp_path / "foreign/manifest.json", 8)):  # fmt: skip
        data = ContentDataModule(str(manifest), resolution=32, batch_size=batch_size,
                                 num_workers=workers)  # fmt: skip
        loader = data.predict_dataloader()
        batches = list(loader)
        assert len(loader) == len(batches), manifest  # the progress bar's total is exact
        keys = [key for batch in batches for key in batch["__key__"]]
        assert len(keys) == len(set(keys)) == total
