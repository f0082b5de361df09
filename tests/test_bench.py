import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_runs_every_row_and_ends_with_the_ratio():
    cmd = [
        sys.executable, str(ROOT / "bench/throughput.py"), "--preset", "tiny", "--steps", "3",
        "--warmup", "1", "--stylize-images", "2", "--stylize-batch", "2", "--batch-size", "2",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    for row in (
        "a. peer",
        "b. ours, Lightning",
        "c. ours, InST",
        "e. bare",
        "f. floor",
        "d. stylize",
    ):
        assert any(line.startswith(row) for line in lines), row
    assert re.fullmatch(r"ratio lightning/bare: \d+\.\d{3}", lines[-1])
