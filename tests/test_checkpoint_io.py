"""Checkpoint writes are atomic: whole or absent, readable by the group, no orphans."""

from __future__ import annotations

import stat

import pytest
import torch

from artbank_pl.checkpoint_io import AtomicCheckpointIO


def test_a_failed_save_keeps_the_previous_checkpoint_and_leaves_no_temporary(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints/last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644

    def dies_half_way(obj, target):
        with open(target, "wb") as f:
            f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError):
        io.save_checkpoint({"global_step": 2}, path)
    assert io.load_checkpoint(path)["global_step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_temporaries_of_a_killed_save_are_removed_by_the_next_save(tmp_path):
    io = AtomicCheckpointIO()
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / ".last.ckpt.abc123.tmp").write_bytes(b"left by kill -9")
    (folder / ".other.ckpt.def456.tmp").write_bytes(b"another file's save in progress")
    io.save_checkpoint({"global_step": 3}, folder / "last.ckpt")
    assert sorted(p.name for p in folder.iterdir()) == [".other.ckpt.def456.tmp", "last.ckpt"]
    assert io.load_checkpoint(folder / "last.ckpt")["global_step"] == 3


def test_the_cli_installs_atomic_checkpoints_and_the_signal_callback(tmp_path):
    from lightning.pytorch import Trainer

    from artbank_pl.callbacks import CheckpointOnSignal
    from artbank_pl.lightning_cli import make_run_resumable

    trainer = Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path)
    make_run_resumable(trainer, "fit", "last")
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert isinstance(trainer.callbacks[0], CheckpointOnSignal)
    assert trainer.callbacks[0].ckpt_path == "last"
    predicting = Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path)
    make_run_resumable(predicting, "predict")
    assert not any(isinstance(cb, CheckpointOnSignal) for cb in predicting.callbacks)
