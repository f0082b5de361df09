import pytest
import torch
import torch.nn.functional as F

from artbank_pl.modules import ImplicitStylePromptBank, SpatialStatisticalSelfAttention
from artbank_pl.modules.ssam import StatisticalAttention


@pytest.mark.parametrize("kind", ["ssam", "self", "none"])
@pytest.mark.parametrize("num_tokens", [1, 4])
def test_bank_shapes_and_every_branch_trains_from_the_second_step(kind, num_tokens):
    torch.manual_seed(0)
    bank = ImplicitStylePromptBank(3, num_tokens, 32, attention=kind, num_heads=4)
    optimizer = torch.optim.SGD(bank.parameters(), lr=0.5)
    for _ in range(2):  # step 1 moves the zero-initialised projection, step 2 reaches the rest
        optimizer.zero_grad()
        out = bank(torch.tensor([2, 0, 2]))
        assert out.shape == (3, num_tokens, 32)
        (out - 1).square().sum().backward()
        optimizer.step()
    assert all(p.grad is not None for p in bank.parameters())
    if num_tokens > 1:  # with one token, attention over tokens is constant: q/k get zero grads
        assert all(p.grad.abs().sum() > 0 for p in bank.parameters())


@pytest.mark.parametrize("kind", ["ssam", "self", "none"])
@pytest.mark.parametrize("dim", [32, 768])
def test_every_bank_mode_starts_exactly_at_the_initializer(kind, dim):
    word = torch.randn(dim) * 0.014  # word-embedding scale
    bank = ImplicitStylePromptBank(2, 4, dim, attention=kind, num_heads=4)
    bank.init_from_embedding(word)
    assert (bank.embeddings() - word).abs().max() == 0


def test_the_three_ssam_branches_train_on_one_scale():
    torch.manual_seed(0)
    dim = 768
    ssam = SpatialStatisticalSelfAttention(dim, 4, num_heads=8)
    torch.nn.init.normal_(ssam.proj.weight, std=dim**-0.5)  # as after some training
    p = torch.randn(1, 4, dim) * 0.014
    rms = {k: v.pow(2).mean().sqrt().item() for k, v in ssam.branches(p).items()}
    assert max(rms.values()) / min(rms.values()) < 20, rms
    ssam(p).square().sum().backward()

    def relative_grad(w):
        return (w.grad.norm() / w.norm()).item()

    rows = relative_grad(ssam.rows.qkv.weight)
    for w in (ssam.statistics.query.weight, ssam.statistics.key.weight, ssam.columns.qkv.weight):
        assert 0.05 < relative_grad(w) / rows < 20


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
        p @ module.value.weight.T,  # V reads the branch input X = LN(P), as R and C do
    )
    a = torch.softmax(q @ k.transpose(1, 2) / 8**0.5, dim=-1)
    mean = a @ v
    std = torch.sqrt(F.relu(a @ (v * v) - mean**2) + 1e-5)
    torch.testing.assert_close(module(p), std * normed + mean, rtol=1e-5, atol=1e-5)


def test_ssam_is_the_identity_at_start_and_sums_three_branches():
    torch.manual_seed(0)
    p = torch.randn(2, 4, 16) * 0.014
    for branches in ("ssam", "self"):
        start = SpatialStatisticalSelfAttention(16, 4, num_heads=2, branches=branches)
        assert torch.equal(start(p), p)
    full = SpatialStatisticalSelfAttention(16, 4, num_heads=2).eval()
    torch.nn.init.normal_(full.proj.weight)
    x = full.norm(p)
    mixed = full.rows(x) + full.columns(x) + full.statistics(x)
    rms = p.pow(2).mean(-1, keepdim=True).sqrt()
    torch.testing.assert_close(full(p), p + rms * full.proj(mixed))


def test_bank_rejects_bad_options():
    with pytest.raises(ValueError, match="bank_heads=5"):
        ImplicitStylePromptBank(2, 2, 32, num_heads=5)
    with pytest.raises(ValueError, match="bank_attention"):
        ImplicitStylePromptBank(2, 2, 32, attention="cross")
