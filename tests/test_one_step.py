"""The one-sign-step test and the per-step gradient shares: their arithmetic, the weights left as found, and
``ddpo diagnose gradients`` end to end on the tiny model."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_env
from stable_baselines3.common.logger import Logger

from agents import make_agent
from agents.job.cli import main as ddpo
from agents.one_step import gradient_shares, one_sign_step_test, sign_step_gain


def test_gradient_shares_are_each_steps_part_of_the_squared_norm():
    shares = gradient_shares({0: torch.tensor([3.0, 0.0]), 1: torch.tensor([0.0, 4.0]), 2: torch.zeros(2)})
    assert shares == pytest.approx({0: 9 / 25, 1: 16 / 25, 2: 0.0})


def test_a_sign_step_is_measured_on_paired_samples_and_the_weights_are_restored():
    agent = make_agent("ddpo-is", tiny_env(2), samples_per_epoch=2, batch_size=2)
    params = agent.policy.trainable_parameters()
    before = [p.detach().clone() for p in params]
    size = sum(p.numel() for p in params)
    moved = []

    def evaluate():  # a reward that reads the weights: their sum, the same for each of three "samples"
        moved.append(float(sum(p.detach().sum() for p in params)))
        return np.full(3, moved[-1]) + np.array([0.0, 0.1, 0.2])

    gain, stderr = sign_step_gain(agent, -torch.ones(size), 0.5, evaluate, evaluate())
    assert gain == pytest.approx(0.5 * size, rel=1e-5) and stderr == pytest.approx(0.0, abs=1e-6)  # θ + 0.5·1
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))


def test_the_test_names_each_direction_and_refuses_steps_the_agent_does_not_train():
    agent = make_agent("ddpo-is", tiny_env(2), samples_per_epoch=4, batch_size=2, skip_last_steps=1)
    agent.set_logger(Logger(folder=None, output_formats=[]))
    agent.collect_rollout()
    rng = np.random.default_rng(0)
    results, shares = one_sign_step_test(agent, lambda: rng.normal(size=8), {"all": [0, 1, 2], "first": [0]}, 1e-3,
                                         controls=2)
    assert [r.name for r in results] == ["all", "first", "random 1", "random 2"]
    assert sorted(shares) == [0, 1, 2] and sum(shares.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"steps \[3\] are not trained by this agent"):
        one_sign_step_test(agent, lambda: np.zeros(2), {"last": [3]}, 1e-3)


def test_ddpo_diagnose_gradients_prints_the_shares_and_the_directions(tmp_path, capsys):
    out = tmp_path / "gradients.json"
    ddpo(["diagnose", "gradients", "--model", "tiny", "--num-steps", "3", "--num-envs", "2", "--samples-per-epoch",
          "4", "--batch-size", "2", "--controls", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "share of the gradient" in printed and "| random 1 | – |" in printed
    report = json.loads(out.read_text())
    assert report["directions"][0]["name"] == "all" and len(report["shares"]) == 3
