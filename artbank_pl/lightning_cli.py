"""LightningCLI for ``artbank fit | validate | test | predict`` (imported only for those)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from artbank_pl.errors import ConfigError
from artbank_pl.tasks.style import check_same_collections

log = logging.getLogger(__name__)


class ArtbankCLI(LightningCLI):
    """LightningCLI that gives the model the collection names its datamodule reads.

    A task with a ``collections`` option left empty gets the names from the datamodule
    class's ``collection_names(**init_args)`` (the manifest's, for ``ArtworkDataModule``).
    """

    #: the collections of the ``--ckpt_path`` file's bank, if it names them
    _ckpt_collections: list[str] | None = None
    #: the checkpoint a fit resumes from (``--ckpt_path`` resolved and loaded), if any
    _resume_from: dict | None = None

    def parse_arguments(self, parser, args) -> None:
        """Parse, keeping the command line (a resume checks the model options it names)."""
        self._argv = list(sys.argv[1:] if args is None else args)
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint's hyperparameters here, before any hook: check
        # the file first, so a missing, truncated or pickled one is one line
        subcommand = self.config.get("subcommand")
        if subcommand:
            config = self.config[subcommand]
            model = (config.get("model") or {}).get("class_path") if config.get("model") else None
            self._ckpt_collections = check_ckpt_path(config.get("ckpt_path"), model)
            if subcommand == "fit":
                from artbank_pl.export import load_checkpoint

                path = resume_file(config.get("ckpt_path"), config.get("trainer.default_root_dir"))
                # read once: the option check and the logger's run both need it
                self._resume_from = load_checkpoint(path) if path else None
                check_resume_options(
                    getattr(self, "_argv", []), config.get("model.init_args"), path,
                    self._resume_from,
                )  # fmt: skip
        super()._parse_ckpt_path()

    def instantiate_trainer(self, **kwargs):
        """Build the Trainer, then make its checkpoints atomic and its runs stoppable."""
        trainer = super().instantiate_trainer(**kwargs)
        config = self.config.get(self.subcommand, {}) if self.subcommand else {}
        make_run_resumable(trainer, self.subcommand, config.get("ckpt_path"))
        if self.subcommand == "fit":
            continue_logger_runs_of(trainer, self._resume_from)
        use_logging_step_progress_bar(trainer)
        use_trainable_summary(trainer)
        return trainer

    def before_instantiate_classes(self) -> None:
        """Check the options and the data, and fill ``model.init_args.collections`` from it.

        All of it before anything is built: a data class's ``check_config(model_args,
        **init_args)`` refuses data that cannot train the model (loading SD takes a while).
        """
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_accelerator(config.get("trainer.accelerator"))
        check_strategy(config.get("trainer.strategy"))
        check_trainer_length(config.get("trainer.max_steps"), config.get("trainer.max_epochs"))
        check_loggers(config.get("trainer.logger"))
        model_args, data = config.get("model.init_args"), config.get("data")
        model = config.get("model")
        if self.subcommand == "test" and getattr(model, "class_path", None):
            check_test_loop(import_object(model.class_path))
        if self.subcommand == "test":
            # the evaluation prints its own table (a row per setting and style); Lightning's
            # cuts each test/<setting>/<metric>/<style> key at the terminal's width
            config["verbose"] = False
        if model_args is None or data is None:
            return
        data_class = import_object(data.class_path)
        check = getattr(data_class, "check_config", None)
        if callable(check):
            check(dict(model_args), **dict(data.init_args))
        if "collections" not in model_args:
            return
        names = getattr(data_class, "collection_names", None)
        found = names(**dict(data.init_args)) if callable(names) else None
        if found:
            # the checkpoint's hyperparameters were merged into model.init_args just now
            check_same_collections(self._ckpt_collections, found)
        if model_args.collections and found and list(model_args.collections) != list(found):
            raise ConfigError(
                f"model.collections {list(model_args.collections)} differ from the data's "
                f"{list(found)}; leave model.collections empty to take the data's"
            )
        if not model_args.collections:
            model_args.collections = found


def make_run_resumable(trainer, subcommand: str | None, ckpt_path: str | None = None) -> None:
    """Give every run atomic checkpoint files and, for ``fit``, a checkpoint on SIGTERM/SIGUSR1.

    Both are installed here rather than in each config, so a user's own config (or a
    ``trainer.plugins`` overlay such as configs/trainer/slurm.yaml) cannot lose them. A
    user's own CheckpointIO plugin is kept. A ``ModelCheckpoint`` without ``dirpath``
    saves into ``<default_root_dir>/checkpoints`` (Lightning's default is a new
    ``version_N`` folder per run, where ``--ckpt_path last`` of the next run cannot find
    it): ``--trainer.default_root_dir`` moves everything a run writes, and
    ``--ckpt_path last`` finds that run's last checkpoint.

    Args:
        trainer: the instantiated Trainer.
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.
        ckpt_path: the subcommand's ``--ckpt_path``.
    """
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    from artbank_pl.callbacks.preemption import CheckpointOnSignal
    from artbank_pl.checkpoint_io import AtomicCheckpointIO

    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
            callback.dirpath = os.path.realpath(Path(trainer.default_root_dir) / "checkpoints")
        if isinstance(callback, ModelCheckpoint) and subcommand == "fit":
            # a new run in a folder of an earlier one wrote last-v1.ckpt beside the earlier
            # run's last.ckpt, which export, predict and --ckpt_path last then read
            callback._enable_version_counter = False
            if not ckpt_path:
                warn_of_an_earlier_run(callback)
    has_one = any(isinstance(cb, CheckpointOnSignal) for cb in trainer.callbacks)
    if subcommand == "fit" and not has_one:
        trainer.callbacks.insert(0, CheckpointOnSignal(ckpt_path))


def warn_of_an_earlier_run(callback: ModelCheckpoint) -> None:
    """Say once that a new run replaces the ``last.ckpt`` an earlier run left in the folder."""
    last = Path(str(callback.dirpath or "")) / f"{callback.CHECKPOINT_NAME_LAST}.ckpt"
    if callback.save_last and last.is_file():
        log.warning(
            "%s is an earlier run's; this new run replaces it (to continue that run "
            "instead, pass --ckpt_path last)", last,
        )  # fmt: skip


def continue_logger_runs_of(trainer, checkpoint: dict | None) -> None:
    """Record TensorBoard runs in checkpoints; a resume goes on writing the one it resumes.

    See :mod:`artbank_pl.callbacks.logger_runs`.
    """
    from artbank_pl.callbacks.logger_runs import LoggerRuns, continue_logger_runs

    if not any(isinstance(cb, LoggerRuns) for cb in trainer.callbacks):
        trainer.callbacks.append(LoggerRuns())
    if checkpoint is not None:
        continue_logger_runs(trainer, checkpoint)


def use_logging_step_progress_bar(trainer) -> None:
    """Swap Lightning's default bar, tqdm's or rich's, for :class:`LoggingStepProgressBar`.

    Lightning picks ``RichProgressBar`` whenever ``rich`` is installed (transformers 5 pulls
    it in), else ``TQDMProgressBar``; both read every ``prog_bar`` value back after each
    batch (a host-device sync per step), count per epoch, and print nothing readable into a
    SLURM log. A subclass of either, or any other bar a user configured, is kept.
    """
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    from artbank_pl.callbacks.progress import LoggingStepProgressBar

    for i, callback in enumerate(trainer.callbacks):
        if type(callback) is TQDMProgressBar:
            trainer.callbacks[i] = LoggingStepProgressBar(
                callback.refresh_rate, callback.process_position, callback._leave
            )
        elif type(callback) is RichProgressBar:
            trainer.callbacks[i] = LoggingStepProgressBar(callback.refresh_rate)


def use_trainable_summary(trainer) -> None:
    """Swap Lightning's default model summary (plain or rich) for :class:`TrainableSummary`.

    Lightning's shows a FLOPs column of zeros for a model without ``example_input_array``
    and, with rich, box-drawing characters in a job's log; a summary a user configured (any
    other class) is kept.
    """
    from lightning.pytorch.callbacks import ModelSummary, RichModelSummary

    from artbank_pl.callbacks.summary import TrainableSummary

    for i, callback in enumerate(trainer.callbacks):
        if type(callback) in (ModelSummary, RichModelSummary):
            trainer.callbacks[i] = TrainableSummary(max_depth=callback._max_depth)


def check_accelerator(accelerator: object) -> None:
    """Fail in one line, before anything is built, if a GPU is asked for and none is visible."""
    if str(accelerator).lower() in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator is {accelerator} but no CUDA GPU is visible: use "
            "--trainer.accelerator cpu, or the CPU recipe --config artbank-cpu"
        )


def check_strategy(strategy: object) -> None:
    """Fail in one line, before anything is built, if DeepSpeed is asked for without CUDA."""
    name = strategy if isinstance(strategy, str) else getattr(strategy, "class_path", "")
    if "deepspeed" in str(name).lower() and not torch.cuda.is_available():
        raise ConfigError(
            "trainer.strategy DeepSpeed needs CUDA GPUs and none is visible; "
            "on CPUs use configs/trainer/ddp.yaml"
        )


def check_trainer_length(max_steps: object, max_epochs: object) -> None:
    """Refuse a run length Lightning would refuse only after the model is loaded.

    Raises:
        ConfigError: ``trainer.max_steps`` or ``trainer.max_epochs`` below -1 (-1: no limit).
    """
    for name, value in (("max_steps", max_steps), ("max_epochs", max_epochs)):
        if isinstance(value, int) and value < -1:
            raise ConfigError(
                f"trainer.{name} must be a non-negative integer or -1 (no limit), got {value}"
            )


#: logger class name -> (modules that can back it, the extra that installs one)
LOGGER_PACKAGES = {
    "TensorBoardLogger": (("tensorboard", "tensorboardX"), "tensorboard"),
    "WandbLogger": (("wandb",), "wandb"),
    "MLFlowLogger": (("mlflow",), None),
    "CometLogger": (("comet_ml",), None),
    "NeptuneLogger": (("neptune",), None),
}


def check_loggers(logger: object) -> None:
    """Fail in one line, before anything is built, if a logger's package is missing."""
    loggers = logger if isinstance(logger, list) else [logger]
    for item in loggers:
        name = item if isinstance(item, str) else getattr(item, "class_path", "") or ""
        short = str(name).rpartition(".")[2]
        if short not in LOGGER_PACKAGES:
            continue
        modules, extra = LOGGER_PACKAGES[short]
        if not any(importlib.util.find_spec(m) for m in modules):
            install = f"pip install 'artbank-pl[{extra}]'" if extra else f"pip install {modules[0]}"
            raise ConfigError(f"trainer.logger {short} needs {modules[0]}: {install}")


