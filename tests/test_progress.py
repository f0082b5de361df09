"""The progress bar: ours whichever bar Lightning picks, one count over the run, plain in logs."""

import io
import re
import sys

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

from artbank_pl.callbacks import LoggingStepProgressBar
from artbank_pl.lightning_cli import use_logging_step_progress_bar
from artbank_pl.tasks import PromptBankTask
from tests.test_prompt_bank_task import datamodule


def bars(trainer):
    return [c for c in trainer.callbacks if isinstance(c, TQDMProgressBar | RichProgressBar)]


@pytest.mark.parametrize("default", [RichProgressBar, TQDMProgressBar])
def test_lightning_s_default_bar_is_swapped_whether_rich_is_installed_or_not(default):
    # with rich installed (transformers 5 pulls it in) Lightning's default is RichProgressBar,
    # without it TQDMProgressBar: either way the run gets ours
    trainer = Trainer(accelerator="cpu", logger=False, callbacks=[default()])
    use_logging_step_progress_bar(trainer)
    assert [type(b) for b in bars(trainer)] == [LoggingStepProgressBar]


def test_a_bar_the_user_subclassed_is_kept():
    class Mine(TQDMProgressBar):
        pass

    trainer = Trainer(accelerator="cpu", logger=False, callbacks=[Mine()])
    use_logging_step_progress_bar(trainer)
    assert [type(b) for b in bars(trainer)] == [Mine]


def fit_printing(shard_dir, tmp_path, monkeypatch, max_steps=6, **bar_options):
    """Fit a tiny bank with stdout sent to a file-like buffer (not a terminal)."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    task = PromptBankTask(collections=["hokusai", "monet"], num_tokens=2, bank_heads=4)
    bar = LoggingStepProgressBar(**bar_options)
    trainer = Trainer(accelerator="cpu", max_steps=max_steps, logger=False,
                      log_every_n_steps=2, callbacks=[bar], enable_model_summary=False,
                      enable_checkpointing=False, limit_val_batches=1, val_check_interval=3,
                      check_val_every_n_epoch=None,
                      num_sanity_val_steps=0, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(task, datamodule(shard_dir, samples_per_epoch=4))  # 2 batches per epoch
    return out.getvalue()


def test_output_to_a_file_gets_a_plain_line_every_logging_step(shard_dir, tmp_path, monkeypatch):
    printed = fit_printing(shard_dir, tmp_path, monkeypatch)
    lines = [line for line in printed.splitlines() if line.startswith("step ")]
    # one count over the whole run across its three epochs, every log_every_n_steps steps
    assert [line.split(" |")[0] for line in lines] == [
        "step 2/6 (33%)", "step 4/6 (66%)", "step 6/6 (100%)"
    ]  # fmt: skip
    assert re.search(r"train/loss [\d.]+ \|.* \| [\d.]+ img/s \| ETA \d:\d\d:\d\d$", lines[-1])
    assert sum(line.startswith("validation at step 3:") for line in printed.splitlines()) == 1
    assert "\r" not in printed  # no bar redraws in a log file


def test_in_a_terminal_one_bar_fills_over_the_run(shard_dir, tmp_path, monkeypatch):
    printed = fit_printing(shard_dir, tmp_path, monkeypatch, plain=False)
    assert not [line for line in printed.splitlines() if line.startswith("step ")]
    # the bar counts the run's steps, never a negative epoch total ("Epoch 4/-2")
    assert "6/6" in printed and "/-" not in printed
