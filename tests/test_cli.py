import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from artbank_pl.cli import main
from artbank_pl.datamodules.shards import build_shards

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_help_lists_the_subcommands_and_tools(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for sub in ("fit", "validate", "test", "predict", "shards build", "export", "demo"):
        assert f"artbank {sub}" in out
    assert main([]) == 2 and "usage: artbank COMMAND" in capsys.readouterr().out


def test_top_level_help_imports_neither_lightning_nor_torch():
    probe = ("import sys; from artbank_pl.cli import main; main(['--help']); "
             "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip().endswith("[]"), result.stderr


def test_fit_help_shows_docstrings(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model.help", "artbank_pl.tasks.PromptBankTask"])
    out = capsys.readouterr().out
    assert "token vectors per collection" in out
    assert "min-SNR-gamma" in out


EVALUATION_OPTIONS = ("metrics_model", "exemplars", "report_dir", "sweep_strengths", "judges")


def test_predict_help_shows_only_what_predict_uses(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--model.help", "artbank_pl.tasks.StylizeTask"])
    stylize_help = capsys.readouterr().out
    assert "--model.strength" in stylize_help
    for option in EVALUATION_OPTIONS:
        assert f"--model.{option}" not in stylize_help
    with pytest.raises(SystemExit):
        main(["test", "--model.help", "artbank_pl.tasks.EvaluateTask"])
    evaluate_help = capsys.readouterr().out
    for option in ("strength", "inversion", *EVALUATION_OPTIONS):  # the stylizer's too
        assert f"--model.{option}" in evaluate_help


def test_testing_a_model_without_a_test_loop_names_the_evaluator(tmp_path):
    with pytest.raises(SystemExit) as info:
        main([
            "test", "--model", "artbank_pl.tasks.StylizeTask", "--model.bank", str(tmp_path),
            "--data", "artbank_pl.datamodules.ContentDataModule", "--data.content", str(tmp_path),
        ])  # fmt: skip
    assert "StylizeTask has no test loop" in str(info.value.code)
    assert "artbank_pl.tasks.EvaluateTask" in str(info.value.code)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as info:
        subcommand = {"stylize": "predict", "evaluate": "test"}.get(
            config.stem.split("-")[0], "fit"
        )
        base = (
            ["--config", str(ROOT / "configs/quickstart.yaml")]
            if config.parent.name == "trainer"
            else []
        )
        main([subcommand, *base, "--config", str(config), "--print_config"])
    assert info.value.code == 0
    assert "class_path" in capsys.readouterr().out


def test_env_overrides_defaults(monkeypatch, capsys):
    monkeypatch.setenv("ARTBANK_FIT__TRAINER__MAX_STEPS", "7")
    with pytest.raises(SystemExit):
        main(["fit", "--print_config"])
    assert "max_steps: 7" in capsys.readouterr().out
    # the README's order: defaults < environment < --config < command-line options
    with pytest.raises(SystemExit):
        main(["fit", "--config", "quickstart", "--print_config"])
    assert "max_steps: 300" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["fit", "--config", "quickstart", "--trainer.max_steps", "9", "--print_config"])
    assert "max_steps: 9" in capsys.readouterr().out


def tensorboard_events(folder: Path):
    """The scalars and images of every event file in ``folder``, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0}).Reload()


@pytest.fixture()
def demo_dir(tmp_path, image_root, monkeypatch):
    """A working directory laid out as `make demo` leaves it, with small synthetic images."""
    build_shards(image_root, tmp_path / "outputs/demo/shards", size=64, maxcount=2,
                 val_per_collection=1)  # fmt: skip
    photographs = tmp_path / "outputs/demo/images/photographs"
    shutil.copytree(image_root / "monet", photographs)
    (photographs / "img00.txt").write_text("a photo\n")  # a caption beside an image
    monkeypatch.chdir(tmp_path)
    return tmp_path


QUICK = ["--trainer.val_check_interval", "2", "--data.init_args.resolution", "32",
         "--data.init_args.batch_size", "2", "--data.init_args.samples_per_epoch", "8"]  # fmt: skip


@pytest.mark.slow
def test_quickstart_trains_resumes_and_exports(demo_dir):
    config = str(ROOT / "configs/quickstart.yaml")
    main(["fit", "--config", config, "--trainer.max_steps", "4", *QUICK])
    out = demo_dir / "outputs/demo"
    last = out / "checkpoints/last.ckpt"
    assert last.stat().st_size < 1024 * 1024
    assert (out / "loss.png").stat().st_size > 0
    assert sorted(p.name for p in (out / "embeddings/diffusers").iterdir()) == [
        "hokusai.safetensors",
        "monet.safetensors",
    ]
    # rerun in the same folder: resumes from last.ckpt, and config.yaml is overwritten
    main(["fit", "--config", config, "--trainer.max_steps", "6", "--ckpt_path", "last", *QUICK])
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 6
    assert resumed["optimizer_states"][0]["state"][0]["step"].item() == 6
    # the loss curve goes on across the resume, validation loss included
    table = [line.split(",") for line in (out / "loss.csv").read_text().splitlines()]
    assert table[0] == ["step", "train_loss", "val_loss"]
    assert [int(s) for s, _, _ in table[1:]] == [1, 2, 3, 4, 5, 6]
    assert [int(s) for s, _, val in table[1:] if val] == [2, 4, 6]
    # TensorBoard (the default logger with the extra): the resume went on writing the same
    # run, the validation's scalars and sample grid share a step, and no step is drawn twice
    assert [p.name for p in (out / "lightning_logs").iterdir()] == ["version_0"]
    events = tensorboard_events(out / "lightning_logs/version_0")
    val_steps = [e.step for e in events.Scalars("val/loss")]
    assert len(val_steps) == 3 and val_steps == sorted(set(val_steps)), val_steps
    assert [e.step for e in events.Images("samples")] == val_steps
    assert main(["export", "--ckpt", str(last), "--output", "exported"]) == 0
    assert len(list((demo_dir / "exported").rglob("*.safetensors"))) == 4


@pytest.mark.slow
def test_default_root_dir_moves_everything_a_run_writes(demo_dir):
    run = ["--trainer.default_root_dir", "runs/mine", "--trainer.val_check_interval", "2"]
    main(["fit", "--config", "quickstart", "--trainer.max_steps", "2", *run, *QUICK[2:]])
    mine = demo_dir / "runs/mine"
    assert (mine / "checkpoints/last.ckpt").is_file()
    assert (mine / "loss.png").is_file()
    assert list((mine / "lightning_logs").glob("version_0/events.out.tfevents.*"))
    assert (mine / "lightning_logs/version_0/config.yaml").is_file()
    assert list((mine / "embeddings/diffusers").glob("*.safetensors"))
    assert sorted(p.name for p in (demo_dir / "outputs/demo").iterdir()) == ["images", "shards"]
    assert not (demo_dir / "config.yaml").exists()
    # the next run of that folder resumes from its own last checkpoint
    main(["fit", "--config", "quickstart", "--trainer.max_steps", "4", "--ckpt_path", "last",
          *run, *QUICK[2:]])  # fmt: skip
    last = torch.load(mine / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 4


@pytest.mark.slow
def test_the_cpu_recipe_trains_on_a_users_collections_with_only_a_manifest(demo_dir):
    manifest = str(demo_dir / "outputs/demo/shards/manifest.json")
    small = ["--model.init_args.pretrained", "tiny", "--data.init_args.resolution", "32",
             "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
             "--trainer.limit_val_batches", "1"]  # fmt: skip
    main(["fit", "--config", "artbank-cpu", "--data.init_args.manifest", manifest, *small])
    assert (demo_dir / "runs/artbank-cpu/checkpoints/last.ckpt").is_file()


def test_the_gpu_recipe_on_a_cpu_machine_is_one_line(demo_dir, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    manifest = str(demo_dir / "outputs/demo/shards/manifest.json")
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", "artbank-sd15", "--data.init_args.manifest", manifest])
    assert "trainer.accelerator is gpu but no CUDA GPU is visible" in str(stop.value)


@pytest.mark.slow
def test_checkpoints_are_ranked_by_the_val_loss_of_their_own_step(demo_dir):
    main(["fit", "--config", "quickstart", "--trainer.max_steps", "6", *QUICK])  # val at 2, 4, 6
    out = demo_dir / "outputs/demo"
    events = tensorboard_events(next((out / "lightning_logs").glob("version_*")))
    # Lightning logs a validation's scalars one below the steps trained
    val_loss = {e.step + 1: e.value for e in events.Scalars("val/loss")}
    assert sorted(val_loss) == [2, 4, 6]
    best = list((out / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1  # save_top_k: 1
    ckpt = torch.load(best[0], map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == min(val_loss, key=val_loss.get)
    assert torch.load(out / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 6


@pytest.mark.slow
def test_a_new_run_in_the_folder_of_an_earlier_one_replaces_its_last_checkpoint(demo_dir, caplog):
    # it wrote last-v1.ckpt beside the earlier run's last.ckpt, and export, predict and
    # --ckpt_path last went on reading the earlier run's bank (a second `make demo`)
    main(["fit", "--config", "quickstart", "--trainer.max_steps", "2", *QUICK])
    with caplog.at_level(logging.WARNING):
        main(["fit", "--config", "quickstart", "--trainer.max_steps", "4", *QUICK])
    folder = demo_dir / "outputs/demo/checkpoints"
    assert not list(folder.glob("last-v*.ckpt"))
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 4
    assert sum("an earlier run's; this new run replaces it" in r.getMessage()
               for r in caplog.records) == 1  # fmt: skip


def test_console_module_runs():
    result = subprocess.run(
        [sys.executable, "-m", "artbank_pl", "--help"], capture_output=True, text=True, check=True
    )
    assert "fit" in result.stdout


def test_a_shipped_config_is_named_without_a_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "quickstart", "--config", "trainer/ddp", "--print_config"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "artbank_pl.datamodules.ArtworkDataModule" in out and "DDPStrategy" in out
    # a file that exists wins over the shipped config of the same name
    (tmp_path / "quickstart").write_text("trainer:\n  max_steps: 11\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", "quickstart", "--print_config"])
    assert "max_steps: 11" in capsys.readouterr().out


def test_an_unknown_config_name_lists_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "quikstart"])
    message = str(info.value.code)
    assert "--config quikstart" in message and "quickstart-inst" in message


def test_configs_list_and_show(capsys):
    assert main(["configs", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == sorted(
        p.relative_to(ROOT / "configs").with_suffix("").as_posix() for p in CONFIGS
    )
    # each description is a whole sentence, not a first comment line cut mid-sentence
    assert all(line.rstrip().endswith(".") for line in listed), listed
    assert main(["configs", "show", "trainer/ddp"]) == 0
    assert capsys.readouterr().out == (ROOT / "configs/trainer/ddp.yaml").read_text()


@pytest.mark.slow
def test_one_collection_fits_with_validation_and_tests_with_one_style(tmp_path, monkeypatch):
    """One bank per painter (ArtBank's released setup) is K = 1 everywhere."""
    from conftest import write_collections

    images = write_collections(tmp_path / "outputs/demo/images/collections", {"monet": 5})
    build_shards(images, tmp_path / "outputs/demo/shards", size=64, maxcount=2,
                 val_per_collection=1)  # fmt: skip
    shutil.copytree(images / "monet", images.parent / "photographs")
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", "quickstart", "--trainer.max_steps", "2", *QUICK])
    out = tmp_path / "outputs/demo"
    events = tensorboard_events(next((out / "lightning_logs").glob("version_*")))
    assert {"val/loss/monet", "val/style_sim/monet"} <= set(events.Tags()["scalars"])
    (tmp_path / "config.yaml").write_text("# the user's own notes\n")
    main(["test", "--config", "evaluate-quickstart", "--model.init_args.steps", "4",
          "--data.init_args.resolution", "32"])  # fmt: skip
    assert (out / "report/config.yaml").is_file()
    report = json.loads((out / "report/metrics.json").read_text())
    assert set(report["results"][next(iter(report["results"]))]["style_sim"]) == {"monet"}
    main(["predict", "--config", "stylize-quickstart", "--model.init_args.steps", "4",
          "--data.init_args.resolution", "32"])  # fmt: skip
    assert len(list((out / "stylized/monet").glob("*.png"))) == 5
    assert "steps: 4" in (out / "stylized/config.yaml").read_text()
    # the resolved configs go into each run's folder; the user's file stays as it was
    assert (tmp_path / "config.yaml").read_text() == "# the user's own notes\n"


@pytest.mark.parametrize("tool", [["export"], ["shards", "build"], ["grid"], ["world", "images"]])
def test_data_tools_start_without_importing_lightning_or_transformers(tool):
    code = (
        "import sys\nfrom artbank_pl.cli import main\n"
        f"try:\n    main({tool + ['--help']!r})\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('lightning', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_data_tools_take_both_spellings_and_show_defaults(image_root, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["shards", "build", "--help"])
    assert "(default: 512)" in capsys.readouterr().out
    args = ["--input", str(image_root), "--size", "32", "--val_per_collection", "1"]
    assert main(["shards", "build", *args, "--output", str(tmp_path / "s")]) == 0
    manifest = json.loads((tmp_path / "s/manifest.json").read_text())
    assert manifest["splits"]["val"]["total"] == len(manifest["collections"])


@pytest.mark.parametrize(("logger", "package"), [("TensorBoardLogger", "tensorboard"),
                                                 ("WandbLogger", "wandb")])  # fmt: skip
def test_a_logger_without_its_package_is_one_line(demo_dir, monkeypatch, logger, package):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    hidden = {"tensorboard", "tensorboardX", "wandb"}
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in hidden else real_find_spec(name, *a),
    )
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "quickstart", "--trainer.logger", logger,
              "--trainer.logger.save_dir", "outputs/demo"])  # fmt: skip
    assert f"trainer.logger {logger} needs {package}" in str(info.value.code)
    assert f"artbank-pl[{package}]" in str(info.value.code)


@pytest.mark.slow
def test_resuming_on_other_collections_is_refused_by_name(demo_dir, image_root):
    main(["fit", "--config", "quickstart", "--trainer.max_steps", "2", *QUICK])
    images = demo_dir / "renamed"
    shutil.copytree(image_root, images)
    (images / "hokusai").rename(images / "renoir")
    shutil.rmtree(demo_dir / "outputs/demo/shards")
    build_shards(images, demo_dir / "outputs/demo/shards", size=64, maxcount=2,
                 val_per_collection=1)  # fmt: skip
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "quickstart", "--trainer.max_steps", "4", "--ckpt_path", "last",
              *QUICK])  # fmt: skip
    message = str(info.value.code)
    assert "only in the checkpoint: ['hokusai']; only in this run: ['renoir']" in message