def check_test_loop(model_class: type) -> None:
    """Fail in one line if ``artbank test`` is given a model without a test loop."""
    if model_class.test_step is LightningModule.test_step:
        raise ConfigError(
            f"model {model_class.__name__} has no test loop; artbank test evaluates "
            "stylization with artbank_pl.tasks.EvaluateTask (--config evaluate-quickstart)"
        )


def resume_file(ckpt_path: object, default_root_dir: object) -> Path | None:
    """Return the checkpoint file a fit resumes from: a path, or ``last`` in the run folder."""
    name = str(ckpt_path or "")
    if name == "last":
        path = Path(str(default_root_dir or ".")) / "checkpoints" / "last.ckpt"
    else:
        path = Path(name)
    return path if name and path.is_file() else None


def given_model_options(argv: Sequence[str]) -> list[str]:
    """Return the model options named on a command line (``--model.init_args.lr 0.1`` -> lr)."""
    names = []
    for arg in argv:
        if arg.startswith("--model.") and arg != "--model.help":
            key = arg.split("=", 1)[0].removeprefix("--model.").removeprefix("init_args.")
            if key and key != "class_path":
                names.append(key.split(".", 1)[0])
    return names


def check_resume_options(
    argv: Sequence[str], model_args, checkpoint: Path | None, loaded: dict | None = None
) -> None:
    """Refuse a model option on a resume's command line that differs from the checkpoint's.

    A resume continues the checkpoint's run: Lightning builds the model from the
    checkpoint's hyperparameters (an explicit path) and restores the optimizer and its
    learning rates, so a different value would be silently replaced or ignored.

    Raises:
        ConfigError: an option given on the command line differs; the message names it, the
            value given and the checkpoint's.
    """
    if checkpoint is None or model_args is None:
        return
    if loaded is None:
        from artbank_pl.export import load_checkpoint

        loaded = load_checkpoint(str(checkpoint))
    saved = loaded.get("hyper_parameters") or {}
    for key in given_model_options(argv):
        if key in saved and key in model_args and model_args[key] != saved[key]:
            raise ConfigError(
                f"--model.init_args.{key} {model_args[key]!r} differs from the "
                f"{saved[key]!r} that {checkpoint} was trained with: a resume continues that "
                "run as it was; drop the option, or start a new run without --ckpt_path"
            )


