"""The training step makes the host wait for the device zero times (issue 14).

A CUDA host-device sync comes from a small set of operations: reading a value back
(``item``, ``tolist``, ``bool(t)``, ``float(t)``...), ops whose output size depends on
the data (``nonzero``, boolean indexing, ``unique``, ``masked_select``...), and blocking
host-to-device copies (a tensor built from Python numbers on the host). On CPU none of
them waits, but they can be counted: a ``TorchFunctionMode`` sees every call, and a
callback opens the count at ``on_train_batch_start`` and closes it at
``on_train_batch_end`` (after the loss curve and the progress bar have run). The first
step builds the per-device tables and is left out; so are the optimizer's own reads of
its CPU step counter, and copies through ``artbank_pl.transfer.upload`` (pinned and
non-blocking). A ``gpu`` test runs the same step under CUDA's own sync detector.
"""

from __future__ import annotations

import sys

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.overrides import TorchFunctionMode

from artbank_pl.callbacks import LoggingStepProgressBar, LossCurve
from artbank_pl.datamodules import ArtworkDataModule
from artbank_pl.datamodules.cache import cache_shards
from artbank_pl.datamodules.shards import build_shards
from artbank_pl.tasks import InverterTask, PromptBankTask
from tests.conftest import write_collections

READS_BACK = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy",
              "cpu", "equal", "allclose"}  # fmt: skip
DATA_SIZED = {"nonzero", "argwhere", "unique", "unique_consecutive", "masked_select",
              "masked_scatter", "masked_scatter_", "bincount", "repeat_interleave"}  # fmt: skip
HOST_BUILT = {"tensor", "as_tensor", "from_numpy"}
INDEXING = {"__getitem__", "__setitem__", "index_put", "index_put_"}


def _has_bool_index(args) -> bool:
    index = args[1] if len(args) > 1 else None
    parts = index if isinstance(index, tuple | list) else (index,)
    return any(torch.is_tensor(p) and p.dtype == torch.bool for p in parts)


def _allowed_caller() -> bool:
    """True when the call comes from the optimizer (its step counter lives on the CPU) or
    from ``upload``: the first frame outside torch's own modules (torch.optim aside) decides.
    """
    torch_root = torch.__file__.rsplit("/", 1)[0] + "/"
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if path.startswith(torch_root + "optim/"):
            return True
        if not path.startswith(torch_root):
            return path.endswith("artbank_pl/transfer.py") and frame.f_code.co_name == "upload"
        frame = frame.f_back
    return False


class SyncCounter(TorchFunctionMode):
    """Record every call that would make the host wait for a CUDA device."""

    def __init__(self) -> None:
        super().__init__()
        self.active = False
        self.seen = 0
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.active:
            self.seen += 1
            name = getattr(func, "__name__", str(func))
            syncs = name in READS_BACK | DATA_SIZED | HOST_BUILT or (
                name in INDEXING and _has_bool_index(args)
            )
            if syncs and not _allowed_caller():
                caller = sys._getframe(1)
                self.calls.append(f"{name} at {caller.f_code.co_filename}:{caller.f_lineno}")
        return func(*args, **kwargs)


class CountSteps(Callback):
    """Count syncs from the start to the end of each training batch after the first."""

    def __init__(self, counter: SyncCounter) -> None:
        self.counter = counter

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.counter.active = batch_idx > 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.counter.active = False


@pytest.fixture(scope="module")
def captioned_cache(tmp_path_factory):
    """Shards whose images carry captions, and their latent cache."""
    root = write_collections(tmp_path_factory.mktemp("captioned"), {"monet": 4, "hokusai": 4})
    for image in root.glob("*/*.png"):
        image.with_suffix(".txt").write_text(f"a {image.stem} scene")
    shards = tmp_path_factory.mktemp("captioned-shards")
    build_shards(root, shards, size=32, maxcount=4)
    return cache_shards(shards / "manifest.json", shards / "cache", "tiny", resolution=32)


def count_syncs(task, manifest, tmp_path, steps: int = 4) -> list[str]:
    counter = SyncCounter()
    trainer = Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_model_summary=False,
        default_root_dir=tmp_path, num_sanity_val_steps=0, limit_val_batches=0,
        enable_checkpointing=False, log_every_n_steps=1000,
        callbacks=[LossCurve(), LoggingStepProgressBar(), CountSteps(counter)],
    )  # fmt: skip
    data = ArtworkDataModule(
        manifest=str(manifest), resolution=32, batch_size=3, num_workers=0, samples_per_epoch=12
    )
    with counter:
        trainer.fit(task, data)
    assert trainer.global_step == steps
    assert counter.seen > 100  # the windows were open over the steps
    return counter.calls


def test_the_counter_sees_what_the_old_step_did():
    counter = SyncCounter()
    ids = torch.tensor([[1, 9, 2], [9, 9, 3]])
    with counter:
        counter.active = True
        mask = ids >= 9
        if mask.any():
            ids[mask].tolist()
    names = [call.split(" ")[0] for call in counter.calls]
    assert names == ["__bool__", "__getitem__", "tolist"]


def test_a_bank_step_without_captions_never_syncs(shard_dir, tmp_path):
    task = PromptBankTask(collections=["hokusai", "monet"], num_tokens=2, bank_heads=4)
    assert count_syncs(task, shard_dir / "manifest.json", tmp_path) == []


def test_a_bank_step_on_captions_and_cached_latents_never_syncs(captioned_cache, tmp_path):
    task = PromptBankTask(collections=["hokusai", "monet"], num_tokens=2, bank_heads=4)
    assert count_syncs(task, captioned_cache, tmp_path) == []


def test_an_inverter_step_never_syncs(shard_dir, tmp_path):
    task = InverterTask(
        collections=["hokusai", "monet"], vision_model="tiny", num_tokens=2, inverter_heads=4
    )
    assert count_syncs(task, shard_dir / "manifest.json", tmp_path) == []


@pytest.mark.gpu
def test_a_bank_step_on_cuda_passes_the_sync_detector(shard_dir, tmp_path):
    task = PromptBankTask(collections=["hokusai", "monet"], num_tokens=2, bank_heads=4)

    class SyncDetector(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            torch.cuda.set_sync_debug_mode("error" if batch_idx > 0 else "default")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            torch.cuda.set_sync_debug_mode("default")

    trainer = Trainer(
        accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=4, logger=False,
        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
        limit_val_batches=0, enable_checkpointing=False, log_every_n_steps=1000,
        callbacks=[LossCurve(), LoggingStepProgressBar(), SyncDetector()],
    )  # fmt: skip
    data = ArtworkDataModule(
        manifest=str(shard_dir / "manifest.json"), resolution=32, batch_size=3, num_workers=0,
        samples_per_epoch=12,
    )  # fmt: skip
    try:
        trainer.fit(task, data)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.global_step == 4
