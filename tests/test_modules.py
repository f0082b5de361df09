import pytest
import torch
import torch.nn.functional as F

from artbank_pl.modules import ImplicitStylePromptBank, SpatialStatisticalSelfAttention
from artbank_pl.modules.ssam import StatisticalAttention


@pytest.mark.parametrize("kind", ["ssam", "self", "none"])
@pytest.mark.parametrize("num_tokens", [1, 4])
def test_bank_shapes_and_gradients(kind, num_tokens):
    bank = ImplicitStylePromptBank(3, num_tokens, 32, attention=kind, num_heads=4)
    out = bank(torch.tensor([2, 0, 2]))
    assert out.shape == (3, num_tokens, 32)
    out.square().sum().backward()
    assert all(p.grad is not None for p in bank.parameters())
    if num_tokens > 1:  # with one token, attention over tokens is constant: q/k get zero grads
        assert all(p.grad.abs().sum() > 0 for p in bank.parameters())


def test_none_is_the_raw_matrix_and_samples_are_batch_independent():
    bank = ImplicitStylePromptBank(3, 2, 32, attention="none")
    torch.testing.assert_close(bank(torch.tensor([1])), bank.prompts[1:2])
    ssam = ImplicitStylePromptBank(3, 2, 32, attention="ssam", num_heads=4).eval()
    together = ssam(torch.tensor([0, 1, 2, 1]))
    alone = torch.cat([ssam(torch.tensor([i])) for i in (0, 1, 2, 1)])
    torch.testing.assert_close(together, alone)


def test_statistical_branch_matches_adaattn_equations():
    torch.manual_seed(0)
    module = StatisticalAttention(8)
    p = torch.randn(2, 3, 8)
    normed = (p - p.mean(-1, keepdim=True)) / torch.sqrt(
        p.var(-1, unbiased=False, keepdim=True) + 1e-5
    )
    q, k, v = (
        normed @ module.query.weight.T,
        normed @ module.key.weight.T,
        p @ module.value.weight.T,
    )
    a = torch.softmax(q @ k.transpose(1, 2) / 8**0.5, dim=-1)
    mean = a @ v
    std = torch.sqrt(F.relu(a @ (v * v) - mean**2) + 1e-5)
    torch.testing.assert_close(module(p), std * normed + mean, rtol=1e-5, atol=1e-5)


def test_ssam_starts_near_the_prompts_and_sums_three_branches():
    torch.manual_seed(0)
    ssam = SpatialStatisticalSelfAttention(16, 4, num_heads=2, layer_scale_init=0.0)
    p = torch.randn(2, 4, 16)
    torch.testing.assert_close(ssam(p), p)  # gamma = 0: the identity
    full = SpatialStatisticalSelfAttention(16, 4, num_heads=2).eval()
    x = full.norm(p)
    mixed = full.rows(x) + full.columns(x) + full.statistics(p)
    torch.testing.assert_close(full(p), p + full.gamma * full.proj(mixed))


def test_bank_rejects_bad_options():
    with pytest.raises(ValueError, match="bank_heads=5"):
        ImplicitStylePromptBank(2, 2, 32, num_heads=5)
    with pytest.raises(ValueError, match="bank_attention"):
        ImplicitStylePromptBank(2, 2, 32, attention="cross")