def check_ckpt_path(ckpt_path: object, model_class: str | None = None) -> list[str] | None:
    """Fail in one line, before the model is built, on a checkpoint that cannot resume.

    ``last``, ``best``, ``hpc``, ``registry:...`` and remote URLs are Lightning's to resolve
    (the task's ``on_load_checkpoint`` checks those); a local path must exist, load with
    ``weights_only=True`` (a truncated or pickled file is refused), be a Lightning
    checkpoint (not an embedding file) and belong to ``model_class`` (a bank's checkpoint
    does not resume an inverter, nor the reverse).

    Returns:
        The collections the checkpoint's bank was trained on, if it names them.
    """
    name = str(ckpt_path or "")
    if not name or name in ("last", "best", "hpc") or name.startswith("registry") or "://" in name:
        return None
    from artbank_pl.export import load_checkpoint

    if not Path(name).is_file():
        raise ConfigError(f"--ckpt_path {ckpt_path} does not exist")
    if Path(name).suffix == ".safetensors":
        raise ConfigError(
            f"--ckpt_path {ckpt_path} is an embedding file, not a training checkpoint: start "
            "a bank from it with --model.init_args.init_embeddings"
        )
    checkpoint = load_checkpoint(name)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ConfigError(f"--ckpt_path {ckpt_path} is not a Lightning checkpoint (no state_dict)")
    check_checkpoint_task(name, checkpoint["state_dict"], model_class)
    return (checkpoint.get("hyper_parameters") or {}).get("collections")


