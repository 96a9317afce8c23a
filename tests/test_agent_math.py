"""Losses and advantage normalisation on hand-computed numbers."""

import numpy as np
import pytest
import torch

from agents.ddpo import ppo_clip_loss
from agents.reinforce import reinforce_loss
from agents.rwr import rwr_weights, sparse_rwr_weights
from agents.stat_tracking import EPS, PerPromptStatTracker


def test_ppo_clip_loss_hand_computed():
    loss, ratio = ppo_clip_loss(torch.zeros(1), torch.zeros(1), torch.tensor([-1.0]), 1e-4)
    assert loss.item() == 1.0 and ratio.item() == 1.0
    # A = 2, ratio = e^0.5 > 1 + ε: max(−2·e^0.5, −2·(1+ε)) = −2(1+ε), the clipped branch: no gradient.
    log_prob = torch.tensor([0.5], requires_grad=True)
    loss, _ = ppo_clip_loss(log_prob, torch.zeros(1), torch.tensor([2.0]), 0.2)
    assert loss.item() == pytest.approx(-2 * 1.2)
    loss.backward()
    assert log_prob.grad.item() == 0.0
    # A = −1 and ratio above the clip: the unclipped branch is larger and keeps its gradient (pessimistic bound)
    log_prob = torch.tensor([0.5], requires_grad=True)
    loss, _ = ppo_clip_loss(log_prob, torch.zeros(1), torch.tensor([-1.0]), 0.2)
    loss.backward()
    assert loss.item() == pytest.approx(np.exp(0.5)) and log_prob.grad.item() == pytest.approx(np.exp(0.5))


def test_reinforce_gradient_is_minus_advantage_times_hand_derived_grad_log_prob():
    torch.manual_seed(0)
    theta = torch.randn(3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 3, dtype=torch.float64)
    advantages = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    # a Gaussian log-density with unit variance, mean-reduced over its D = 3 dimensions like the policy's
    log_prob = (-0.5 * (x - theta) ** 2 - 0.5 * np.log(2 * np.pi)).mean(dim=1)
    reinforce_loss(log_prob, advantages).backward()
    # by hand: ∇θ log π_i = (x_i − θ) / D, so ∇θ of −(1/N) Σ_i Â_i log π_i is −(1/N) Σ_i Â_i (x_i − θ) / D
    expected = -(advantages[:, None] * (x - theta.detach())).sum(0) / (len(x) * x.shape[1])
    torch.testing.assert_close(theta.grad, expected, rtol=1e-12, atol=0)
    # the sign matters: a sample with a positive advantage pulls θ towards itself (gradient descent on the loss)
    one = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    reinforce_loss((-0.5 * (torch.ones(1, 3, dtype=torch.float64) - one) ** 2).mean(dim=1),
                   torch.ones(1, dtype=torch.float64)).backward()
    assert (one.grad < 0).all()  # θ − lr·grad moves towards x = 1


def test_rwr_weights_sum_to_n_are_shift_invariant_and_uniform_at_high_temperature():
    r = torch.tensor([0.0, 1.0, 2.0, -1.0], dtype=torch.float64)
    w = rwr_weights(r, 0.2)
    assert w.sum().item() == pytest.approx(4.0)
    torch.testing.assert_close(rwr_weights(r + 100.0, 0.2), w)
    torch.testing.assert_close(rwr_weights(r, 1e9), torch.ones(4, dtype=torch.float64))
    expected = 4 * np.exp(r.numpy() / 0.2) / np.exp(r.numpy() / 0.2).sum()
    np.testing.assert_allclose(w.numpy(), expected)


def test_sparse_rwr_keeps_exactly_the_top_fraction():
    r = torch.arange(20, dtype=torch.float64).flip(0)  # 19, 18, ..., 0
    w = sparse_rwr_weights(r, 0.1)
    assert torch.equal(torch.nonzero(w).flatten(), torch.tensor([0, 1]))
    assert w.sum().item() == pytest.approx(20.0) and w[0].item() == 10.0
    assert (sparse_rwr_weights(r, 1.0) == 1.0).all()
    assert torch.count_nonzero(sparse_rwr_weights(torch.zeros(7), 0.01)) == 1


