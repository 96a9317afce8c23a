"""DDPO-IS (Black et al. 2024, eq. 4–5): PPO's clipped importance-sampling objective on each denoising step.

    r_t(θ) = π_θ(x_{t-1} | x_t, c) / π_old(x_{t-1} | x_t, c)          (ratio; log-probs mean-reduced)
             (with step_weights="sensitivity": r_t = exp(w_t·(log π_θ − log π_old)), agents/step_weights.py)
    L(θ)   = E[ max(−Â · r_t, −Â · clip(r_t, 1−ε, 1+ε)) ]              (Â: the episode's normalised reward)
             + β · E[ KL(π_θ ‖ π_ref) ]                                   (kl_coef β, agents/kl.py; 0 by default)
"""

from __future__ import annotations

from typing import ClassVar

import torch

from agents.base import DiffusionAgent
from agents.config import DDPOISConfig
from agents.kl import approx_kl


def ppo_clip_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, ratio) of PPO-clip; all inputs (B,). With Â = −1, ratio = 1: loss = 1."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped).mean(), ratio


class DDPO_IS(DiffusionAgent):
    """DDPO with importance sampling and clipping: several updates per rollout stay near the sampling policy."""

    config_class: ClassVar[type[DDPOISConfig]] = DDPOISConfig
    config: DDPOISConfig

    def compute_loss(self, samples: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.buffer.transitions(samples, steps)
        out = self.transition_step(batch)
        log_prob = out.log_prob
        w = self.step_weight(steps)
        loss, ratio = ppo_clip_loss(w * log_prob, w * batch.old_log_probs, batch.advantages, self.config.clip_range)
        penalty, info = self.kl_penalty(batch, out)
        self.record_step_stats(steps, log_ratio=log_prob - batch.old_log_probs,
                               clip_fraction=((ratio - 1.0).abs() > self.config.clip_range).float())
        with torch.no_grad():
            info |= {
                "approx_kl": approx_kl(log_prob, batch.old_log_probs),
                "clip_fraction": float(((ratio - 1.0).abs() > self.config.clip_range).float().mean()),
                "ratio_mean": float(ratio.mean()),
            }
        return loss + penalty, info
