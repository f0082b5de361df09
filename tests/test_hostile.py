"""Every hostile-input category of ``tests/hostile_cases.py``, run through the product.

A bad input ends in one line naming the file, key or option (exit 1, no traceback), or in a
counted skip with a log line while every good sample is still used; nothing else.
"""

import pytest

from tests.hostile_cases import CASES, Case


@pytest.mark.parametrize("case", CASES, ids=[case.category for case in CASES])
def test_hostile_input(case: Case, tmp_path):
    seen = case.run(tmp_path)
    assert seen.exit == case.exit, seen.text
    assert case.line in seen.text
    if case.exit:
        assert "\n" not in seen.text and "Traceback" not in seen.text
    assert seen.skipped == case.skipped, seen.text
    assert seen.used == case.used