def test_per_prompt_tracker_hand_computed_with_batch_fallback():
    tracker = PerPromptStatTracker(buffer_size=4, min_count=3)
    prompts = ["a", "a", "a", "b"]
    rewards = np.array([1.0, 2.0, 3.0, 10.0])
    adv = tracker.update(prompts, rewards)
    # "a" has 3 rewards ≥ min_count: its own mean 2, std √(2/3); "b" has 1 < 3: the batch's mean 4, std √12.5
    np.testing.assert_allclose(adv[:3], (rewards[:3] - 2.0) / (np.sqrt(2 / 3) + EPS))
    np.testing.assert_allclose(adv[3], (10.0 - 4.0) / (np.sqrt(12.5) + EPS))
    # the buffer keeps the last 4 rewards of "a"
    adv = tracker.update(["a", "a"], np.array([5.0, 5.0]))
    buf = np.array([2.0, 3.0, 5.0, 5.0])
    np.testing.assert_allclose(adv, (5.0 - buf.mean()) / (buf.std() + EPS))
    state = tracker.state_dict()
    restored = PerPromptStatTracker()
    restored.load_state_dict(state)
    assert restored.state_dict() == state


def test_tracker_never_divides_by_zero():
    tracker = PerPromptStatTracker(buffer_size=4, min_count=1)
    adv = tracker.update(["a", "a"], np.array([3.0, 3.0]))
    assert np.array_equal(adv, np.zeros(2))


def test_terminal_reward_broadcast_to_every_step():
    """Each step of an episode trains with the episode's advantage: the buffer indexes advantages by sample."""
    from agents.buffer import TrajectoryBuffer

    buf = TrajectoryBuffer(3, 4, (1, 2, 2), torch.device("cpu"))
    buf.set_advantages(np.array([0.5, -1.0, 2.0]))
    samples = torch.tensor([0, 0, 0, 0, 2, 2])
    steps = torch.tensor([0, 1, 2, 3, 0, 3])
    assert buf.transitions(samples, steps).advantages.tolist() == [0.5, 0.5, 0.5, 0.5, 2.0, 2.0]


@pytest.mark.parametrize("step_weights", ["uniform", "sensitivity"])
def test_ddpo_is_and_ddpo_sf_take_the_same_gradient_on_the_same_batch_before_the_first_update(step_weights):
    """At ratio 1 PPO-clip's gradient is −Â·∇log π, REINFORCE's: through each agent's own compute_loss (where a sign
    or an advantage could be wired wrongly), on identical rollouts (same seed, same env); also with step weights."""
    from conftest import tiny_env
    from stable_baselines3.common.logger import Logger

    from agents import DDPO_IS, DDPO_SF

    grads = []
    for cls in (DDPO_IS, DDPO_SF):
        agent = cls(tiny_env(2), samples_per_epoch=4, batch_size=4, seed=3, step_weights=step_weights)
        agent.set_logger(Logger(folder=None, output_formats=[]))
        agent.collect_rollout()
        assert agent.buffer.advantages.abs().sum() > 0
        samples, steps = torch.arange(4).repeat(4), torch.arange(4).repeat_interleave(4)  # every transition
        params = agent.policy.trainable_parameters()
        loss, _ = agent.compute_loss(samples, steps)
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
        if cls is DDPO_IS:
            rollout = agent.buffer.latents.clone()
        else:
            assert torch.equal(agent.buffer.latents, rollout)  # the same rollout
    assert grads[0].norm() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-9)


def test_sensitivity_weights_even_out_the_steps_and_keep_the_median_step_at_one():
    from agents.step_weights import sensitivity_weights

    s = np.array([0.5, 1.0, 2.0, 8.0, 100.0])
    w = sensitivity_weights(s, range(0, 4))  # the last step is not trained: it takes no part in the median
    np.testing.assert_allclose(w * s, np.full(5, 1.5))  # median of 0.5, 1, 2, 8
    np.testing.assert_allclose(w[:4], [3.0, 1.5, 0.75, 0.1875])


@pytest.mark.parametrize("agent_name", ["ddpo-is", "ddpo-sf"])
def test_sensitivity_step_weights_scale_each_steps_gradient_by_its_weight(agent_name):
    """Step k's gradient with step_weights='sensitivity' is w_k times the uniform one (before the first update, ratio
    1), with w_k = median s / s_k from the env's schedule; and the weights bring the steps' sensitivities together."""
    from conftest import tiny_env
    from stable_baselines3.common.logger import Logger

    from agents import AGENTS
    from agents.step_stats import step_gradient
    from ddpo_env.conditioning import schedule_conditioning

    grads = {}
    for kind in ("uniform", "sensitivity"):
        agent = AGENTS[agent_name](tiny_env(2), samples_per_epoch=4, batch_size=4, seed=5, step_weights=kind)
        agent.set_logger(Logger(folder=None, output_formats=[]))
        agent.collect_rollout()
        params = agent.policy.trainable_parameters()
        grads[kind] = {k: step_gradient(agent, torch.arange(4), k, params) for k in agent.trainable_steps()}
    s = schedule_conditioning(agent.diffusion_env.schedule).sensitivity
    w = np.median(s) / s
    assert w.max() / w.min() > 1.5  # the tiny schedule's steps differ: the test can tell the weights apart
    for k, g in grads["uniform"].items():
        assert g.norm() > 0
        scale = float(g.abs().max())
        torch.testing.assert_close(grads["sensitivity"][k], float(w[k]) * g, rtol=1e-4, atol=1e-5 * scale)