def test_an_error_in_a_dataloader_worker_is_one_line():
    from torch._utils import ExceptionWrapper

    from artbank_pl.cli import one_line
    from artbank_pl.errors import ConfigError

    try:
        raise ConfigError("stream part 3 of 4 got no sample: use fewer dataloader workers")
    except ConfigError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 3")
    with pytest.raises(ConfigError) as info:
        wrapped.reraise()
    assert "Traceback" in str(info.value)  # what PyTorch hands back
    assert one_line(info.value) == "stream part 3 of 4 got no sample: use fewer dataloader workers"


def test_file_system_errors_on_a_named_path_are_user_errors():
    import errno

    from artbank_pl.cli import user_error

    denied = PermissionError(errno.EACCES, "Permission denied", "/data/out")
    try:
        raise RuntimeError("while saving") from denied
    except RuntimeError as err:
        assert str(user_error(err)) == "/data/out: Permission denied"
    full = OSError(errno.ENOSPC, "No space left on device", "/data/out/x.png")
    assert str(user_error(full)) == "/data/out/x.png: no space left on the device"
    assert user_error(ValueError("a bug")) is None  # anything else stays a traceback


@pytest.mark.slow
def test_a_resume_refuses_a_model_option_that_differs_from_the_checkpoint(demo_dir):
    main(["fit", "--config", "quickstart", "--trainer.max_steps", "2", *QUICK])
    last = demo_dir / "outputs/demo/checkpoints/last.ckpt"
    for ckpt in ("last", str(last)):
        with pytest.raises(SystemExit) as info:
            main(["fit", "--config", "quickstart", "--trainer.max_steps", "4", "--ckpt_path", ckpt,
                  "--model.init_args.lr", "0.5", *QUICK])  # fmt: skip
        message = str(info.value.code)
        assert "--model.init_args.lr 0.5 differs from the 0.02 that" in message, message
        assert "last.ckpt was trained with" in message
    # the checkpoint's own value, or a trainer option, resumes
    main(["fit", "--config", "quickstart", "--trainer.max_steps", "3", "--ckpt_path", "last",
          "--model.init_args.lr", "0.02", *QUICK])  # fmt: skip
    assert torch.load(last, weights_only=True)["global_step"] == 3
