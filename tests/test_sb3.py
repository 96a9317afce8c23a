"""The adapter to stable-baselines3's VecEnv (docs/reliability.md 11)."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import VecCheckNan, VecEnv

from ddpo_env import DDIMSampler
from ddpo_env.sb3 import SB3VecEnv
from tests.conftest import TINY


def sb3_rollout(venv: VecEnv, sampler, num_steps: int):
    """Act as stable-baselines3's collect_rollouts does: clip to the Box, step, keep the unclipped action."""
    obs = venv.reset()
    transitions = []
    for _ in range(num_steps):
        action, _ = sampler(obs)
        clipped = np.clip(action, venv.action_space.low, venv.action_space.high)
        new_obs, rewards, dones, infos = venv.step(clipped)
        transitions.append((obs, action, clipped, rewards, dones, infos))
        obs = new_obs
    return transitions, obs


@pytest.mark.parametrize("autoreset_mode", ["next_step", "same_step"])
def test_same_step_reset_with_terminal_observation_only_for_done_envs(autoreset_mode):
    inner = gym.make_vec("DenoisingDiffusion-v0", num_envs=3, autoreset_mode=autoreset_mode, **TINY)
    venv = SB3VecEnv(inner)
    venv.seed(11)
    sampler = DDIMSampler(inner)
    transitions, last_obs = sb3_rollout(venv, sampler, num_steps=8)  # two whole episodes
    for k, (obs, action, _, rewards, dones, infos) in enumerate(transitions):
        assert isinstance(obs, dict) and obs["latent"].shape == (3, 4, 8, 8) and rewards.dtype == np.float32
        assert len(infos) == 3
        if k % 4 == 3:
            assert dones.all()
            for i, info in enumerate(infos):
                assert np.array_equal(info["terminal_observation"]["latent"], action[i])
                assert info["terminal_observation"]["timestep"][0] == 0
                assert info["image"].shape == (16, 16, 3) and info["TimeLimit.truncated"] is False
                assert "final_obs" not in info
            next_obs = transitions[k + 1][0] if k + 1 < len(transitions) else last_obs
            assert (next_obs["timestep"] == 751).all()  # the returned obs is already the next episode's
        else:
            assert not dones.any()
            assert all("terminal_observation" not in info and "image" not in info for info in infos)
    # the first episode is the seeded one
    expected, _ = gym.make_vec("DenoisingDiffusion-v0", num_envs=3, **TINY).reset(seed=11)
    assert np.array_equal(transitions[0][0]["latent"], expected["latent"])


def test_no_action_is_clipped_over_a_rollout_and_tight_bounds_are_detected():
    inner = gym.make_vec("DenoisingDiffusion-v0", num_envs=3, **TINY)
    venv = SB3VecEnv(inner)
    transitions, _ = sb3_rollout(venv, DDIMSampler(inner), num_steps=12)
    assert all(np.array_equal(action, clipped) for _, action, clipped, *_ in transitions)
    assert venv.num_clipped_actions == 0

    tight = gym.make_vec("DenoisingDiffusion-v0", num_envs=3, latent_bound=0.5, **TINY)
    venv = SB3VecEnv(tight)
    with pytest.warns(RuntimeWarning, match="sit on the action-space bound, as stable-baselines3's clipping"):
        sb3_rollout(venv, DDIMSampler(tight), num_steps=4)
    assert venv.num_clipped_actions > 0


def test_sb3_vec_env_api():
    inner = gym.make_vec("DenoisingDiffusion-v0", num_envs=2, render_mode="rgb_array", **TINY)
    venv = VecCheckNan(SB3VecEnv(inner), raise_exception=True)
    venv.reset()
    assert venv.get_attr("num_steps") == [4, 4]
    assert venv.env_method("prompt_strings", [0], indices=[1]) == [[""]]
    assert venv.env_is_wrapped(gym.Wrapper) == [False, False]
    assert len(venv.get_images()) == 2
    venv.set_options({"prompt": "a cat"})
    obs = venv.reset()
    assert inner.unwrapped.prompt_strings(obs["prompt_id"]) == ["a cat", "a cat"]
    venv.close()


def test_make_agent_on_a_single_env_trains_on_its_vector_env_with_its_reward(capsys):
    """As SB3 wraps a single env in a DummyVecEnv: gym.make's env (reward-wrapped) becomes its own 1-env vector env
    with the reward carried over, and trains as an agent on gym.make_vec(num_envs=1) does."""
    from agents import make_agent
    from rewards import JpegCompressibility, TerminalReward, VectorTerminalReward

    config = {"samples_per_epoch": 2, "batch_size": 1, "seed": 0, "learning_rate": 1e-3}
    single = TerminalReward(gym.make("DenoisingDiffusion-v0", **TINY), JpegCompressibility(upscale=4))
    agent = make_agent("ddpo-is", single, verbose=1, **config)
    assert capsys.readouterr().out.splitlines()[0] == (
        "Wrapping the env in its DenoisingDiffusionVectorEnv (num_envs=1) with "
        "VectorTerminalReward(jpeg_compressibility)")
    assert agent.env.num_envs == 1 and agent.diffusion_env is single.unwrapped.vector
    agent.learn(total_samples=2)
    vector = gym.make_vec("DenoisingDiffusion-v0", num_envs=1, **TINY)
    vector = VectorTerminalReward(vector, JpegCompressibility(upscale=4))
    twin = make_agent("ddpo-is", vector, **config)
    twin.learn(total_samples=2)
    np.testing.assert_array_equal(agent.rollout_rewards, twin.rollout_rewards)
    assert (agent.rollout_rewards < 0).all()  # minus kilobytes: the reward was carried over
    for name, value in agent.policy.trainable_state_dict().items():
        assert torch.equal(value, twin.policy.trainable_state_dict()[name]), name

    capsys.readouterr()
    bare = make_agent("ddpo-is", gym.make("DenoisingDiffusion-v0", **TINY), **config)  # no reward: 0, and no print
    assert bare.env.num_envs == 1 and capsys.readouterr().out == ""
    shifted = gym.wrappers.TransformReward(gym.make("DenoisingDiffusion-v0", **TINY), lambda r: r + 1)
    with pytest.raises(TypeError) as e:
        make_agent("ddpo-is", shifted, **config)
    assert str(e.value) == (
        "the single env is wrapped in TransformReward, which the agent cannot carry over to the vector env it trains "
        "on (only TerminalReward is): build the vector env yourself, gym.make_vec(\"DenoisingDiffusion-v0\", "
        "num_envs=..., ...) with a VectorTerminalReward")
