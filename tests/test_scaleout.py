import json
import subprocess
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from artbank_pl.cli import main
from artbank_pl.datamodules import ArtworkDataModule
from artbank_pl.sd import half_dtype
from artbank_pl.tasks import PromptBankTask
from tests.conftest import make_batch
from tests.ddp_helpers import RankRecorder

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "configs/quickstart.yaml")
PRECISIONS = ["32-true", "bf16-mixed", "16-mixed"]


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        ("ddp", "DDPStrategy"),
        ("slurm", "SLURMEnvironment"),
        ("deepspeed", "exclude_frozen_parameters: true"),
    ],
)
def test_trainer_overlays_combine_with_a_model_config(overlay, expected, capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                QUICK,
                "--config",
                str(ROOT / f"configs/trainer/{overlay}.yaml"),
                "--print_config",
            ]
        )
    out = capsys.readouterr().out
    assert expected in out
    assert "PromptBankTask" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_deepspeed_on_cpu_stops_with_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", QUICK, "--config", str(ROOT / "configs/trainer/deepspeed.yaml")])
    message = str(info.value.code)
    assert "DeepSpeed needs CUDA GPUs" in message and "\n" not in message


def fit_steps(shard_dir, tmp_path, precision, accelerator="cpu", strategy="auto", steps=3):
    task = PromptBankTask(collections=["hokusai", "monet"], num_tokens=2, bank_heads=4)
    data = ArtworkDataModule(manifest=str(shard_dir / "manifest.json"), resolution=32,
                             batch_size=2, num_workers=0, samples_per_epoch=8)  # fmt: skip
    trainer = Trainer(
        accelerator=accelerator, devices=1, precision=precision, strategy=strategy,
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    before = task.bank.prompts.detach().clone()
    trainer.fit(task, data)
    return task, before


@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_precision_trains_with_fp32_trainables(shard_dir, tmp_path, precision):
    task, before = fit_steps(shard_dir, tmp_path, precision)
    # on CPU Lightning runs 16-mixed as bf16-mixed; frozen parts follow what it runs
    expected = half_dtype(task.trainer.precision)
    assert task.unet.dtype == expected and task.text_encoder.dtype == expected
    assert all(p.dtype == torch.float32 for p in task.bank.parameters())
    assert torch.isfinite(task.bank.prompts).all()
    assert not torch.equal(task.bank.prompts.detach().cpu(), before)


def test_fp16_frozen_parts_with_grad_scaler_unscale_cleanly():
    """What 16-mixed does on a GPU, on CPU: fp16 frozen parts, fp32 bank, GradScaler."""
    task = PromptBankTask(collections=["a", "b"], num_tokens=2, bank_heads=4)
    task.cast_frozen(torch.float16)
    optimizer = torch.optim.AdamW(task.trainable_parameters())
    scaler = torch.amp.GradScaler("cpu")
    with torch.autocast("cpu", dtype=torch.float16):
        loss = task._batch_losses(make_batch([0, 1]), deterministic=False).mean()
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # raises "Attempting to unscale FP16 gradients" on fp16 params
    scaler.step(optimizer)
    assert task.bank.prompts.grad.dtype == torch.float32
    assert torch.isfinite(task.bank.prompts).all()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_precision_trains_on_cuda(shard_dir, tmp_path, precision):
    task, before = fit_steps(shard_dir, tmp_path, precision, accelerator="gpu")
    assert not torch.equal(task.bank.prompts.detach().cpu(), before)


@pytest.mark.gpu
def test_deepspeed_stage_2_trains_on_cuda(shard_dir, tmp_path):
    pytest.importorskip("deepspeed", reason="install the extra: pip install artbank-pl[deepspeed]")
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = DeepSpeedStrategy(stage=2, exclude_frozen_parameters=True)
    task, before = fit_steps(shard_dir, tmp_path, "bf16-mixed", "gpu", strategy)
    assert not torch.equal(task.bank.prompts.detach().cpu(), before)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(shard_dir, tmp_path):
    task = PromptBankTask(collections=["hokusai", "monet"], num_tokens=2, bank_heads=4, lr=0.05)
    data = ArtworkDataModule(manifest=str(shard_dir / "manifest.json"), resolution=32,
                             batch_size=2, num_workers=0, samples_per_epoch=8)  # fmt: skip
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=4, logger=False,
        enable_checkpointing=False, enable_progress_bar=False,
        num_sanity_val_steps=0, callbacks=[RankRecorder(str(tmp_path))],
    )  # fmt: skip
    trainer.fit(task, data)
    banks = [torch.load(tmp_path / f"bank-{r}.pt", weights_only=True) for r in (0, 1)]
    for name in banks[0]:
        assert torch.equal(banks[0][name], banks[1][name]), name
    records = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    seen = [{k for step in r["keys"] for k in step} for r in records]
    assert seen[0] and seen[1] and not seen[0] & seen[1]  # 5 shards over 2 ranks: disjoint
    # val/loss is the mean over all validation samples of both ranks, the same on each
    assert records[0]["val_loss"] == pytest.approx(records[1]["val_loss"], abs=1e-6)
    single = PromptBankTask(collections=["hokusai", "monet"], num_tokens=2, bank_heads=4)
    single.bank.load_state_dict(banks[0])
    single.eval()
    val = list(data.val_dataloader())
    expected = torch.cat([single._batch_losses(b, deterministic=True) for b in val]).mean()
    assert records[0]["val_loss"] == pytest.approx(expected.item(), rel=1e-4)


def test_slurm_scripts_are_valid_bash():
    scripts = sorted((ROOT / "slurm").glob("*.sbatch")) + sorted(
        (ROOT / "tests/slurm").glob("*.sh")
    )
    assert len(scripts) >= 3
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_frozen_parts_run_outside_autocast_and_the_bank_inside():
    task = PromptBankTask(collections=["a", "b"], num_tokens=2, bank_heads=4)
    task.cast_frozen(torch.bfloat16)
    seen = {}

    def spy(name):
        def hook(module, args):
            seen[name] = torch.is_autocast_enabled("cpu")

        return hook

    for name in ("unet", "text_encoder"):
        getattr(task, name).register_forward_pre_hook(spy(name))
    task.vae.encoder.register_forward_pre_hook(spy("vae"))  # vae.encode skips vae.forward
    task.bank.register_forward_pre_hook(spy("bank"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = task._batch_losses(make_batch([0, 1]), deterministic=False).mean()
    loss.backward()
    assert seen == {"unet": False, "vae": False, "text_encoder": False, "bank": True}
    assert torch.isfinite(task.bank.prompts.grad).all()
