import math

import pytest
import torch
from diffusers import DDPMScheduler

from artbank_pl import diffusion
from artbank_pl.optim import warmup_schedule_factor
from artbank_pl.sd import tiny_config


@pytest.fixture()
def scheduler():
    return DDPMScheduler.from_config(tiny_config("scheduler"))


def test_add_noise_and_v_target_match_diffusers(scheduler):
    latents, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    abar = scheduler.alphas_cumprod[t].float()
    expected = scheduler.add_noise(latents, noise, t)
    torch.testing.assert_close(diffusion.add_noise(latents, noise, abar), expected)
    v = diffusion.training_target("v_prediction", latents, noise, abar)
    torch.testing.assert_close(v, scheduler.get_velocity(latents, noise, t))
    assert diffusion.training_target("epsilon", latents, noise, abar) is noise
    with pytest.raises(ValueError, match="'flow'"):
        diffusion.training_target("flow", latents, noise, abar)


def test_min_snr_weights_by_hand():
    abar = torch.tensor([0.5, 0.9, 0.01])  # snr = 1, 9, 1/99
    snr = torch.tensor([1.0, 9.0, 1 / 99])
    gamma = 5.0
    eps = diffusion.min_snr_weights(abar, gamma, "epsilon")
    torch.testing.assert_close(eps, torch.tensor([1.0, 5 / 9, 1.0]))
    v = diffusion.min_snr_weights(abar, gamma, "v_prediction")
    torch.testing.assert_close(v, torch.tensor([0.5, 0.5, snr[2] / (snr[2] + 1)]))


def test_warmup_cosine_schedule():
    assert warmup_schedule_factor(0, 10, 110, "cosine") == pytest.approx(0.1)
    assert warmup_schedule_factor(9, 10, 110, "cosine") == pytest.approx(1.0)
    assert warmup_schedule_factor(10, 10, 110, "cosine") == pytest.approx(1.0)
    assert warmup_schedule_factor(60, 10, 110, "cosine") == pytest.approx(0.5)
    assert warmup_schedule_factor(110, 10, 110, "cosine", 0.1) == pytest.approx(0.1)
    assert warmup_schedule_factor(60, 10, 110, "constant") == 1.0
    assert warmup_schedule_factor(35, 10, 110, "cosine") == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.25))
    )


def test_min_snr_weights_at_zero_snr_are_finite():
    abar = torch.tensor([0.0, 0.5])
    torch.testing.assert_close(
        diffusion.min_snr_weights(abar, 5.0, "epsilon"), torch.tensor([1.0, 1.0])
    )
    assert torch.isfinite(diffusion.min_snr_weights(abar, 5.0, "v_prediction")).all()


def test_eps_from_output_inverts_each_prediction_type(scheduler):
    z0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for abar in (0.0, 0.3, 0.9):
        a = torch.tensor([abar, abar])
        z = diffusion.add_noise(z0, eps, a)
        for kind in ("epsilon", "v_prediction", "sample"):
            target = diffusion.training_target(kind, z0, eps, a)
            torch.testing.assert_close(diffusion.eps_from_output(target, z, abar, kind), eps)
