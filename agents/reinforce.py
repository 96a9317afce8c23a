"""DDPO-SF (Black et al. 2024, eq. 3): REINFORCE over the denoising steps — the score-function gradient

    ∇J = E[ Â · Σ_t ∇ log π_θ(x_{t-1} | x_t, c) ],   loss L(θ) = E[ −Â · log π_θ ] + β · E[ KL(π_θ ‖ π_ref) ]

(with step_weights="sensitivity" each step's log π_θ is scaled by its w_t, agents/step_weights.py)

with one on-policy gradient step per rollout (all its micro-batches accumulate into that step).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from agents.base import DiffusionAgent
from agents.config import DDPOSFConfig
from agents.kl import approx_kl


def reinforce_loss(log_prob: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """−Â·log π, averaged over the batch (B,) → scalar."""
    return (-advantages * log_prob).mean()


class DDPO_SF(DiffusionAgent):
    """DDPO with the score-function (REINFORCE) estimator."""

    config_class: ClassVar[type[DDPOSFConfig]] = DDPOSFConfig
    config: DDPOSFConfig
    # the loss −Â·log π_θ has no ratio: no recompute after a compiled rollout (its logged approx_kl and log_ratio,
    # diagnostics only, then include the compiled kernels' rounding)
    uses_old_log_probs: ClassVar[bool] = False

    def backward_passes_per_update(self) -> int:
        micro_batches = -(-len(self.train_samples()) // self.rank_batch_size)
        return micro_batches * self.train_timesteps()

    def compute_loss(self, samples: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.buffer.transitions(samples, steps)
        out = self.transition_step(batch)
        penalty, info = self.kl_penalty(batch, out)
        info["approx_kl"] = approx_kl(out.log_prob, batch.old_log_probs)
        self.record_step_stats(steps, log_ratio=out.log_prob - batch.old_log_probs)
        return reinforce_loss(self.step_weight(steps) * out.log_prob, batch.advantages) + penalty, info
