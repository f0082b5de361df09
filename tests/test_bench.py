import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny", "tiny-xl"])  # tiny-xl: the sdxl preset's code path
def test_bench_runs_every_row_and_ends_with_the_ratio(preset):
    cmd = [
        sys.executable, str(ROOT / "bench/throughput.py"), "--preset", preset, "--steps", "3",
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
        "g. ours, cached latents",
        "d. stylize ddim 50: diffusers",
        "d. stylize ddim 50: ours",
        "d. stylize dpmsolver++ 20: diffusers",
        "d. stylize dpmsolver++ 20: ours",
    ):
        assert any(line.startswith(row) for line in lines), row
    assert re.fullmatch(r"ratio lightning/bare: \d+\.\d{3}", lines[-1])


def test_the_data_path_bench_gives_every_row_with_all_images_counted():
    cmd = [sys.executable, str(ROOT / "bench/data_path.py"), "--size", "64", "--images", "32",
           "--repeats", "1"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary["img_per_s"]) == {"train read", "content read", "write shards",
                                         "write jpg"}  # fmt: skip
    assert all(rate > 0 for rate in summary["img_per_s"].values())


@pytest.mark.slow
def test_study_tunes_every_arm_on_held_out_worlds_and_reports_intervals(tmp_path):
    cmd = [
        sys.executable, str(ROOT / "bench/study.py"), "--seeds", "0", "1", "--tuning-seeds", "7",
        "--steps", "2", "--every", "1", "--lrs", "0.01", "0.03", "--inverter-lrs", "1e-3",
        "--painting-styles", "dotted", "--photos", "8", "--sampling-strengths", "0.7",
        "--output", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    study = json.loads((tmp_path / "study.json").read_text())
    arms = {"ssam", "self", "none", "inverter", "embedding"}
    assert set(study["chosen"]) == arms == set(study["summary"]["arms"])
    for arm in ("ssam", "self", "none", "embedding"):  # chosen from its grid, every rate tried
        assert study["chosen"][arm]["lr"] in (0.01, 0.03)
        assert set(study["chosen"][arm]["tuning"]) == {"0.01", "0.03"}
    assert study["chosen"]["inverter"]["lr"] == 1e-3
    assert set(study["seeds"]) == {"0", "1"}
    for result in study["seeds"].values():
        assert [row["step"] for row in result["curves"]["ssam"]] == [0, 1, 2]
        assert set(result["curves"]) == {"ssam", "self", "none", "inverter dotted",
                                         "embedding dotted"}  # fmt: skip
        assert "copied" in result["curves"]["inverter dotted"][-1]
    style = study["summary"]["arms"]["ssam"]["style"]
    assert style["n"] == 2 and style["half_width"] is not None
    assert {"ssam - none", "inverter - embedding"} <= set(study["summary"]["pairs"])
    assert {"stochastic - noise at 0.7", "adain on - off", "dpmsolver++ 20 - ddim 50"} <= set(
        study["summary"]["sampling_pairs"]
    )
    assert "| ssam |" in (tmp_path / "study.md").read_text()
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert (tmp_path / "tradeoff.png").stat().st_size > 0


@pytest.mark.slow
def test_the_study_tunes_chosen_arms_alone_on_request(tmp_path):
    cmd = [
        sys.executable, str(ROOT / "bench/study.py"), "--seeds", "0", "--tuning-seeds", "7",
        "--steps", "2", "--lrs", "0.01", "0.03", "--painting-styles", "dotted", "--photos", "4",
        "--tune-only", "--tune-arms", "none", "embedding", "--output", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    tuning = json.loads((tmp_path / "tuning.json").read_text())
    assert set(tuning["chosen"]) == {"none", "embedding"}
    for arm in ("none", "embedding"):  # every rate tried, scored as (style, IoU)
        assert set(tuning["chosen"][arm]["tuning"]) == {"0.01", "0.03"}
        assert all(len(score) == 2 for score in tuning["chosen"][arm]["tuning"].values())
    assert json.loads(result.stdout.strip().splitlines()[-1]) == tuning["chosen"]
    assert not (tmp_path / "study.json").exists()  # no reported seed was run


def _study(output: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "bench/study.py"), "--seeds", "0", "1", "--tuning-seeds",
           "7", "--steps", "2", "--every", "1", "--photos", "4", "--arms", "bank",
           "--output", str(output), *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)


def _extend(earlier: dict, earlier_path: Path, output: Path) -> tuple[dict, str]:
    """Write ``earlier`` and extend it with rate 0.03 for ``none``; return the study, log."""
    earlier_path.write_text(json.dumps(earlier))
    result = _study(output, "--extend", str(earlier_path), "--tune-arms", "none",
                    "--lrs", "0.03")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((output / "study.json").read_text()), result.stderr


@pytest.mark.slow
def test_an_extended_study_reruns_only_the_arm_whose_rate_changes(tmp_path):
    assert _study(tmp_path / "a", "--lrs", "0.01").returncode == 0
    earlier_path = tmp_path / "a/study.json"
    earlier = json.loads(earlier_path.read_text())
    for seed in ("0", "1"):  # a key no run writes: a copy keeps it, a re-run drops it
        for row in earlier["seeds"][seed]["curves"]["none"]:
            row["marked"] = True
    # the earlier grid's one rate scored below anything a probe can give: the new one wins
    earlier["chosen"]["none"]["tuning"]["0.01"] = [-1.0, -1.0]
    study, log = _extend(earlier, earlier_path, tmp_path / "b")
    assert study["chosen"]["none"]["lr"] == 0.03
    assert set(study["chosen"]["none"]["tuning"]) == {"0.01", "0.03"}
    assert study["chosen"]["ssam"] == earlier["chosen"]["ssam"]
    for seed in ("0", "1"):  # the other arms are the earlier runs; `none` ran again
        curves, before = study["seeds"][seed]["curves"], earlier["seeds"][seed]["curves"]
        assert curves["ssam"] == before["ssam"] and curves["self"] == before["self"]
        assert [row["step"] for row in curves["none"]] == [0, 1, 2]
        assert not any("marked" in row for row in curves["none"])
    assert "re-running ['none']" in log
    # scored above anything instead: the earlier choice stands and nothing runs again
    earlier["chosen"]["none"]["tuning"]["0.01"] = [2.0, 2.0]
    study, log = _extend(earlier, earlier_path, tmp_path / "c")
    assert study["chosen"]["none"]["lr"] == 0.01
    assert study["seeds"] == earlier["seeds"]  # the marked `none` curves included
    assert "re-running nothing" in log


def test_an_extended_study_refuses_another_footing(tmp_path):
    earlier = tmp_path / "study.json"
    earlier.write_text(json.dumps({"args": {"steps": 500}, "chosen": {}, "seeds": {}}))
    result = _study(tmp_path / "out", "--extend", str(earlier), "--tune-arms", "none")
    assert result.returncode == 1
    assert f"--extend {earlier}: its --seeds is None, this run's [0, 1]" in result.stderr
    earlier.write_text("{not json")
    result = _study(tmp_path / "out", "--extend", str(earlier), "--tune-arms", "none")
    assert result.returncode == 1 and "not a readable study.json" in result.stderr


def test_the_study_tunes_single_arms_only_in_a_tuning_run(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench/study.py"), "--tune-arms", "none", "--output",
           str(tmp_path)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2
    assert "--tune-arms needs --tune-only or --extend" in result.stderr


def test_the_study_refuses_tuning_on_a_reported_seed(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench/study.py"), "--seeds", "0", "1", "--tuning-seeds",
           "1", "--output", str(tmp_path)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2
    assert "--tuning-seeds must differ from --seeds" in result.stderr