#: which task's checkpoint a trainable's name shows
_TASK_OF_PREFIX = {"bank.": "PromptBankTask", "inverter.": "InverterTask"}


def check_checkpoint_task(path: str, state_dict: dict, model_class: str | None) -> None:
    """Refuse a checkpoint of the other task class, naming both.

    Raises:
        ConfigError: the checkpoint's trainables belong to another task than the run's.
    """
    wanted = str(model_class or "").rsplit(".", 1)[-1]
    found = {task for prefix, task in _TASK_OF_PREFIX.items() if any(
        str(key).startswith(prefix) for key in state_dict)}  # fmt: skip
    if wanted in _TASK_OF_PREFIX.values() and len(found) == 1 and wanted not in found:
        raise ConfigError(
            f"--ckpt_path {path} is a checkpoint of {found.pop()}, but this run's model is "
            f"{wanted}: resume it with its own model class, or start this one without it"
        )


def parse_error_line(message: str) -> str:
    """Condense a jsonargparse error into one line naming the option and what was wrong.

    A bad ``--model.init_args.X`` is reported as a union of every subclass that failed,
    nesting ``Parser key "model"`` around ``Parser key "X"`` and the reason; the line
    names the innermost key under its outer one and keeps the reason.
    """
    keys = re.findall(r'Parser key "([^"]+)"', message)
    lines = [line.strip().removeprefix("- ") for line in message.splitlines() if line.strip()]
    if not keys:
        return lines[0] if lines else "invalid command line"
    heads = ("Parser key", "Problem with given class_path")
    last = max(i for i, line in enumerate(lines) if line.startswith(heads))
    reason = lines[last + 1] if last + 1 < len(lines) else lines[last]
    reason = reason.replace("typing.", "").replace("<class '", "").replace("'>", "")
    option = keys[0] if len(keys) == 1 else f"{keys[0]}.init_args.{keys[-1]}"
    named = re.search(r"Problem with given class_path '([\w.]+)'", lines[last])
    where = f" ({named.group(1).rsplit('.', 1)[-1]})" if named else ""
    return f"--{option}{where}: {reason}"


def import_object(class_path: str):
    """Import ``package.module.Name``."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def run_lightning_cli(args: Sequence[str] | None, epilog: str = "") -> ArtbankCLI:
    """Run LightningCLI with subclass modes, env overrides and an overwritable saved config.

    Args:
        args: the command line after ``artbank``.
        epilog: text under ``--help`` (the data tools).
    """
    return ArtbankCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=SaveRunConfig,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            # a bad option raises (said in one line by artbank's entry point) instead of
            # printing the whole usage and a nested union report
            "exit_on_error": False,
            "default_env": True,
            "env_prefix": "ARTBANK",
            "epilog": epilog,
            "formatter_class": argparse.RawDescriptionHelpFormatter,
        },
        args=args,
    )


class SaveRunConfig(SaveConfigCallback):
    """Save the resolved config in the run's own folder, never in the working directory.

    ``fit`` and ``validate``: the log dir (Lightning's place). ``predict``: the output folder
    of the writer callback (any callback with an ``output_dir``). ``test``: the task's
    ``report_dir``. A stage with no such folder saves nothing rather than ``./config.yaml``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Find the run folder on every rank, then save on rank zero."""
        # trainer.log_dir is a collective (it broadcasts): every rank must ask, not only the
        # rank that saves, or DDP deadlocks
        self.folder = run_folder(trainer, pl_module, stage)
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        """Write ``config.yaml`` into the stage's run folder (rank zero only)."""
        folder = self.folder
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, str(folder / self.config_filename), skip_none=False,
                         overwrite=True, multifile=self.multifile)  # fmt: skip


def run_folder(trainer, pl_module, stage: str) -> Path | None:
    """Return the folder a stage writes its results to, or ``None``."""
    if stage == "predict":
        dirs = [cb.output_dir for cb in trainer.callbacks if getattr(cb, "output_dir", None)]
        return Path(dirs[0]) if dirs else None
    if stage == "test":
        report = getattr(getattr(pl_module, "hparams", None), "report_dir", None)
        return Path(report) if report else None
    return Path(trainer.log_dir) if trainer.log_dir else None
