"""Throughput of training and stylization, side by side with the peers, in one process.

    python bench/throughput.py --preset tiny                  # CPU, tiny model (make bench)
    python bench/throughput.py --preset sd15 --device cuda    # SD-1.5-sized random weights
    python bench/throughput.py --preset sdxl --device cuda --batch-size 2   # SDXL base's sizes

Rows (median of the timed steps after warm-up; CUDA-synchronised on GPU):

a. peer        a training step as diffusers' examples/textual_inversion does it: VAE encode
               every step, the whole embedding matrix under AdamW with untouched rows
               restored, UNet and VAE in the half dtype, text encoder in fp32 (SDXL presets:
               as textual_inversion_sdxl.py, both encoders' matrices, pooled text and
               micro-conditioning)
b. lightning   our PromptBankTask through Lightning's Trainer and ArtworkDataModule on
               synthetic shards (the real code path)
g. cached      the same, training from the latent cache (``artbank shards cache``)
c. inverter    our InverterTask the same way
e. bare        the same math as b (the same module's loss) in a plain PyTorch loop over the
               same dataloader, without Lightning
d. stylize     diffusers StableDiffusion(XL)Img2ImgPipeline against our predict loop (StylizeTask +
               ContentDataModule + StylizedImageWriter) on the same images and settings, with
               DDIM at 50 steps and with DPM-Solver++ at 20 (the pipeline with the same
               scheduler); the "x peer" column compares each to the pipeline at DDIM 50
f. floor       FLOPs of b's step (torch.utils.flop_counter) over the measured matmul rate

The last line is ``ratio lightning/bare: R``, b's time per step over e's.
"""

from __future__ import annotations

import argparse
import gc
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
from artbank_pl.transfer import upload

PRESETS = {
    "tiny": {"pretrained": "tiny", "resolution": 64, "heads": 4},
    "tiny-xl": {"pretrained": "tiny-xl", "resolution": 64, "heads": 4},
    "sd15": {"pretrained": "random-sd15", "resolution": 512, "heads": 8},
    "sdxl": {"pretrained": "random-sdxl", "resolution": 1024, "heads": 8},
}


class Clock:
    """Marks in time: CUDA events on the GPU (no host-device sync), else the host clock.

    An event is stamped when the GPU reaches it, so the time between two marks is what the
    device saw, idle gaps included (a step the host cannot feed fast enough counts in full),
    and marking does not stall the queue the way ``torch.cuda.synchronize`` would.
    """

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"

    def mark(self):
        """Return a mark of now: a recorded CUDA event, or ``perf_counter`` seconds."""
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start, end) -> float:
        """Seconds between two marks (waits for ``end`` to be reached)."""
        if not self.cuda:
            return end - start
        end.synchronize()
        return start.elapsed_time(end) / 1000

    def intervals(self, marks: list) -> list[float]:
        """Seconds between consecutive marks."""
        return [self.seconds(a, b) for a, b in zip(marks, marks[1:], strict=False)]


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
    """Marks at the end of each whole training iteration (data, step, hooks) in Lightning."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.marks = clock, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Mark the end of this step."""
        self.marks.append(self.clock.mark())


class BatchTimes(Callback):
    """Marks around each predict batch, up to the end of the last callback, and the outputs."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.spans, self.outputs = clock, [], 0

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        """Mark the batch's start."""
        self.spans.append([self.clock.mark()])

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        """Mark its end and count the images written."""
        self.spans[-1].append(self.clock.mark())
        self.outputs += len(outputs["images"])

    def seconds(self) -> float:
        """Total time inside the batches."""
        return sum(self.clock.seconds(start, end) for start, end in self.spans)


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
    return timer.clock.intervals(timer.marks)[args.warmup :]


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
    marks = []
    for step, batch in enumerate(data.train_dataloader()):
        batch = {k: move(v, args.device) for k, v in batch.items()}
        with autocast:
            loss = task._batch_losses(batch, deterministic=False).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(clock.mark())
        if step >= args.warmup + args.steps:
            break
    return clock.intervals(marks)[args.warmup :]


