"""The windowed SDE of the likelihood agents (MixGRPO): deterministic ODE steps outside a window of trained steps."""

import math

import pytest
import torch
from conftest import tiny_env
from stable_baselines3.common.logger import Logger

from agents import DDPO_IS, make_agent


def _agent(**kwargs):
    agent = DDPO_IS(tiny_env(2), samples_per_epoch=4, batch_size=4, seed=1, **kwargs)
    agent.set_logger(Logger(folder=None, output_formats=[]))
    return agent


def test_steps_outside_the_window_are_the_deterministic_ode_step_and_inside_are_sampled():
    agent = _agent(sde_window=2, skip_first_steps=1)  # 4 steps: trainable 1..3, the window 1, 2
    agent.collect_rollout()
    buf = agent.buffer
    assert list(agent.trainable_steps()) == [1, 2]
    for k in range(agent.num_steps):
        obs = {"latent": buf.latents[:, k], "timestep": buf.timesteps[:, k].float().reshape(-1, 1),
               "prompt_id": buf.prompt_ids.float().reshape(-1, 1)}
        with torch.no_grad():
            ode = agent.policy.step(obs, ode=True)
        taken = buf.latents[:, k + 1]
        if k in (1, 2):
            assert (taken - ode.prev_sample).abs().max() > 1e-2  # sampled: the policy's noise moved it
        else:
            torch.testing.assert_close(taken, ode.prev_sample)
            torch.testing.assert_close(buf.log_probs[:, k], ode.log_prob)  # its log-prob under π_θ, never trained


def test_the_window_slides_one_step_every_n_epochs_and_starts_over_after_the_last_position():
    agent = _agent(sde_window=2, sde_window_shift_every=3)  # 4 steps: positions 0..2
    windows = []
    for epoch in range(10):
        agent.num_epochs = epoch
        windows.append(list(agent.trainable_steps()))
    assert windows == [[0, 1]] * 3 + [[1, 2]] * 3 + [[2, 3]] * 3 + [[0, 1]]


def test_an_update_trains_the_window_steps_only():
    agent = _agent(sde_window=1, skip_first_steps=2)
    agent.collect_rollout()
    steps = torch.cat([s for _, s, _ in agent.micro_batches()])
    assert set(steps.tolist()) == {2} and agent.backward_passes_per_update() == 1
    agent.train()
    assert agent.num_updates == 1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sde_window": 5}, r"sde_window must be an int in \[0, 4\]"),
    ({"sde_window": 3, "skip_last_steps": 2}, r"sde_window must be an int in \[0, 2\]"),
    ({"sde_window_shift_every": 2}, "set sde_window > 0 too"),
    ({"sde_window": 1, "sde_window_shift_every": -1}, "sde_window_shift_every must be an int >= 0"),
])
def test_bad_windows_are_refused_naming_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _agent(**kwargs)


@pytest.mark.slow
def test_windowed_ddpo_is_raises_the_default_models_evaluation_reward_in_four_epochs():
    from agents.job.evaluation import evaluate_policy

    torch.manual_seed(0)
    agent = make_agent("ddpo-is", tiny_env(8, model="default", num_steps=10), samples_per_epoch=16, batch_size=8,
                       learning_rate=7e-3, clip_range=1e-3, sde_window=4, seed=0)
    agent.set_logger(Logger(folder=None, output_formats=[]))
    evaluation = tiny_env(16, model="default", num_steps=10)
    prompts = [f"a handwritten digit {d % 10}" for d in range(16)]
    before = evaluate_policy(agent.policy, evaluation, prompts, seed=123).rewards.mean()
    agent.learn(total_samples=64)
    after = evaluate_policy(agent.policy, evaluation, prompts, seed=123).rewards.mean()
    assert math.isfinite(after) and after > before, (before, after)
