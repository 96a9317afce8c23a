"""Rollout storage for denoising trajectories: N episodes (samples) × T steps.

Per step: the latent chain x_T … x_0 (stored once, T+1 latents: step k's x_t is ``latents[:, k]`` and its action
x_{t-1} is ``latents[:, k+1]``), the timestep and the log-probability under the sampling policy. Per episode: the
prompt id (conditioning is looked up by id, so storage does not grow with steps × embedding size), the prompt,
the terminal reward and its advantage, broadcast to every step of the episode.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class TrajectoryBatch(NamedTuple):
    """A minibatch of transitions (B = samples in the minibatch), as the losses consume them."""

    latents: torch.Tensor  # x_t (B, C, h, w)
    next_latents: torch.Tensor  # x_{t-1}, the action (B, C, h, w)
    timesteps: torch.Tensor  # τ (B,) int64
    prompt_ids: torch.Tensor  # (B,) int64
    old_log_probs: torch.Tensor  # log π_old(x_{t-1} | x_t) (B,)
    advantages: torch.Tensor  # Â of the episode (B,)


class TrajectoryBuffer:
    """Fixed-size storage for one rollout of ``num_samples`` episodes of ``num_steps`` steps."""

    def __init__(self, num_samples: int, num_steps: int, latent_shape: tuple[int, ...], device: torch.device):
        self.num_samples, self.num_steps, self.device = num_samples, num_steps, device
        self.latents = torch.zeros(num_samples, num_steps + 1, *latent_shape, device=device)
        self.timesteps = torch.zeros(num_samples, num_steps, dtype=torch.int64, device=device)
        self.log_probs = torch.zeros(num_samples, num_steps, device=device)
        self.prompt_ids = torch.zeros(num_samples, dtype=torch.int64, device=device)
        self.prompts: list[str] = [""] * num_samples
        self.rewards = np.zeros(num_samples, dtype=np.float64)
        self.advantages = torch.zeros(num_samples, device=device)
        self.filled = 0  # episodes completely stored

    def reset(self) -> None:
        self.filled = 0

    def add_step(
        self,
        rows: slice,
        step: int,
        latents: torch.Tensor,
        next_latents: torch.Tensor,
        timesteps: torch.Tensor,
        log_probs: torch.Tensor,
    ) -> None:
        """Store step ``step`` of the episodes in ``rows`` (one per env)."""
        if step == 0:
            self.latents[rows, 0] = latents
        self.latents[rows, step + 1] = next_latents
        self.timesteps[rows, step] = timesteps
        self.log_probs[rows, step] = log_probs

    def add_episodes(self, rows: slice, prompt_ids: np.ndarray, prompts: list[str], rewards: np.ndarray) -> None:
        """Finish the episodes in ``rows`` with their prompts and terminal rewards."""
        self.prompt_ids[rows] = torch.as_tensor(prompt_ids, device=self.device)
        self.prompts[rows] = prompts
        self.rewards[rows] = rewards
        self.filled = max(self.filled, rows.stop)

    def set_advantages(self, advantages: np.ndarray) -> None:
        self.advantages = torch.as_tensor(advantages, dtype=torch.float32, device=self.device)

    def transitions(self, samples: torch.Tensor, steps: torch.Tensor) -> TrajectoryBatch:
        """The transitions (sample i, step k) for samples (B,) and step indices (B,)."""
        return TrajectoryBatch(
            latents=self.latents[samples, steps],
            next_latents=self.latents[samples, steps + 1],
            timesteps=self.timesteps[samples, steps],
            prompt_ids=self.prompt_ids[samples],
            old_log_probs=self.log_probs[samples, steps],
            advantages=self.advantages[samples],
        )

    def final_samples(self) -> torch.Tensor:
        """x_0 of every episode (N, C, h, w)."""
        return self.latents[:, -1]

    def non_finite(self) -> str | None:
        """What is NaN/Inf in the rollout's latents or log-probs (an update on it would poison the weights), or
        None when everything is finite."""
        for name, value in (("latent", self.latents), ("log-prob", self.log_probs)):
            if not bool(torch.isfinite(value).all()):
                bad = (~torch.isfinite(value.reshape(self.num_samples, -1))).any(dim=1).nonzero().flatten().tolist()
                return f"non-finite {name} in rollout samples {bad[:10]}: the update is refused"
        return None