def move(value, device: str):
    """Return a batch value on ``device`` (tensors from pinned memory without blocking)."""
    return upload(value, device) if torch.is_tensor(value) else value


def make_peer_step(args) -> Callable[[torch.Tensor], None]:
    """Build a textual-inversion training step as diffusers' example script performs it.

    On SDXL as ``textual_inversion_sdxl.py``: both encoders' embedding matrices train, the
    UNet reads both penultimate layers, the second's pooled output and the micro-conditioning.
    """
    parts = load_parts(args.pretrained)
    dtype = half_dtype(args.precision)
    vae_dtype = torch.float32 if parts.is_xl and dtype == torch.float16 else dtype  # upcast
    unet, vae = parts.unet.to(args.device, dtype), parts.vae.to(args.device, vae_dtype)
    pairs = [(parts.text_encoder, parts.tokenizer)]
    if parts.is_xl:
        pairs.append((parts.text_encoder_2, parts.tokenizer_2))
    weights, keeps, originals, token_ids = [], [], [], []
    prompts = ["a painting in the style of <peer> <peer>_1 <peer>_2 <peer>_3"] * args.batch_size
    for encoder, tokenizer in pairs:  # trainable, so fp32
        ids = add_placeholder_tokens(tokenizer, ["<peer>"], 4)[0]
        encoder.to(args.device).resize_token_embeddings(len(tokenizer))
        weights.append(encoder.get_input_embeddings().weight.requires_grad_(True))
        originals.append(weights[-1].detach().clone())
        keeps.append(torch.ones(len(tokenizer), dtype=torch.bool, device=args.device))
        keeps[-1][ids] = False
        tokens = tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt")
        token_ids.append(tokens.input_ids.to(args.device))
    optimizer = torch.optim.AdamW(weights, lr=5e-4)
    scheduler = parts.noise_scheduler
    size = [[args.resolution, args.resolution, 0, 0, args.resolution, args.resolution]]
    time_ids = torch.tensor(size * args.batch_size, device=args.device, dtype=dtype)

    def conditioning() -> tuple[torch.Tensor, dict | None]:
        if not parts.is_xl:
            return pairs[0][0](token_ids[0])[0].to(dtype), None
        first = pairs[0][0](token_ids[0], output_hidden_states=True).hidden_states[-2]
        out = pairs[1][0](token_ids[1], output_hidden_states=True)
        states = torch.cat([first, out.hidden_states[-2]], dim=-1).to(dtype)
        return states, {"text_embeds": out.text_embeds.to(dtype), "time_ids": time_ids}

    def step(pixels: torch.Tensor) -> None:
        posterior = vae.encode(pixels.to(vae_dtype)).latent_dist
        latents = (posterior.sample() * vae.config.scaling_factor).to(dtype)
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (latents.shape[0],), device=args.device)
        noisy = scheduler.add_noise(latents, noise, t)
        states, added = conditioning()
        pred = unet(noisy, t, states, added_cond_kwargs=added).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():  # the script restores every row but the placeholders'
            for weight, keep, original in zip(weights, keeps, originals, strict=True):
                weight[keep] = original[keep]

    return step


def time_peer(args, clock) -> tuple[list[float], float]:
    """Time the peer step on fixed pixels (its data loading is not counted).

    Returns:
        The timed per-step seconds and the FLOPs of one step (counted on the first).
    """
    step = make_peer_step(args)
    pixels = torch.rand(args.batch_size, 3, args.resolution, args.resolution) * 2 - 1
    pixels = pixels.to(args.device)
    counter = FlopCounterMode(display=False)
    with counter:
        step(pixels)
    marks = []
    for _ in range(args.warmup + args.steps + 1):
        step(pixels)
        marks.append(clock.mark())
    return clock.intervals(marks)[args.warmup :], counter.get_total_flops()


def matmul_rate(device: str, dtype: torch.dtype) -> float:
    """Measured dense matmul FLOP/s of this device in ``dtype``."""
    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    clock = Clock(device)
    for _ in range(3):
        a @ b
    reps = 50 if device == "cuda" else 5
    start = clock.mark()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / clock.seconds(start, clock.mark())


