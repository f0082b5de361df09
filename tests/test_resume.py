"""Killed runs resume to the run they interrupted; checkpoints are whole, shared and unique."""

from __future__ import annotations

import os
import random
import re
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from artbank_pl.datamodules.shards import build_shards

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 10  # off the checkpoint interval: the final step must still be saved
INTERVAL = 3


def run_config(shards: Path, run_dir: Path, workers: int, devices: int = 1) -> dict:
    """A CPU fit of the tiny model: 4 batches per epoch, a checkpoint every 3 steps."""
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": devices,
            "deterministic": True,
            "max_steps": MAX_STEPS,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "default_root_dir": str(run_dir),
            "logger": False,
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(run_dir / "checkpoints"),
                        "save_last": True,
                        "every_n_train_steps": INTERVAL,
                        "save_top_k": 1,
                    },
                }
            ],
        },  # fmt: skip
        "model": {
            "class_path": "artbank_pl.tasks.PromptBankTask",
            "init_args": {"num_tokens": 2, "bank_heads": 4, "lr": 0.05, "warmup_steps": 2},
        },
        "data": {
            "class_path": "artbank_pl.datamodules.ArtworkDataModule",
            "init_args": {
                "manifest": str(shards / "manifest.json"),
                "resolution": 32,
                "batch_size": 2,
                "num_workers": workers,
                "samples_per_epoch": 8,
            },
        },  # fmt: skip
    }


