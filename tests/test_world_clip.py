"""The world's CLIP image tower: it knows the world's styles, and its measures can fail."""

import json

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from artbank_pl.sd import build_tiny_parts
from artbank_pl.vision import load_vision_encoder
from artbank_pl.world import model_dir
from artbank_pl.world.clip import VISION_CONFIG, evaluate_world_clip, pairwise_auc


def brute_force_auc(positives, negatives):
    wins = sum((p > n) + 0.5 * (p == n) for p in positives.tolist() for n in negatives.tolist())
    return wins / (len(positives) * len(negatives))


def test_pairwise_auc_is_the_share_of_ordered_pairs_with_ties_as_half():
    gen = torch.Generator().manual_seed(0)
    positives = torch.randint(0, 6, (40,), generator=gen).float()  # many ties
    negatives = torch.randint(0, 5, (30,), generator=gen).float()
    assert pairwise_auc(positives, negatives) == pytest.approx(
        brute_force_auc(positives, negatives)
    )
    assert pairwise_auc(torch.ones(3) * 2, torch.ones(4)) == 1.0
    assert pairwise_auc(torch.ones(3), torch.ones(4)) == 0.5


@pytest.fixture(scope="module")
def text_side():
    parts = build_tiny_parts()
    return parts.text_encoder, parts.tokenizer


def test_a_random_image_tower_fails_the_measures(text_side):
    torch.manual_seed(0)
    random_tower = CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION_CONFIG)).eval()
    figures = evaluate_world_clip(random_tower, *text_side, count=512)
    assert figures["caption_retrieval"] < 0.15  # 36 captions: chance is 0.03
    assert figures["style_retrieval"] < 0.4


def test_the_shipped_tower_loads_as_world_and_knows_held_out_scenes(text_side):
    tower = load_vision_encoder("world")
    assert not any(p.requires_grad for p in tower.parameters())
    figures = evaluate_world_clip(tower, *text_side, count=512)
    assert figures["style_retrieval"] >= 0.9
    assert figures["caption_retrieval"] >= 0.8
    assert figures["same_style_auc"] >= 0.9
    recorded = json.loads((model_dir() / "image_encoder" / "world_clip.json").read_text())
    assert recorded["held_out"]["style_retrieval"] >= 0.9
