"""Evaluating a policy on a fixed set of prompts and seeds (the same set before and after training)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from stable_baselines3.common.utils import obs_as_tensor
from tqdm import tqdm

from agents.kl import gaussian_kl
from agents.policy import DiffusionPolicy


class EvaluationResult(NamedTuple):
    images: np.ndarray  # uint8 (N, H, W, 3)
    rewards: np.ndarray  # (N,) the env's terminal rewards (0 without a reward wrapper)
    prompts: list[str]
    kl: np.ndarray | None = None  # (N,) mean over the steps of KL(π_θ ‖ π_ref) along each trajectory (kl=True)

    def grid(self, cols: int) -> np.ndarray:
        """The images in ``cols`` columns, each captioned with its prompt and reward."""
        from ddpo_env.images import captioned_grid

        captions = [f"{p}\nr={r:.3f}" for p, r in zip(self.prompts, self.rewards, strict=True)]
        return captioned_grid(self.images, captions, cols=cols)


@torch.no_grad()
def evaluate_policy(
    policy: DiffusionPolicy, env: Any, prompts: list[str], seed: int = 0, deterministic: bool = False,
    kl: bool = False, ode: bool = False, progress: bool = False,
) -> EvaluationResult:
    """Sample one image per prompt with ``policy`` on ``env`` (a DenoisingDiffusion vector env, possibly
    reward-wrapped, sharing the policy's model), with x_T and the policy noise fixed by ``seed``. With ``kl``, also
    the per-step KL(π_θ ‖ π_ref) to the base model (:mod:`agents.kl`) at the states visited, averaged over steps.
    ``deterministic`` takes each stochastic step's mean; ``ode`` the deterministic ODE sampler instead (DDIM with
    η = 0, or a flow model's Euler step), which keeps x_T's variety.

    Use an env other than the training env: resetting with a seed restarts its generators. The policy's own noise
    generator is left as it was. ``progress`` shows a bar over the samples.
    """
    num_envs = env.num_envs
    saved = policy.noise_generator.get_state()
    policy.noise_generator.manual_seed(seed)
    policy.set_training_mode(False)
    images, rewards, kls = [], [], []
    bar = tqdm(total=len(prompts), desc="evaluate", unit="sample", disable=not progress, leave=False)
    try:
        for first in range(0, len(prompts), num_envs):
            batch = list(prompts[first : first + num_envs])
            n = len(batch)
            batch += [batch[-1]] * (num_envs - n)
            obs, _ = env.reset(seed=seed + first, options={"prompts": batch})
            total, kl_sum, steps = np.zeros(num_envs), torch.zeros(num_envs), 0
            terminated = np.zeros(num_envs, dtype=bool)
            while not terminated.all():
                obs_tensor = obs_as_tensor(obs, policy.device)
                out = policy.step(obs_tensor, deterministic=deterministic)
                if kl:
                    reference = policy.reference_step(obs_tensor)
                    kl_sum += gaussian_kl(out.mean, reference.mean, out.std_dev_t).cpu()
                    steps += 1
                action = out.prev_sample
                if ode:
                    latents, timesteps, _ = policy.unpack(obs_tensor)
                    action = policy.schedule.ode_step(out, timesteps, latents)
                obs, reward, terminated, _, info = env.step(action)
                total += reward
            images.append(info["image"][:n])
            rewards.append(total[:n])
            kls.append((kl_sum / max(steps, 1)).numpy()[:n])
            bar.update(n)
    finally:
        bar.close()
        policy.noise_generator.set_state(saved)
    return EvaluationResult(np.concatenate(images), np.concatenate(rewards), list(prompts),
                            np.concatenate(kls) if kl else None)
