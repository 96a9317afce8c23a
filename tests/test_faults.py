"""Faults during training (docs/reliability.md 17 and issue #8): a NaN/Inf from a reward, a latent, a log-prob or a
gradient never reaches the weights, and the error names its source; a reward that raises mid-rollout leaves the
last checkpoint intact and names the reward. (SIGKILL during training and during a checkpoint write, then resume:
tests/test_checkpoints.py.)"""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.logger import Logger

from agents import make_agent
from agents.job.callbacks import CheckpointEvery
from agents.job.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from rewards import RewardError, from_callable
from tests.conftest import TINY, Recorder, tiny_env

SMALL = {"samples_per_epoch": 6, "batch_size": 3, "seed": 0, "learning_rate": 1e-3}


def agent_on(env, name="ddpo-is", **overrides):
    agent = make_agent(name, env, **{**SMALL, **overrides})
    recorder = Recorder()
    agent.set_logger(Logger(folder=None, output_formats=[recorder]))
    return agent, recorder


def snapshot(agent) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in agent.policy.trainable_state_dict().items()}


def assert_unchanged(agent, before) -> None:
    assert all(torch.equal(before[k], v) for k, v in agent.policy.trainable_state_dict().items())


def corrupt_sampling(agent, field: str, sample: int, on_call: int) -> None:
    """At the ``on_call``-th sampling step, the policy's ``field`` ("log_prob" or "prev_sample") of one sample
    is NaN (scoring stored actions at train time is left alone)."""
    real, calls = agent.policy.step, {"n": 0}

    def step(obs, actions=None, deterministic=False):
        out = real(obs, actions, deterministic)
        if actions is None:
            calls["n"] += 1
            if calls["n"] == on_call:
                value = getattr(out, field).clone()
                value[sample] = math.nan
                out = out._replace(**{field: value})
        return out

    agent.policy.step = step


def test_non_finite_log_prob_refuses_the_update_and_names_it():
    agent, _ = agent_on(tiny_env())
    corrupt_sampling(agent, "log_prob", sample=1, on_call=2)
    before = snapshot(agent)
    with pytest.raises(FloatingPointError) as e:
        agent.learn(total_samples=6)
    assert str(e.value) == "non-finite log-prob in rollout samples [1]: the update is refused"
    assert_unchanged(agent, before)


def test_non_finite_latent_is_refused_by_the_env_before_it_is_stored():
    agent, _ = agent_on(tiny_env())
    corrupt_sampling(agent, "prev_sample", sample=2, on_call=3)
    before = snapshot(agent)
    with pytest.raises(ValueError, match=r"actions contain NaN or Inf in env\(s\) \[2\]: the policy produced a "
                                         r"non-finite latent"):
        agent.learn(total_samples=6)
    assert_unchanged(agent, before)


def test_non_finite_gradient_skips_the_update_counts_it_and_keeps_the_weights():
    agent, recorder = agent_on(tiny_env())
    real = agent.compute_loss

    def poisoned(samples, steps):
        loss, info = real(samples, steps)
        return loss * math.nan, info

    agent.compute_loss = poisoned
    before = snapshot(agent)
    optimizer_state = {k: v for k, v in agent.policy.optimizer.state_dict()["state"].items()}
    agent.learn(total_samples=6)
    assert agent.num_skipped_updates == 2 and agent._n_updates == 0  # both updates of the epoch skipped
    assert_unchanged(agent, before)
    assert agent.policy.optimizer.state_dict()["state"] == optimizer_state == {}  # Adam never stepped
    record = recorder.records[-1]
    assert record["train/skipped_updates"] == 2 and record["train/last_skip_reason"] == "non-finite gradient"
    agent.compute_loss = real  # and training goes on once the gradients are finite again
    agent.learn(total_samples=6, reset_num_timesteps=False)
    assert agent._n_updates == 2 and any(not torch.equal(before[k], v)
                                         for k, v in agent.policy.trainable_state_dict().items())


def test_a_reward_that_raises_mid_rollout_keeps_the_last_checkpoint_and_names_the_reward(tmp_path):
    calls = {"n": 0}

    def flaky(images, prompts):
        calls["n"] += 1
        if calls["n"] == 4:  # the second batch of the second epoch
            raise ConnectionError("scoring server went away")
        return np.ones(len(images))

    env = from_callable(gym.make_vec("DenoisingDiffusion-v0", num_envs=3, **TINY), flaky, name="remote_score")
    agent, _ = agent_on(env)
    root = tmp_path / "checkpoints"
    saver = CheckpointEvery(root, every=1, final_epoch=2, keep_last=2, config=lambda: {})
    with pytest.raises(RewardError) as e:
        agent.learn(total_samples=12, callback=saver)
    assert str(e.value) == "reward 'remote_score' raised ConnectionError: scoring server went away"
    assert isinstance(e.value.__cause__, ConnectionError)
    assert [p.name for p in list_checkpoints(root)] == ["epoch-000001"]
    assert not any(p.name.startswith(".") for p in root.iterdir())  # no half-written checkpoint
    at_failure = snapshot(agent)
    fresh, _ = agent_on(from_callable(gym.make_vec("DenoisingDiffusion-v0", num_envs=3, **TINY), flaky,
                                      name="remote_score"))
    load_checkpoint(fresh, latest_checkpoint(root))
    assert fresh.num_epochs == 1
    assert all(torch.equal(at_failure[k], v) for k, v in fresh.policy.trainable_state_dict().items())


def unreachable_score(images, prompts):
    """A reward whose scoring server is gone (used by name: tests.test_faults:unreachable_score)."""
    raise ConnectionError("scoring server went away")


def nan_score(images, prompts):
    """A reward that returns NaN for the second image of every batch."""
    scores = np.ones(len(images))
    scores[1] = np.nan
    return scores


@pytest.mark.parametrize(("reward", "message"), [
    ("unreachable_score", "ddpo train: error: reward 'unreachable_score' raised ConnectionError: scoring server went "
                          "away"),
    ("nan_score", "ddpo train: error: reward 'nan_score' returned NaN or Inf for sample(s) [1]"),
])
def test_a_failing_reward_ends_ddpo_train_in_one_line_with_exit_code_2(tmp_path, reward, message):
    from tests.test_cli import TINY_FLAGS, ddpo

    result = ddpo("train", *TINY_FLAGS, "--epochs", "1", "--no-evaluate", "--no-tensorboard", "--image-every", "0",
                  "--reward", f"tests.test_faults:{reward}", "--output-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == message and "Traceback" not in result.stderr
    assert all(line.lstrip("\r").startswith("train:") for line in lines[:-1]), lines  # else only the progress bar


def test_debug_shows_the_traceback_of_a_failing_reward(tmp_path):
    from tests.test_cli import TINY_FLAGS, ddpo

    result = ddpo("train", *TINY_FLAGS, "--epochs", "1", "--no-evaluate", "--no-tensorboard", "--image-every", "0",
                  "--reward", "tests.test_faults:unreachable_score", "--output-dir", str(tmp_path / "run"), "--debug")
    assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr
    assert "ConnectionError: scoring server went away" in result.stderr  # the scorer's own error, chained
    assert result.stderr.strip().splitlines()[-1] == (
        "rewards.scorer.RewardError: reward 'unreachable_score' raised ConnectionError: scoring server went away")
