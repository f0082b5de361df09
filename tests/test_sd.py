import pytest
import torch
from diffusers import DDPMScheduler

from artbank_pl.sd import PretrainedLoadError, build_tiny_parts, half_dtype, load_parts


def test_tiny_parts_are_frozen_and_identical_across_builds():
    first, second = load_parts("tiny"), load_parts("tiny")
    for a, b in ((first.unet, second.unet), (first.text_encoder, second.text_encoder)):
        assert not a.training
        assert not any(p.requires_grad for p in a.parameters())
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(pa, pb)
    assert first.prediction_type == "epsilon"
    assert len(first.tokenizer) == 49408


def test_tiny_build_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_parts()
    assert torch.equal(torch.rand(3), expected)


def test_local_folder_with_v_prediction(tmp_path):
    parts = build_tiny_parts()
    parts.unet.save_pretrained(tmp_path / "unet")
    parts.vae.save_pretrained(tmp_path / "vae")
    parts.text_encoder.save_pretrained(tmp_path / "text_encoder")
    config = dict(parts.noise_scheduler.config, prediction_type="v_prediction")
    DDPMScheduler.from_config(config).save_pretrained(tmp_path / "scheduler")
    loaded = load_parts(str(tmp_path))
    assert loaded.prediction_type == "v_prediction"
    assert len(loaded.tokenizer) == 49408  # no tokenizer/ folder: the offline one
    for a, b in zip(parts.unet.parameters(), loaded.unet.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in loaded.vae.parameters())


def test_unreachable_hub_id_gives_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedLoadError) as info:
        load_parts("someone/no-such-model-xyz")
    message = str(info.value)
    assert "'someone/no-such-model-xyz'" in message
    assert "local diffusers folder" in message
    assert "\n" not in message


def test_missing_local_folder_is_named():
    with pytest.raises(PretrainedLoadError, match="'./nowhere/sd15': no such folder"):
        load_parts("./nowhere/sd15")


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16), ("32-true", torch.float32)],
)
def test_half_dtype(precision, dtype):
    assert half_dtype(precision) == dtype


@pytest.mark.parametrize(("hidden_act", "pad_id"), [("quick_gelu", 49407), ("gelu", 0)])
def test_a_folder_without_tokenizer_pads_as_its_text_encoder_was_trained(
    tmp_path, hidden_act, pad_id
):
    from transformers import CLIPTextModel

    parts = build_tiny_parts()
    parts.unet.save_pretrained(tmp_path / "unet")
    parts.vae.save_pretrained(tmp_path / "vae")
    config = parts.text_encoder.config
    config.hidden_act = hidden_act
    CLIPTextModel(config).save_pretrained(tmp_path / "text_encoder")  # SD 2.x: OpenCLIP, gelu
    parts.noise_scheduler.save_pretrained(tmp_path / "scheduler")
    tokenizer = load_parts(str(tmp_path)).tokenizer
    ids = tokenizer("a cat", padding="max_length", max_length=8).input_ids
    assert ids[:4] == [49406, 320, 2368, 49407] and ids[4:] == [pad_id] * 4
