"""``artbank demo``: the steps ``make demo`` runs, from the package, into any folder."""

import json
from pathlib import Path

import pytest
import yaml

from artbank_pl.demo import DEMO_CONFIGS, SHIPPED_OUTPUT, demo_configs, demo_steps, results_table
from artbank_pl.errors import ConfigError


def test_the_shipped_output_runs_the_shipped_configs_by_name(tmp_path):
    assert demo_configs(Path(SHIPPED_OUTPUT)) == {name: name for name in DEMO_CONFIGS}


def test_another_output_gets_copies_of_the_configs_that_name_it(tmp_path):
    out = tmp_path / "my demo"
    configs = demo_configs(out)
    assert sorted(configs) == sorted(DEMO_CONFIGS)
    for name, path in configs.items():
        text = open(path, encoding="utf-8").read()
        assert SHIPPED_OUTPUT not in text, name
        assert out.as_posix() in text, name
        assert "class_path" in json.dumps(yaml.safe_load(text)), name
    fit = yaml.safe_load(open(configs["quickstart"], encoding="utf-8"))
    assert fit["trainer"]["default_root_dir"] == out.as_posix()
    assert fit["data"]["init_args"]["manifest"] == f"{out.as_posix()}/shards/manifest.json"


def test_every_step_reads_what_an_earlier_step_wrote(tmp_path):
    out = tmp_path.as_posix()
    steps = demo_steps(out, demo_configs(tmp_path))
    commands = [args[0] for _, args in steps]
    assert commands[:3] == ["world", "shards", "fit"] and commands[-1] == "test"
    assert commands.count("fit") == 2 and commands.count("predict") == 2
    assert commands.count("test") == 2  # the bank's evaluation and the inverter's
    written = {args[args.index("--output") + 1] for _, args in steps if "--output" in args}
    for _, args in steps:
        if args[0] == "export":
            checkpoint = args[args.index("--ckpt") + 1]
            assert checkpoint.startswith(out) and checkpoint.endswith("last.ckpt")
        if args[0] == "grid":
            manifests = [a for a in args if a.endswith("manifest.jsonl")]
            assert len(manifests) == 2 and all(m.startswith(out) for m in manifests)
    assert f"{out}/images" in written and f"{out}/shards" in written


def test_the_results_table_averages_each_measure_over_the_styles(tmp_path):
    metrics = {"results": {"strength=0.7 guidance=10": {
        "style_accuracy": {"a": 1.0, "b": 0.5},
        "content_accuracy": {"a": 0.25, "b": 0.75},
        "content_iou": {"a": 0.8, "b": 0.6},
    }}}  # fmt: skip
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    header, row = results_table(path).splitlines()
    assert header.split() == ["setting", "style", "shape", "IoU"]
    assert row.split() == ["strength=0.7", "guidance=10", "0.750", "0.500", "0.700"]


def test_an_output_that_is_a_file_is_refused_naming_it(tmp_path):
    from artbank_pl.demo import main

    taken = tmp_path / "taken"
    taken.write_text("x")
    with pytest.raises(ConfigError, match="--output .*taken.*not a folder"):
        main(["--output", str(taken)])
