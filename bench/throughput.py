"""Throughput of training and stylization, side by side with the peers, in one process.

    python bench/throughput.py --preset tiny                  # CPU, tiny model (make bench)
    python bench/throughput.py --preset sd15 --device cuda    # SD-1.5-sized random weights

Rows (median of the timed steps after warm-up; CUDA-synchronised on GPU):

a. peer        a training step as diffusers' examples/textual_inversion does it: VAE encode
               every step, the whole embedding matrix under AdamW with untouched rows
               restored, UNet and VAE in the half dtype, text encoder in fp32
b. lightning   our PromptBankTask through Lightning's Trainer and ArtworkDataModule on
               synthetic shards (the real code path)
g. cached      the same, training from the latent cache (``artbank shards cache``)
c. inverter    our InverterTask the same way
e. bare        the same math as b (the same module's loss) in a plain PyTorch loop over the
               same dataloader, without Lightning
d. stylize     diffusers StableDiffusionImg2ImgPipeline against our predict loop (StylizeTask +
               ContentDataModule + StylizedImageWriter) on the same images and settings, with
               DDIM at 50 steps and with DPM-Solver++ at 20 (the pipeline with the same
               scheduler); the "x peer" column compares each to the pipeline at DDIM 50
f. floor       FLOPs of b's step (torch.utils.flop_counter) over the measured matmul rate

The last line is ``ratio lightning/bare: R``, b's time per step over e's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from artbank_pl.callbacks import StylizedImageWriter
from artbank_pl.datamodules import ArtworkDataModule, ContentDataModule, build_shards
from artbank_pl.datamodules.cache import cache_shards
from artbank_pl.sd import half_dtype, load_parts
from artbank_pl.tasks import InverterTask, PromptBankTask, StylizeTask
from artbank_pl.tokenizer import add_placeholder_tokens

PRESETS = {
    "tiny": {"pretrained": "tiny", "resolution": 64, "heads": 4},
    "sd15": {"pretrained": "random-sd15", "resolution": 512, "heads": 8},
}


class Clock:
    """Wall time between marks, synchronising CUDA first so GPU work is counted."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"

    def now(self) -> float:
        """Seconds, after all queued GPU work has finished."""
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def reset_memory(device: str) -> None:
    """Start a peak-memory window."""
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device: str) -> float | None:
    """Peak CUDA memory since the last reset, GiB (None on CPU)."""
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def write_images(folder: Path, count: int, size: int, seed: int) -> Path:
    """Write ``count`` random RGB images of ``size`` px."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:03d}.png")
    return folder


def synthetic_shards(root: Path, size: int) -> Path:
    """Two collections of random images, as shards and a manifest."""
    for c, name in enumerate(("alpha", "beta")):
        write_images(root / "images" / name, 32, size, seed=c)
    build_shards(root / "images", root / "shards", size=size, crop=True, maxcount=8)
    return root / "shards" / "manifest.json"


class StepTimes(Callback):
    """Time of each whole training iteration (data, step, hooks) seen by Lightning."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.times, self.last = clock, [], None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Record the time since the previous step ended."""
        now = self.clock.now()
        if self.last is not None:
            self.times.append(now - self.last)
        self.last = now


class BatchTimes(Callback):
    """Time and output count of each predict batch, up to the end of the last callback."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.times, self.outputs, self.start = clock, [], 0, 0.0

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        """Start the batch's clock."""
        self.start = self.clock.now()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        """Stop it and count the images written."""
        self.times.append(self.clock.now() - self.start)
        self.outputs += len(outputs["images"])


def run_lightning(task, data, args, clock) -> list[float]:
    """Fit ``task`` for warm-up + timed steps; return the timed per-step seconds."""
    timer = StepTimes(clock)
    trainer = Trainer(
        accelerator=args.device, devices=1, precision=args.precision,
        max_steps=args.warmup + args.steps + 1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[timer],
    )  # fmt: skip
    trainer.fit(task, data)
    return timer.times[args.warmup :]


