import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from study_stats import interval, paired, show, t_quantile  # noqa: E402


@pytest.mark.parametrize(("df", "table"), [(1, 12.706), (2, 4.303), (4, 2.776), (30, 2.042)])
def test_t_quantile_matches_the_tables(df, table):
    assert t_quantile(0.975, df) == pytest.approx(table, abs=1e-3)


def test_interval_is_the_t_interval_of_the_mean():
    stats = interval([0.5, 0.6, 0.7, 0.8, 0.9])
    assert stats["mean"] == pytest.approx(0.7)
    # sd 0.1581, / sqrt(5) = 0.0707, x 2.776
    assert stats["half_width"] == pytest.approx(2.776 * 0.15811 / math.sqrt(5), rel=1e-3)
    assert interval([0.4])["half_width"] is None
    assert show(stats) == "0.70 ± 0.20"


def test_paired_differences_remove_what_the_seeds_share():
    # two arms that differ by 0.1 on every seed, whatever the seed: the paired interval is 0
    first, second = [0.3, 0.9, 0.5, 0.7], [0.2, 0.8, 0.4, 0.6]
    stats = paired(first, second)
    assert stats["mean"] == pytest.approx(0.1)
    assert stats["half_width"] == pytest.approx(0.0, abs=1e-12)
    assert interval(first)["half_width"] > 0.3
    with pytest.raises(ValueError, match="3 values against 2"):
        paired([1, 2, 3], [1, 2])
