"""AWM and DiffusionNFT: their losses on hand-computed numbers, the schedules' noising at the sampler's steps and its
inverse, and each agent raising the default model's fixed-seed evaluation reward in a short run."""

import math

import pytest
import torch
from conftest import tiny_env
from stable_baselines3.common.logger import Logger

from agents import make_agent
from agents.awm import awm_log_likelihood, awm_loss
from agents.nft import implicit_policies, nft_loss, optimality
from ddpo_env.backends import load_backend
from ddpo_env.schedule import make_schedule


def test_awm_log_likelihood_and_loss_hand_computed():
    ell, w = torch.tensor([0.16, 1.0]), torch.tensor([0.5, 1.0])
    expected = [-0.5 * ((0.16 + 1e-10) ** 0.25 - 1e-10**0.25) / 0.25, -((1 + 1e-10) ** 0.25 - 1e-10**0.25) / 0.25]
    torch.testing.assert_close(awm_log_likelihood(ell, w, 0.25), torch.tensor(expected))
    torch.testing.assert_close(awm_log_likelihood(ell, w, 1.0), -w * ell)  # p = 1: the weighted squared error
    ell.requires_grad_(True)
    awm_loss(ell, w, torch.tensor([1.0, -1.0]), 1.0).backward()
    # a good sample's error is pushed down, a bad one's up: ∂L/∂ℓ = Â·w/N
    torch.testing.assert_close(ell.grad, torch.tensor([0.25, -0.5]))


def test_nft_optimality_implicit_policies_and_loss_hand_computed():
    torch.testing.assert_close(optimality(torch.tensor([-10.0, -2.5, 0.0, 5.0]), 5.0),
                               torch.tensor([0.0, 0.25, 0.5, 1.0]))
    positive, negative = implicit_policies(torch.tensor(2.0), torch.tensor(1.0), 0.5)
    assert (float(positive), float(negative)) == (1.5, 0.5)
    x0 = torch.zeros(1, 2)
    # L⁺ = mean([1, 9]) / mean([1, 3]) = 2.5, L⁻ = 4 / 2 = 2; (0.25·2.5 + 0.75·2) / 0.5 = 4.25
    loss = nft_loss(torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0, 2.0]]), x0, torch.tensor([0.25]), 0.5)
    torch.testing.assert_close(loss, torch.tensor([4.25]))


@pytest.mark.parametrize("r", [1.0, 0.0])
def test_nft_pulls_the_network_towards_good_samples_and_away_from_bad_ones(r):
    old, x0 = torch.tensor([[1.0]]), torch.tensor([[0.0]])  # x̂₀ = f here; the old policy predicts 1, the sample is 0
    f = torch.tensor([[1.0]], requires_grad=True)
    positive, negative = implicit_policies(f, old, 1.0)
    nft_loss(positive, negative, x0, torch.tensor([r]), 1.0).sum().backward()
    assert (f.grad.item() > 0) == (r == 1.0)  # descent moves f towards x0 for a good sample, away for a bad one


@pytest.mark.parametrize(("model", "prediction"), [("tiny", "epsilon"), ("tiny", "v_prediction"),
                                                   ("tiny", "sample"), ("tiny-sd3", None)])
def test_noising_at_the_samplers_steps_is_undone_by_the_target(model, prediction):
    config = dict(load_backend(model).scheduler_config)
    if prediction:
        config["prediction_type"] = prediction
    schedule = make_schedule(config, 4, None)
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 2, 2, generator=generator), torch.randn(4, 3, 2, 2, generator=generator)
    steps = torch.tensor([0, 1, 2, 3])
    x_t, timesteps, target, level = schedule.forward_noise(x0, steps, noise)
    torch.testing.assert_close(schedule.original_sample(target, x_t, steps), x0, rtol=1e-4, atol=1e-4)
    assert timesteps.tolist() == schedule.model_timesteps(schedule.timesteps).tolist()
    assert bool((level[:-1] > level[1:]).all())  # noisier first


@pytest.mark.slow
@pytest.mark.parametrize("name", ["awm", "diffusion-nft"])
def test_each_new_agent_raises_the_default_models_evaluation_reward_in_four_epochs(name):
    from agents.job.evaluation import evaluate_policy

    torch.manual_seed(0)
    agent = make_agent(name, tiny_env(8, model="default", num_steps=10), samples_per_epoch=16, batch_size=8,
                       learning_rate=7e-3, seed=0)
    agent.set_logger(Logger(folder=None, output_formats=[]))
    evaluation = tiny_env(16, model="default", num_steps=10)
    prompts = [f"a handwritten digit {d % 10}" for d in range(16)]
    before = evaluate_policy(agent.policy, evaluation, prompts, seed=123).rewards.mean()
    agent.learn(total_samples=64)
    after = evaluate_policy(agent.policy, evaluation, prompts, seed=123).rewards.mean()
    assert math.isfinite(after) and after > before, (before, after)
