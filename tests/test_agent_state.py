"""The agent owns its state: state_dict / load_state_dict, stable-baselines3's save / load, CheckpointCallback files
that load, learn(total_timesteps) in SB3's units and SB3's evaluate_policy."""

import numpy as np
import pytest
from stable_baselines3.common.callbacks import CheckpointCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecMonitor

from agents import DDPO_IS, RWR, DiffusionAgent, make_agent
from ddpo_env.sb3 import SB3VecEnv
from tests.conftest import tiny_env
from tests.test_checkpoints import assert_trees_equal

SMALL = {"samples_per_epoch": 6, "batch_size": 3, "seed": 0, "lora_rank": 4, "learning_rate": 1e-3}


def seeded_action(agent, seed=123):
    """An action of the policy on a fixed observation with fixed noise."""
    venv = SB3VecEnv(tiny_env())
    venv.seed(7)
    obs = venv.reset()
    agent.policy.noise_generator.manual_seed(seed)
    action, _ = agent.predict(obs, deterministic=False)
    return action


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The module's baseline, trained once: DDPO-IS for 2 epochs (48 env steps: two updates, so the optimizer has
    moments), with SB3's CheckpointCallback saving every 4 calls. Tests read it and never train it further."""
    folder = tmp_path_factory.mktemp("sb3-checkpoints")
    agent = make_agent("ddpo-is", tiny_env(), **SMALL)
    agent.learn(total_timesteps=48, callback=CheckpointCallback(save_freq=4, save_path=str(folder)))
    return agent, folder


def test_sb3_save_then_load_round_trips_exactly_and_the_file_is_small(trained, tmp_path):
    agent, _ = trained
    agent.save(tmp_path / "agent")  # SB3 adds .zip
    path = tmp_path / "agent.zip"
    loaded = DDPO_IS.load(path, env=tiny_env())
    assert type(loaded) is DDPO_IS and loaded.config == agent.config
    assert_trees_equal(agent.policy.trainable_state_dict(), loaded.policy.trainable_state_dict(), "weights")
    assert_trees_equal(agent.policy.optimizer.state_dict(), loaded.policy.optimizer.state_dict(), "optimizer")
    assert (loaded.num_timesteps, loaded.num_epochs) == (agent.num_timesteps, agent.num_epochs) == (48, 2)
    np.testing.assert_array_equal(seeded_action(agent), seeded_action(loaded))
    # the size of what was trained: weights plus Adam's two moments, with no pickled env or model in it
    weights = sum(v.numel() * v.element_size() for v in agent.policy.trainable_state_dict().values())
    assert path.stat().st_size < 3 * (3 * weights)
    # the base class loads whatever agent the file holds; another class refuses it and names the right one
    assert type(DiffusionAgent.load(path, env=tiny_env())) is DDPO_IS
    with pytest.raises(ValueError, match=r"holds a DDPO_IS, not a RWR: load it with DDPO_IS\.load"):
        RWR.load(path, env=tiny_env())
    with pytest.raises(ValueError, match=r"needs the env the agent trains on .*gym.make_vec"):
        DDPO_IS.load(path)
    with pytest.raises(ValueError) as e:
        DDPO_IS.load(path, env=tiny_env(num_steps=5))
    assert str(e.value) == (f"{path} was saved with a different env: {{'num_steps': (4, 5)}} (saved, here): build the "
                            "env with the saved run's settings")


def test_state_dict_round_trip_continues_training_identically():
    agent = make_agent("ddpo-is", tiny_env(), **SMALL)
    agent.learn(total_samples=6)
    state = agent.state_dict()
    twin = make_agent("ddpo-is", tiny_env(), **SMALL)
    twin.load_state_dict(state)
    agent.learn(total_samples=6, reset_num_timesteps=False)
    twin.learn(total_samples=6, reset_num_timesteps=False)
    assert_trees_equal(agent.policy.trainable_state_dict(), twin.policy.trainable_state_dict(), "weights")


def test_learn_counts_total_timesteps_as_env_steps(trained):
    agent = make_agent("ddpo-is", tiny_env(), **SMALL)  # 6 episodes × 4 steps = 24 timesteps per epoch
    agent.learn(total_timesteps=25)  # rounded up to whole rollouts: 2 epochs
    assert (agent.num_epochs, agent.num_timesteps) == (2, 48)
    # the same training as the baseline's 48 steps (whose checkpoint callback changed nothing)
    assert_trees_equal(agent.policy.trainable_state_dict(), trained[0].policy.trainable_state_dict(), "weights")
    agent.learn(total_samples=6)
    assert agent.num_epochs == 3
    with pytest.raises(ValueError, match="not both or neither"):
        agent.learn(total_timesteps=24, total_samples=6)


def test_checkpoint_callback_files_load(trained):
    _, folder = trained
    files = sorted(folder.glob("rl_model_*_steps.zip"), key=lambda p: int(p.stem.split("_")[2]))
    assert len(files) >= 2
    for file in files:
        loaded = DDPO_IS.load(file, env=tiny_env())
        assert loaded.num_timesteps == int(file.stem.split("_")[2])


def test_evaluate_policy_runs_on_the_reward_wrapped_env(trained):
    agent, _ = trained
    # any reward-wrapped vector env, through the adapter every agent uses (and SB3's Monitor, as SB3 asks)
    mean, std = evaluate_policy(agent, VecMonitor(SB3VecEnv(tiny_env())), n_eval_episodes=3)
    assert np.isfinite(mean) and np.isfinite(std) and mean < 0  # JPEG compressibility: minus kilobytes
    rewards, lengths = evaluate_policy(agent, agent.get_env(), n_eval_episodes=3, warn=False,
                                       return_episode_rewards=True)  # the agent's own env
    assert lengths == [4, 4, 4] and all(r < 0 for r in rewards)


def test_make_agent_on_an_env_it_cannot_use_says_what_to_pass():
    import gymnasium as gym

    sync = gym.vector.SyncVectorEnv([lambda: gym.make("DenoisingDiffusion-v0", model="tiny", num_steps=4)])
    with pytest.raises(TypeError, match=r"gym.make_vec\(\"DenoisingDiffusion-v0\""):
        make_agent("ddpo-is", sync, **SMALL)