def step_flops(task, data, args) -> float:
    """FLOPs of one training step of ``task`` (forward and backward), counted by torch."""
    task.to(args.device)
    task.cast_frozen(half_dtype(args.precision))
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    batch = {k: move(v, args.device) for k, v in batch.items()}
    counter = FlopCounterMode(display=False)
    with counter:
        task._batch_losses(batch, deterministic=False).mean().backward()
    task.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_training(args, clock, rows: dict) -> dict[str, dict]:
    """Every training row, alternating, ``args.rounds`` times; then its FLOPs per step.

    Each round builds each row afresh and times it, so drift on a shared machine hits every
    row alike; the step times of all rounds are pooled for the median.

    Args:
        args: the command-line options.
        clock: the clock of the device.
        rows: row name to ``(loop, task builder, datamodule builder)``, ``loop`` being
            :func:`run_lightning` or :func:`run_bare`; ``None`` for the diffusers peer.

    Returns:
        Row name to ``{"times", "memory", "flops"}``.
    """
    results = {name: {"times": [], "memory": None} for name in rows}
    for _ in range(args.rounds):
        for name, row in rows.items():
            reset_memory(args.device)
            if row is None:
                times, results[name]["flops"] = time_peer(args, clock)
            else:
                loop, build, data = row
                times = loop(build(), data(), args, clock)
            results[name]["times"] += times
            results[name]["memory"] = peak_memory_gib(args.device)
            gc.collect()
    for name, row in rows.items():
        if row is not None:
            _, build, data = row
            results[name]["flops"] = step_flops(build(), data(), args)
    return results


STYLIZE_SETTINGS = {"ddim 50": ("ddim", 50), "dpmsolver++ 20": ("dpmsolver++", 20)}


def time_stylize(args, clock, root: Path) -> dict[str, dict]:
    """Images per second of diffusers' img2img pipeline and of our predict loop, per sampler.

    Returns:
        Row name to ``{"rate": best img/s of the rounds, "memory", "flops" per image}``.
    """
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
        pipe = task.parts.diffusers_pipeline(
            True, make_sampler(task.noise_scheduler.config, sampler)
        )
        runs[f"ours {label}"] = lambda t=task: _stylize_ours(t, data, args, clock, root)
        runs[f"peer {label}"] = lambda p=pipe, n=steps: _stylize_peer(p, images, n, args, clock)
    flops = {}
    for name, run in runs.items():  # warm every row up, counting its FLOPs per image
        counter = FlopCounterMode(display=False)
        with counter:
            run()
        flops[name] = counter.get_total_flops() / args.stylize_images
    results = {name: {"rates": [], "memory": None, "flops": flops[name]} for name in runs}
    for _ in range(args.rounds):  # then alternate, so that drift hits every row alike
        for name, run in runs.items():
            reset_memory(args.device)
            results[name]["rates"].append(run())
            results[name]["memory"] = peak_memory_gib(args.device)
    for row in results.values():
        row["rate"] = statistics.median(row.pop("rates"))
    return results


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
    return timer.outputs / timer.seconds()


def _stylize_peer(pipe, images, steps: int, args, clock) -> float:
    """Diffusers' img2img pipeline on the same images."""
    # the pipeline shares our modules, which Lightning's teardown moved back to the CPU:
    # move them in each run, before the clock starts
    pipe.to(args.device)
    start = clock.mark()
    for i in range(0, len(images), args.stylize_batch):
        chunk = images[i : i + args.stylize_batch]
        pipe(["a painting"] * len(chunk), image=chunk, strength=0.7,
             num_inference_steps=steps, guidance_scale=7.5, output_type="np")  # fmt: skip
    return len(images) / clock.seconds(start, clock.mark())


