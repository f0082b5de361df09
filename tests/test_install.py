"""The wheel is the product: build it, install it offline into a fresh venv, run it from an
empty folder (no checkout on the path), and check that only ``artbank_pl`` is installed."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import write_collections

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "artbank_pl", "callbacks", "datamodules", "configs")
QUICK = ["--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
         "--data.init_args.resolution", "32", "--data.init_args.batch_size", "2",
         "--data.init_args.samples_per_epoch", "8"]  # fmt: skip


def run(cmd, cwd, env, stderr=False):
    """Run ``cmd``; return its stdout (with ``stderr``, stdout and stderr)."""
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr if stderr else result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Build the wheel from a copy of the sources, so the checkout gets no build/ folder."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)]
    (out / "build.log").write_text(run(cmd, src, os.environ.copy(), stderr=True))
    (path,) = out.glob("artbank_pl-*.whl")
    return path


def test_the_wheel_builds_without_setuptools_warnings(wheel):
    log = (wheel.parent / "build.log").read_text()
    assert "would be ignored" not in log and "is absent from the `packages`" not in log, log


def test_the_wheel_holds_only_artbank_pl_with_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"artbank_pl"}
    for member in ("callbacks/__init__.py", "datamodules/shards.py", "configs/quickstart.yaml",
                   "configs/trainer/ddp.yaml", "assets/bpe_simple_vocab_16e6.txt.gz",
                   "assets/NOTICE", "tiny/unet.json", "world/model/unet/config.json",
                   "world/model/judges/mask.safetensors",
                   "world/model/image_encoder/model.safetensors", "tiny_xl/unet.json",
                   "random_sdxl/text_encoder_2.json", "configs/artbank-sdxl.yaml",
                   "world/model_xl/unet/diffusion_pytorch_model.safetensors",
                   "world/model_xl/text_encoder_2/model.safetensors"):  # fmt: skip
        assert f"artbank_pl/{member}" in names


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """A fresh venv that sees this venv's dependencies through a .pth file, plus the wheel."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # a plain path line: the project's own editable finder (a .pth hook) is not run there
    Path(purelib, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
           "--no-index", "--find-links", str(wheel.parent), str(wheel)]  # fmt: skip
    run(cmd, venv, env)
    return venv / "bin", env | {"HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_the_installed_wheel_runs_the_quickstart_from_an_empty_folder(installed, tmp_path):
    bin_dir, env = installed
    artbank = str(bin_dir / "artbank")
    where = run([str(bin_dir / "python"), "-c", "import artbank_pl; print(artbank_pl.__file__)"],
                tmp_path, env)  # fmt: skip
    assert str(bin_dir.parent) in where, "the installed package, not the checkout, must load"
    assert "configs" in run([artbank, "--help"], tmp_path, env)
    assert "trainer/ddp" in run([artbank, "configs", "list"], tmp_path, env)
    assert "class_path" in run([artbank, "configs", "show", "quickstart"], tmp_path, env)

    images = write_collections(tmp_path / "images")
    shutil.copytree(images / "monet", tmp_path / "outputs/demo/images/photographs")
    run([artbank, "shards", "build", "--input", str(images), "--output", "outputs/demo/shards",
         "--size", "48", "--val-per-collection", "1"], tmp_path, env)  # fmt: skip
    run([artbank, "fit", "--config", "quickstart", *QUICK], tmp_path, env)
    last = tmp_path / "outputs/demo/checkpoints/last.ckpt"
    assert last.is_file()
    run([artbank, "export", "--ckpt", str(last), "--output", "exported"], tmp_path, env)
    assert (tmp_path / "exported/diffusers/monet.safetensors").is_file()
    run([artbank, "predict", "--config", "configs/stylize-quickstart.yaml",
         "--model.init_args.steps", "2", "--data.init_args.resolution", "32"],
        tmp_path, env)  # fmt: skip
    stylized = tmp_path / "outputs/demo/stylized"
    assert len(list(stylized.glob("*/*.png"))) == 2 * len(list(images.glob("monet/*.png")))


@pytest.mark.slow
def test_the_installed_wheel_runs_the_whole_demo_from_an_empty_folder(installed, tmp_path):
    from artbank_pl.demo import INST_REPORT, results_table

    bin_dir, env = installed
    printed = run([str(bin_dir / "artbank"), "demo", "--output", "my demo"], tmp_path, env)
    out = tmp_path / "my demo"
    assert printed.count("[demo ") == 13 and "[demo 13/13] the inverter's evaluation" in printed
    for made in ("grid.png", "report/report.html", f"{INST_REPORT}/report.html", "export",
                 "inst/export", "configs"):  # fmt: skip
        assert (out / made).exists(), made
    assert len(list((out / "stylized").glob("*/*.png"))) == 3 * 8
    # the tables it ends with are the evaluations' own figures, the bank's then the inverter's
    bank, inverter = (results_table(out / f / "metrics.json") for f in ("report", INST_REPORT))
    assert printed.rstrip().endswith(inverter) and bank in printed
    assert not (tmp_path / "outputs").exists(), "nothing may land in the shipped folder"
