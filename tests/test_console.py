"""What ``artbank fit``, ``predict`` and ``test`` print to stderr: each line once, and
nothing a user cannot act on."""

import os
import re
import subprocess
import sys

from tests.hostile_runs import QUICK_FIT, QUICK_PREDICT, demo_layout

#: every line fit may print to stderr on a clean run of the quickstart (tiny steps)
ALLOWED = [
    r"INFO: Seed set to \d+",
    r"INFO: GPU available: (True|False).*",
    r"INFO: TPU available: .*",
    r"INFO: `Trainer\(val_check_interval=1\)` was configured so validation will run .*",
    r"INFO: `Trainer\.fit` stopped: `max_steps=\d+` reached\.",
    r"INFO artbank_pl\.callbacks\.export: exported \d+ embedding files to .*",
    r"INFO artbank_pl\.callbacks\.loss_curve: loss curve: .*",
    r"INFO artbank_pl\.datamodules\.artwork: no validation split: validating on the training .*",
]
#: and what predict and test add
ALLOWED_STYLIZE = [
    r"INFO: Seed set to \d+",
    r"INFO: GPU available: (True|False).*",
    r"INFO: TPU available: .*",
    r"INFO artbank_pl\.callbacks\.prediction_writer: rank 0 wrote \d+ outputs",
    r"INFO artbank_pl\.tasks\.evaluation: evaluation report: .*report\.html",
]


def assert_only_allowed_lines_each_once(stderr: str, allowed: list[str]) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    unexpected = [line for line in lines if not any(re.fullmatch(p, line) for p in allowed)]
    assert not unexpected, unexpected
    assert len(lines) == len(set(lines)), lines  # no line twice (two handlers)


def test_a_clean_fit_prints_only_allowed_lines_each_once(tmp_path):
    demo_layout(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "artbank_pl", "fit", "--config", "quickstart", *QUICK_FIT],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert_only_allowed_lines_each_once(result.stderr, ALLOWED)
    assert "Loading weights" not in result.stderr + result.stdout
    # the model summary: plain text, without a FLOPs column of zeros
    assert "trainable params" in result.stdout and "bank" in result.stdout
    assert "FLOPs" not in result.stdout and "┃" not in result.stdout


def test_a_clean_predict_and_test_print_only_allowed_lines_each_once(tmp_path):
    demo_layout(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    fit = [sys.executable, "-m", "artbank_pl", "fit", "--config", "quickstart", *QUICK_FIT]
    assert subprocess.run(fit, cwd=tmp_path, env=env, capture_output=True).returncode == 0
    bank = "outputs/demo/checkpoints/last.ckpt"
    commands = {
        "predict": ["predict", "--config", "stylize-quickstart", *QUICK_PREDICT,
                    "--model.init_args.bank", bank],
        "test": ["test", "--config", "evaluate-quickstart", *QUICK_PREDICT,
                 "--model.init_args.bank", bank, "--model.init_args.adain", "false",
                 "--model.init_args.exemplars", "images", "--model.init_args.judges", "null"],
    }  # fmt: skip
    for name, argv in commands.items():
        result = subprocess.run([sys.executable, "-m", "artbank_pl", *argv], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert result.returncode == 0, (name, result.stderr[-3000:])
        assert_only_allowed_lines_each_once(result.stderr, ALLOWED_STYLIZE)
        # the results table fits its keys: no key cut at 80 columns
        assert "…" not in result.stdout and "/conte" + "\n" not in result.stdout, name
