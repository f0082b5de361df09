"""Every numeric option of every task and data module: a value out of range is one line.

The options are read from the classes' signatures, so an option added later without a range
check fails here rather than deep inside a run (or never, trained on silently).
"""

from __future__ import annotations

import inspect

import pytest

from artbank_pl.datamodules import ArtworkDataModule, ContentDataModule
from artbank_pl.errors import ArtbankError
from artbank_pl.tasks import EvaluateTask, InverterTask, PromptBankTask, StylizeTask

#: options where a negative number is meaningful
NEGATIVE_ALLOWED = {"val_seed", "seed"}
#: a bank file that does not exist: an option that is not checked reaches it and names it
NO_BANK = "no-such-bank.safetensors"


def classes_and_arguments(tmp_path) -> list[tuple[type, dict]]:
    """Each class with arguments that pass its checks up to the numeric options."""
    (tmp_path / "manifest.json").write_text("{}")
    return [
        (PromptBankTask, {"collections": ["a", "b"], "num_tokens": 2, "bank_heads": 4}),
        (InverterTask, {"collections": ["a"], "vision_model": "tiny", "inverter_heads": 4}),
        (StylizeTask, {"bank": NO_BANK}),
        (EvaluateTask, {"bank": NO_BANK}),
        (
            ArtworkDataModule,
            {"train_shards": str(tmp_path / "x.tar"), "collections": ["a"], "samples_per_epoch": 8},
        ),  # fmt: skip
        (ContentDataModule, {"content": str(tmp_path)}),
    ]


def numeric_options(cls: type, floats_only: bool = False) -> list[str]:
    """The ``int`` / ``float`` options of ``cls.__init__`` (optional ones included)."""
    names = []
    kinds = ("float",) if floats_only else ("int", "float")
    for name, param in inspect.signature(cls.__init__).parameters.items():
        text = str(param.annotation)
        scalar = "list" not in text and "tuple" not in text and "dict" not in text
        if scalar and any(kind in text for kind in kinds) and "bool" not in text:
            names.append(name)
    return names


def test_the_sweep_finds_the_options_it_must_check(tmp_path):
    # the probe must see the options: without them the test below would pass on nothing
    assert {"lr", "num_tokens", "bank_dropout", "min_lr_ratio"} <= set(
        numeric_options(PromptBankTask)
    )
    assert {"strength", "steps", "eta", "guidance_scale"} <= set(numeric_options(StylizeTask))
    assert {"batch_size", "shuffle_buffer"} <= set(numeric_options(ArtworkDataModule))


@pytest.mark.parametrize("value", [-1, float("nan")])
def test_every_numeric_option_out_of_range_is_refused_naming_it(tmp_path, value):
    # NaN only for float options: the command line gives an int option an int or an error
    unchecked = []
    for cls, arguments in classes_and_arguments(tmp_path):
        for name in numeric_options(cls, floats_only=value != -1):
            if name in NEGATIVE_ALLOWED and value == -1:
                continue
            try:
                cls(**{**arguments, name: value})
            except ArtbankError as err:
                if name not in str(err):
                    unchecked.append(f"{cls.__name__}.{name}={value}: {err}")
            else:
                unchecked.append(f"{cls.__name__}.{name}={value}: accepted")
    assert not unchecked, "\n".join(unchecked)
