"""What ``artbank fit`` prints to stderr: each line once, and nothing a user cannot act on."""

import os
import re
import subprocess
import sys

from tests.hostile_runs import QUICK_FIT, demo_layout

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


def test_a_clean_fit_prints_only_allowed_lines_each_once(tmp_path):
    demo_layout(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "artbank_pl", "fit", "--config", "quickstart", *QUICK_FIT],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    unexpected = [line for line in lines if not any(re.fullmatch(p, line) for p in ALLOWED)]
    assert not unexpected, unexpected
    assert len(lines) == len(set(lines)), lines  # no line twice (two handlers)
    assert "Loading weights" not in result.stderr + result.stdout
    # the model summary: plain text, without a FLOPs column of zeros
    assert "trainable params" in result.stdout and "bank" in result.stdout
    assert "FLOPs" not in result.stdout and "┃" not in result.stdout