def test_step_weights_are_checked_and_only_offered_to_the_likelihood_agents():
    from agents.config import AWMConfig, DDPOISConfig

    with pytest.raises(ValueError, match=r"must be one of \['uniform', 'sensitivity', 'gradient'\], got 'noise'"):
        DDPOISConfig(step_weights="noise").validate(1, 4)
    with pytest.raises(TypeError):
        AWMConfig(step_weights="sensitivity")


def test_win_rates_count_the_wins_within_each_group_with_ties_as_half():
    from agents.advantages import win_rates

    prompts = ["a", "a", "a", "a", "b", "b", "c"]
    rewards = np.array([0.3, 0.9, 0.3, 0.1, 1.0, 1.0, 5.0])
    # a: 0.3 beats 0.1 and ties 0.3 -> 1.5/3; 0.9 beats all -> 1; 0.1 beats none -> 0; b: a tie; c: alone
    np.testing.assert_allclose(win_rates(prompts, rewards), [0.5, 1.0, 0.5, 0.0, 0.5, 0.5, 0.5])


def test_win_rate_advantages_depend_on_the_order_within_a_group_only():
    from agents.advantages import group_advantages

    prompts = ["a"] * 4 + ["b"] * 4
    rewards = np.array([0.50, 0.501, 0.2, 0.9, 1.0, 1.0, 1.0, 1.0])
    by_rank = group_advantages(prompts, rewards, reward="win_rate")
    monotone = group_advantages(prompts, np.exp(10 * rewards), reward="win_rate")  # same order, other gaps
    np.testing.assert_allclose(by_rank.advantages, monotone.advantages)
    np.testing.assert_allclose(by_rank.advantages[:4], (np.array([1, 2, 0, 3]) - 1.5) / np.std([0, 1, 2, 3]),
                               rtol=1e-3)  # the std gets EPS
    assert by_rank.zero_std_groups == 1 and (by_rank.advantages[4:] == 0).all()
    # the raw rewards' advantages weigh the 0.001 gap by the group's std instead
    raw = group_advantages(prompts, rewards).advantages
    assert abs(raw[1] - raw[0]) < 0.01 < by_rank.advantages[1] - by_rank.advantages[0]


def test_group_reward_is_checked_and_needs_group_advantages():
    from agents.config import DDPOISConfig

    with pytest.raises(ValueError, match=r"group_reward must be one of \['reward', 'win_rate'\], got 'rank'"):
        DDPOISConfig(group_advantages=True, group_reward="rank")
    with pytest.raises(ValueError, match="set group_advantages=True too"):
        DDPOISConfig(group_reward="win_rate").validate(1, 4)


def test_gradient_step_weights_even_out_the_measured_step_gradients_and_are_kept_in_checkpoints():
    from conftest import tiny_env
    from stable_baselines3.common.logger import Logger

    from agents import DDPO_SF
    from agents.step_stats import step_gradient

    def agent():
        a = DDPO_SF(tiny_env(2), samples_per_epoch=4, batch_size=2, seed=2, step_weights="gradient")
        a.set_logger(Logger(folder=None, output_formats=[]))
        return a

    first = agent()
    first.collect_rollout()
    params, micro_batch = first.policy.trainable_parameters(), torch.arange(2)
    uniform = [float(step_gradient(first, micro_batch, k, params).norm()) for k in range(4)]
    assert max(uniform) / min(uniform) > 1.5  # the steps differ: the test can tell
    first.train()  # measures the weights before the update, on the rollout's first micro-batch
    w = first._step_weights.cpu().numpy()
    np.testing.assert_allclose(w * np.array(uniform), np.full(4, np.median(uniform)), rtol=1e-4)
    second = agent()
    second.load_state_dict(first.state_dict())
    torch.testing.assert_close(second._step_weights, first._step_weights)


def test_gradient_step_weights_refuse_a_moving_sde_window():
    from agents.config import DDPOISConfig

    with pytest.raises(ValueError, match="use step_weights='sensitivity' or 'uniform' with sde_window"):
        DDPOISConfig(step_weights="gradient", sde_window=2).validate(1, 4)