def fit(config: Path, *extra: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "artbank_pl", "fit", "--config", str(config), *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def trainables(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def other_filesystem_dir(tmp_path: Path) -> Path:
    """A folder on another file system than $TMPDIR when the machine has one (/dev/shm)."""
    shm = Path("/dev/shm")
    tmp_device = os.stat(tempfile.gettempdir()).st_dev
    if shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != tmp_device:
        return Path(tempfile.mkdtemp(dir=shm, prefix="artbank-test-"))
    return tmp_path / "runs"


@pytest.fixture(scope="module")
def shards(image_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume-shards")
    build_shards(image_root, out, size=64, maxcount=2, val_per_collection=1)
    return out


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory):
    """The last.ckpt of an uninterrupted run, per (dataloader workers, devices); run once."""
    made: dict[tuple[int, int], Path] = {}

    def run(workers: int, devices: int = 1) -> Path:
        if (workers, devices) not in made:
            folder = tmp_path_factory.mktemp(f"whole-{workers}-{devices}")
            config = folder / "whole.yaml"
            config.write_text(yaml.safe_dump(run_config(shards, folder, workers, devices)))
            done = fit(config)
            assert done.returncode == 0, done.stderr[-3000:]
            made[workers, devices] = folder / "checkpoints/last.ckpt"
        return made[workers, devices]

    return run


def assert_same_trainables(resumed: Path, whole: Path, when: str) -> None:
    expected, got = trainables(whole), trainables(resumed)
    assert torch.load(resumed, weights_only=True)["global_step"] == MAX_STEPS
    for key, value in expected.items():
        diff = (got[key] - value).abs().max().item()
        assert diff <= 1e-6, f"{key} differs by {diff} after {when}"


def assert_clean_checkpoint_folder(folder: Path) -> None:
    names = sorted(p.name for p in folder.iterdir())
    assert not [n for n in names if n.startswith(".") or "-v" in n], names
    for path in folder.iterdir():
        assert trainables(path)  # every checkpoint left behind loads
        assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044, path  # group/other read


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "devices"), [(0, 1), (2, 1), (0, 2)])
def test_a_run_killed_at_a_random_step_resumes_to_the_same_weights(
    shards, uninterrupted, tmp_path, workers, devices
):
    """kill -9 with 0 and 2 dataloader workers and under 2-process DDP (gloo)."""
    runs = other_filesystem_dir(tmp_path) if workers else tmp_path
    kill_step = random.randrange(2, MAX_STEPS)
    config = tmp_path / "killed.yaml"
    config.write_text(yaml.safe_dump(run_config(shards, runs / "killed", workers, devices)))
    killer = ["--trainer.callbacks+=tests.ddp_helpers.KillAtStep",
              f"--trainer.callbacks.step={kill_step}"]  # fmt: skip
    killed = fit(config, *killer)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = fit(config, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    last = runs / "killed/checkpoints/last.ckpt"
    whole = uninterrupted(workers, devices)
    assert_same_trainables(last, whole, f"kill -9 at step {kill_step}")
    assert_clean_checkpoint_folder(last.parent)
    assert_clean_checkpoint_folder(whole.parent)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_sigterm_and_sigusr1_save_the_step_and_exit_non_zero(
    shards, uninterrupted, tmp_path, signum
):
    config = tmp_path / "signalled.yaml"
    config.write_text(yaml.safe_dump(run_config(shards, tmp_path, 0)))
    stop = ["--trainer.callbacks+=tests.ddp_helpers.KillAtStep", "--trainer.callbacks.step=4",
            f"--trainer.callbacks.signum={int(signum)}"]  # fmt: skip
    stopped = fit(config, *stop)
    assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]
    said = re.search(rf"stopped by {signal.Signals(signum).name} at step (\d+)", stopped.stderr)
    assert said, stopped.stderr[-3000:]
    last = tmp_path / "checkpoints/last.ckpt"
    step = torch.load(last, weights_only=True)["global_step"]
    assert step == int(said[1]) and step in (4, 5)  # the step it stopped at, not the interval's 3
    resumed = fit(config, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_trainables(last, uninterrupted(0), f"{signal.Signals(signum).name} at step 4")


def test_ckpt_path_last_without_a_checkpoint_says_it_starts_from_scratch(shards, tmp_path):
    config = tmp_path / "fresh.yaml"
    settings = run_config(shards, tmp_path, 0)
    settings["trainer"]["max_steps"] = 1
    config.write_text(yaml.safe_dump(settings))
    done = fit(config, "--ckpt_path", "last")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no last checkpoint" in done.stderr and "from scratch" in done.stderr


def test_a_resumed_tensorboard_logger_takes_the_checkpoints_run_and_purges_later_steps(tmp_path):
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import TensorBoardLogger

    from artbank_pl.callbacks.logger_runs import LoggerRuns, continue_logger_runs

    (tmp_path / "logs/version_0").mkdir(parents=True)  # an older run
    first = TensorBoardLogger(tmp_path, name="logs")
    first.experiment  # noqa: B018 - the interrupted run's folder, version_1, exists
    saved: dict = {"loops": {"fit_loop": {"epoch_loop.state_dict": {"_batches_that_stepped": 40}}}}
    LoggerRuns().on_save_checkpoint(
        Trainer(logger=first, enable_checkpointing=False, enable_progress_bar=False), None, saved
    )
    resumed = Trainer(logger=TensorBoardLogger(tmp_path, name="logs"), enable_progress_bar=False,
                      enable_checkpointing=False)  # fmt: skip
    continue_logger_runs(resumed, saved)
    assert resumed.logger.version == 1  # not a new version_2
    assert resumed.logger._kwargs["purge_step"] == 40
    # a version given explicitly, or another folder of runs, is the user's choice
    explicit = Trainer(logger=TensorBoardLogger(tmp_path, name="logs", version=7),
                       enable_progress_bar=False, enable_checkpointing=False)  # fmt: skip
    other = Trainer(logger=TensorBoardLogger(tmp_path, name="other"), enable_progress_bar=False,
                    enable_checkpointing=False)  # fmt: skip
    continue_logger_runs(explicit, saved)
    continue_logger_runs(other, saved)
    assert explicit.logger.version == 7 and "purge_step" not in explicit.logger._kwargs
    assert other.logger.version == 0 and "purge_step" not in other.logger._kwargs  # its own
