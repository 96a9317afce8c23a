"""Evaluating a policy on a fixed set of prompts and seeds (the same set before and after training)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from stable_baselines3.common.utils import obs_as_tensor

from agents.policy import DiffusionPolicy


class EvaluationResult(NamedTuple):
    images: np.ndarray  # uint8 (N, H, W, 3)
    rewards: np.ndarray  # (N,) the env's terminal rewards (0 without a reward wrapper)
    prompts: list[str]

    def grid(self, cols: int) -> np.ndarray:
        """The images in ``cols`` columns, each captioned with its prompt and reward."""
        from ddpo_env.images import captioned_grid

        captions = [f"{p}\nr={r:.3f}" for p, r in zip(self.prompts, self.rewards, strict=True)]
        return captioned_grid(self.images, captions, cols=cols)


@torch.no_grad()
def evaluate_policy(
    policy: DiffusionPolicy, env: Any, prompts: list[str], seed: int = 0, deterministic: bool = False
) -> EvaluationResult:
    """Sample one image per prompt with ``policy`` on ``env`` (a DenoisingDiffusion vector env, possibly
    reward-wrapped, sharing the policy's model), with x_T and the policy noise fixed by ``seed``.

    Use an env other than the training env: resetting with a seed restarts its generators. The policy's own noise
    generator is left as it was.
    """
    num_envs = env.num_envs
    saved = policy.noise_generator.get_state()
    policy.noise_generator.manual_seed(seed)
    policy.set_training_mode(False)
    images, rewards = [], []
    try:
        for first in range(0, len(prompts), num_envs):
            batch = list(prompts[first : first + num_envs])
            n = len(batch)
            batch += [batch[-1]] * (num_envs - n)
            obs, _ = env.reset(seed=seed + first, options={"prompts": batch})
            total = np.zeros(num_envs)
            terminated = np.zeros(num_envs, dtype=bool)
            while not terminated.all():
                out = policy.step(obs_as_tensor(obs, policy.device), deterministic=deterministic)
                obs, reward, terminated, _, info = env.step(out.prev_sample)
                total += reward
            images.append(info["image"][:n])
            rewards.append(total[:n])
    finally:
        policy.noise_generator.set_state(saved)
    return EvaluationResult(np.concatenate(images), np.concatenate(rewards), list(prompts))