def table(rows: list[dict], matmul: float) -> str:
    """Format rows: img/s, against the peer, GFLOP per image, and the share of the floor.

    A row's floor is its own counted FLOPs per image at the measured matmul rate.
    """
    lines = [f"{'row':<36}{'img/s':>9}{'x peer':>8}{'GFLOP/img':>11}{'floor':>9}"
             f"{'% floor':>9}{'peak GiB':>10}"]  # fmt: skip
    for row in rows:
        ratio = f"{row['rate'] / row['reference']:.2f}" if row.get("reference") else "-"
        floor = matmul / row["flops"]
        memory = f"{row['memory']:.2f}" if row.get("memory") is not None else "-"
        lines.append(
            f"{row['name']:<36}{row['rate']:>9.2f}{ratio:>8}{row['flops'] / 1e9:>11.2f}"
            f"{floor:>9.2f}{100 * row['rate'] / floor:>9.1f}{memory:>10}"
        )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default="tiny")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of every row")
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


TRAINING_ROWS = {
    "a": "a. peer (diffusers TI step)",
    "b": "b. ours, Lightning",
    "g": "g. ours, cached latents",
    "c": "c. ours, InST inverter",
    "e": "e. bare PyTorch loop",
}


def main(argv=None) -> None:
    """Run every row and print the table; the last line is the Lightning/bare ratio."""
    args = parse_args(argv)
    torch.manual_seed(0)
    torch.set_flush_denormal(True)
    clock = Clock(args.device)
    root = Path(tempfile.mkdtemp(prefix="artbank-bench-"))
    manifest = synthetic_shards(root, args.resolution)
    cached = cache_shards(manifest, root / "cached", args.pretrained, args.resolution,
                          device=args.device)  # fmt: skip

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

    def inverter() -> InverterTask:
        return InverterTask(
            collections=["alpha", "beta"], pretrained=args.pretrained,
            vision_model=args.pretrained, inverter_heads=args.heads,
        )  # fmt: skip

    names = TRAINING_ROWS
    training = time_training(args, clock, {
        names["a"]: None,
        names["e"]: (run_bare, bank, data),
        names["b"]: (run_lightning, bank, data),
        names["g"]: (run_lightning, bank, lambda: data(cached)),
        names["c"]: (run_lightning, inverter, data),
    })  # fmt: skip
    from artbank_pl.export import write_embeddings

    built = bank()
    write_embeddings(built.embeddings(), root / "export", ("a1111",), built.text_widths)
    args.export = root / "export" / "a1111"
    stylize = time_stylize(args, clock, root)
    mm_dtype = half_dtype(args.precision) if args.device == "cuda" else torch.float32
    matmul = matmul_rate(args.device, mm_dtype)

    peer = args.batch_size / statistics.median(training[names["a"]]["times"])
    rows = []
    for name in names.values():
        row = training[name]
        rate = args.batch_size / statistics.median(row["times"])
        flops = row["flops"] / args.batch_size
        rows.append(dict(row, name=name, rate=rate, reference=peer, flops=flops))
    cached_flops = rows[list(names).index("g")]["flops"]
    rows.append(dict(name="f. floor, cached step", rate=matmul / cached_flops, flops=cached_flops))
    reference = stylize["peer ddim 50"]["rate"]
    for label in STYLIZE_SETTINGS:
        for who, title in (("peer", "diffusers"), ("ours", "ours")):
            row = stylize[f"{who} {label}"]
            rows.append(dict(row, name=f"d. stylize {label}: {title}", reference=reference))
    print(f"preset {args.preset}, device {args.device}, precision {args.precision}, "
          f"batch {args.batch_size}, {args.resolution} px, median of {args.rounds} x "
          f"{args.steps} steps; stylize: strength 0.7, guidance 7.5, {args.stylize_images} "
          f"images, median of {args.rounds} runs; matmul {matmul / 1e12:.2f} TFLOP/s")  # fmt: skip
    print(table(rows, matmul))
    light, bare = training[names["b"]]["times"], training[names["e"]]["times"]
    print(f"ratio lightning/bare: {statistics.median(light) / statistics.median(bare):.3f}")


if __name__ == "__main__":
    main()