def run_bare(task, data, args, clock) -> list[float]:
    """Run the same loss as ``run_lightning`` in a plain loop over the same dataloader."""
    task.to(args.device)
    task.cast_frozen(half_dtype(args.precision))
    task.train()
    params = task.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=task.hparams.lr, fused=args.device == "cuda" or None)
    dtype = half_dtype(args.precision)
    autocast = (
        torch.autocast(args.device, dtype=dtype) if "mixed" in args.precision else nullcontext()
    )
    data.setup("fit")
    times, last = [], None
    for step, batch in enumerate(data.train_dataloader()):
        batch = {k: v.to(args.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with autocast:
            loss = task._batch_losses(batch, deterministic=False).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        now = clock.now()
        if last is not None:
            times.append(now - last)
        last = now
        if step >= args.warmup + args.steps:
            break
    return times[args.warmup :]


def make_peer_step(args) -> Callable[[torch.Tensor], None]:
    """Build a textual-inversion training step as diffusers' example script performs it."""
    parts = load_parts(args.pretrained)
    dtype = half_dtype(args.precision)
    unet, vae = parts.unet.to(args.device, dtype), parts.vae.to(args.device, dtype)
    text_encoder = parts.text_encoder.to(args.device)  # trainable, so fp32
    ids = add_placeholder_tokens(parts.tokenizer, ["<peer>"], 4)[0]
    text_encoder.resize_token_embeddings(len(parts.tokenizer))
    embedding = text_encoder.get_input_embeddings()
    embedding.weight.requires_grad_(True)
    optimizer = torch.optim.AdamW([embedding.weight], lr=5e-4)
    original = embedding.weight.detach().clone()
    keep = torch.ones(len(parts.tokenizer), dtype=torch.bool, device=args.device)
    keep[ids] = False
    prompt = "a painting in the style of " + " ".join(
        ["<peer>", "<peer>_1", "<peer>_2", "<peer>_3"]
    )
    tokens = parts.tokenizer(
        [prompt] * args.batch_size, padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids.to(args.device)
    scheduler = parts.noise_scheduler

    def step(pixels: torch.Tensor) -> None:
        latents = vae.encode(pixels.to(dtype)).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (latents.shape[0],), device=args.device)
        noisy = scheduler.add_noise(latents, noise, t)
        states = text_encoder(tokens)[0].to(dtype)
        pred = unet(noisy, t, states).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():  # the script restores every row but the placeholders'
            embedding.weight[keep] = original[keep]

    return step


def time_peer(args, clock) -> tuple[list[float], float | None]:
    """Time the peer step on fixed pixels (its data loading is not counted)."""
    reset_memory(args.device)
    step = make_peer_step(args)
    pixels = torch.rand(args.batch_size, 3, args.resolution, args.resolution) * 2 - 1
    pixels = pixels.to(args.device)
    times, last = [], clock.now()
    for i in range(args.warmup + args.steps):
        step(pixels)
        now = clock.now()
        if i >= args.warmup:
            times.append(now - last)
        last = now
    return times, peak_memory_gib(args.device)


def matmul_rate(device: str, dtype: torch.dtype) -> float:
    """Measured dense matmul FLOP/s of this device in ``dtype``."""
    n = 4096 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    clock = Clock(device)
    for _ in range(3):
        a @ b
    reps = 20 if device == "cuda" else 5
    start = clock.now()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (clock.now() - start)


def step_flops(task, data, args) -> float:
    """FLOPs of one training step of ``task`` (forward and backward), counted by torch."""
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    batch = {k: v.to(args.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    counter = FlopCounterMode(display=False)
    with counter:
        task._batch_losses(batch, deterministic=False).mean().backward()
    task.zero_grad(set_to_none=True)
    return counter.get_total_flops()


STYLIZE_SETTINGS = {"ddim 50": ("ddim", 50), "dpmsolver++ 20": ("dpmsolver++", 20)}


def time_stylize(args, clock, root: Path) -> dict[str, tuple[float, float | None]]:
    """Images per second of diffusers' img2img pipeline and of our predict loop, per sampler."""
    from diffusers import StableDiffusionImg2ImgPipeline

    from artbank_pl.tasks.sampling import make_sampler

    content = write_images(root / "content", args.stylize_images, args.resolution, seed=9)
    data = ContentDataModule(str(content), args.resolution, args.stylize_batch, num_workers=0)
    images = [Image.open(p).convert("RGB") for p in sorted(content.iterdir())]
    runs = {}
    for label, (sampler, steps) in STYLIZE_SETTINGS.items():
        task = StylizeTask(
            bank=str(args.export), collections=["alpha"], pretrained=args.pretrained,
            steps=steps, strength=0.7, guidance_scale=7.5, scheduler=sampler,
        )  # fmt: skip
        parts = task.parts
        pipe = StableDiffusionImg2ImgPipeline(
            vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
            unet=parts.unet, scheduler=make_sampler(parts.noise_scheduler.config, sampler),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        runs[f"ours {label}"] = lambda t=task: _stylize_ours(t, data, args, clock, root)
        runs[f"peer {label}"] = lambda p=pipe, n=steps: _stylize_peer(p, images, n, args, clock)
    for run in runs.values():  # warm every row up
        run()
    results = {}
    for _ in range(2):  # then alternate, so that drift on a shared machine hits all alike
        for name, run in runs.items():
            reset_memory(args.device)
            rate = run()
            results.setdefault(name, []).append((rate, peak_memory_gib(args.device)))
    return {name: max(rows, key=lambda r: r[0]) for name, rows in results.items()}


def _stylize_ours(task, data, args, clock, root: Path) -> float:
    """Time our predict loop: images per second over its batches, writer included.

    The timer is the last callback; the Trainer's one-off start-up is left out, as a
    dataset amortises it.
    """
    timer = BatchTimes(clock)
    trainer = Trainer(
        accelerator=args.device, devices=1, precision=args.precision, logger=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[StylizedImageWriter(tempfile.mkdtemp(dir=root), "jpg"), timer],
    )  # fmt: skip
    trainer.predict(task, data, return_predictions=False)
    return timer.outputs / sum(timer.times)


def _stylize_peer(pipe, images, steps: int, args, clock) -> float:
    """Diffusers' img2img pipeline on the same images."""
    # the pipeline shares our modules, which Lightning's teardown moved back to the CPU
    pipe.to(args.device)
    start = clock.now()
    for i in range(0, len(images), args.stylize_batch):
        chunk = images[i : i + args.stylize_batch]
        pipe(["a painting"] * len(chunk), image=chunk, strength=0.7,
             num_inference_steps=steps, guidance_scale=7.5, output_type="np")  # fmt: skip
    return len(images) / (clock.now() - start)


def table(rows: list[tuple], floor_rate: float) -> str:
    """Format rows of (name, img/s, peak GiB, reference img/s or None, share of the floor)."""
    lines = [f"{'row':<38}{'img/s':>10}{'x peer':>9}{'% floor':>9}{'peak GiB':>10}"]
    for name, rate, mem, reference, training in rows:
        ratio = f"{rate / reference:.2f}" if reference else "-"
        floor = f"{100 * rate / floor_rate:.1f}" if training else "-"
        memory = f"{mem:.2f}" if mem is not None else "-"
        lines.append(f"{name:<38}{rate:>10.2f}{ratio:>9}{floor:>9}{memory:>10}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default="tiny")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--stylize-images", type=int, default=8)
    parser.add_argument("--stylize-batch", type=int, default=4)
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on CUDA, else 32")
    parser.add_argument("--workers", type=int, default=None, help="dataloader workers")
    parser.add_argument("--resolution", type=int, default=None, help="override the preset's")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    args.pretrained, args.heads = preset["pretrained"], preset["heads"]
    args.resolution = args.resolution or preset["resolution"]
    args.precision = args.precision or ("bf16-mixed" if args.device == "cuda" else "32-true")
    args.workers = args.workers if args.workers is not None else (4 if args.device == "cuda" else 0)
    return args


def main(argv=None) -> None:
    """Run every row and print the table; the last line is the Lightning/bare ratio."""
    args = parse_args(argv)
    torch.manual_seed(0)
    torch.set_flush_denormal(True)
    clock = Clock(args.device)
    root = Path(tempfile.mkdtemp(prefix="artbank-bench-"))
    manifest = synthetic_shards(root, args.resolution)

    def data(source: Path = manifest) -> ArtworkDataModule:
        return ArtworkDataModule(
            manifest=str(source), resolution=args.resolution, batch_size=args.batch_size,
            num_workers=args.workers, samples_per_epoch=10**6,
        )  # fmt: skip

    def bank() -> PromptBankTask:
        return PromptBankTask(
            collections=["alpha", "beta"], pretrained=args.pretrained, bank_heads=args.heads,
            lr_schedule="constant",
        )  # fmt: skip

    rate = lambda times: args.batch_size / statistics.median(times)  # noqa: E731
    peer_times, peer_mem = time_peer(args, clock)
    # b and e alternate, three times each, so that drift on a shared machine hits both alike
    bare_times, light_times = [], []
    for _ in range(3):
        reset_memory(args.device)
        bare_times += run_bare(bank(), data(), args, clock)
        bare_mem = peak_memory_gib(args.device)
        reset_memory(args.device)
        task = bank()
        light_times += run_lightning(task, data(), args, clock)
        light_mem = peak_memory_gib(args.device)
    args.export = root / "export"
    from artbank_pl.export import write_embeddings

    write_embeddings(task.embeddings(), args.export, formats=("diffusers",))
    args.export = args.export / "diffusers"
    reset_memory(args.device)
    inverter = InverterTask(
        collections=["alpha", "beta"], pretrained=args.pretrained,
        vision_model=args.pretrained, inverter_heads=args.heads,
    )  # fmt: skip
    inverter_times = run_lightning(inverter, data(), args, clock)
    inverter_mem = peak_memory_gib(args.device)
    cached = cache_shards(manifest, root / "cached", args.pretrained, args.resolution,
                          device=args.device)  # fmt: skip
    cached_times = run_lightning(bank(), data(cached), args, clock)
    cached_mem = peak_memory_gib(args.device)
    flops = step_flops(bank().to(args.device), data(), args)
    mm_dtype = half_dtype(args.precision) if args.device == "cuda" else torch.float32
    floor_rate = matmul_rate(args.device, mm_dtype) / (flops / args.batch_size)
    stylize = time_stylize(args, clock, root)

    peer = rate(peer_times)
    rows = [
        ("a. peer (diffusers TI step)", peer, peer_mem, peer, True),
        ("b. ours, Lightning", rate(light_times), light_mem, peer, True),
        ("g. ours, cached latents", rate(cached_times), cached_mem, peer, True),
        ("c. ours, InST inverter", rate(inverter_times), inverter_mem, peer, False),
        ("e. bare PyTorch loop", rate(bare_times), bare_mem, peer, True),
        ("f. floor (FLOPs / matmul rate)", floor_rate, None, None, True),
    ]
    reference = stylize["peer ddim 50"][0]
    for label in STYLIZE_SETTINGS:
        rows.append((f"d. stylize {label}: diffusers", *stylize[f"peer {label}"], reference, False))
        rows.append((f"d. stylize {label}: ours", *stylize[f"ours {label}"], reference, False))
    print(f"preset {args.preset}, device {args.device}, precision {args.precision}, "
          f"batch {args.batch_size}, {args.resolution} px, median of {args.steps} steps; "
          f"stylize: strength 0.7, guidance 7.5, {args.stylize_images} images")  # fmt: skip
    print(f"training step: {flops / args.batch_size / 1e9:.2f} GFLOP per image")
    print(table(rows, floor_rate))
    ratio = statistics.median(light_times) / statistics.median(bare_times)
    print(f"ratio lightning/bare: {ratio:.3f}")


if __name__ == "__main__":
    main()
