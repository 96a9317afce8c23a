"""Reward-weighted regression (Black et al. 2024 §4.1; Lee et al. 2023): the standard denoising loss on the
rollout's final samples x_0, weighted by their reward.

    w_i = N · softmax(Â / τ)_i                       (RWR; Σ w = N, τ = 1/β; Â: normalised rewards)
    w_i = N / k for the top k = ⌈f·N⌉ samples, else 0 (sparse RWR: the unweighted loss on the best samples)
    L(θ) = mean_i w_i · ‖f_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t, c_i) − target‖²   (target ε, v or x_0 by prediction type)
           (flow matching: f_θ((1−σ)x_0 + σε, σ, c_i) against v = ε − x_0, σ ~ U(0, 1))
           + β · E[ KL(π_θ ‖ π_ref) ]  on the samples' stored transitions (kl_coef β, agents/kl.py; 0 by default)
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from agents.config import RWRConfig, SparseRWRConfig
from agents.final_samples import FinalSampleAgent


def rwr_weights(rewards: torch.Tensor, temperature: float) -> torch.Tensor:
    """N · softmax(r/τ) over the batch (N,): sums to N, shift-invariant, uniform as τ → ∞."""
    return rewards.numel() * torch.softmax(rewards / temperature, dim=0)


def sparse_rwr_weights(rewards: torch.Tensor, top_fraction: float) -> torch.Tensor:
    """N/k on the k = ⌈top_fraction·N⌉ largest rewards (ties broken by index), 0 elsewhere; sums to N."""
    n = rewards.numel()
    k = max(1, int(np.ceil(top_fraction * n - 1e-9)))
    keep = torch.argsort(rewards, descending=True, stable=True)[:k]
    weights = torch.zeros_like(rewards)
    weights[keep] = n / k
    return weights


def denoising_mse(diffusion_env: Any, x0: torch.Tensor, embeds: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """The model's training loss on final samples x_0 (B, ...) with conditioning ``embeds``, per sample (B,): x_0
    noised at a random t (``generator``), the network's prediction against its target (ε, v or x_0)."""
    x_t, t, target = diffusion_env.schedule.training_pair(x0, generator)
    prediction = diffusion_env.backend.predict(x_t, t, embeds).float()
    return ((prediction - target) ** 2).mean(dim=tuple(range(1, x0.ndim)))


class RWR(FinalSampleAgent):
    """Reward-weighted regression on final samples."""

    config_class: ClassVar[type[RWRConfig]] = RWRConfig
    config: RWRConfig

    def sample_weights(self) -> torch.Tensor:
        """The weights of the whole rollout (every rank's samples)."""
        return rwr_weights(self.global_advantages, self.config.temperature)

    def train_samples(self) -> torch.Tensor:
        weights = self.sample_weights()
        # Kish's effective sample size (Σw)²/Σw²: how many samples the update really learns from
        self.logger.record("train/effective_sample_size", float(weights.sum() ** 2 / (weights**2).sum()))
        self.weights = weights[self.rank_rows()]
        return torch.nonzero(self.weights > 0).flatten().cpu()

    def compute_loss(self, samples: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        embeds = self.diffusion_env.prompt_embeds(self.buffer.prompt_ids[samples].cpu().numpy())
        mse = denoising_mse(self.diffusion_env, self.buffer.final_samples()[samples], embeds,
                            self.loss_generator())
        weights = self.weights[samples]
        # β·KL(π_θ ‖ π_ref) on the rollout's own transitions of these samples at the micro-batch's steps
        penalty, info = self.kl_penalty(self.buffer.transitions(samples, steps))
        info |= {"mse": float(mse.detach().mean()), "weight_max": float(weights.max())}
        return (weights * mse).mean() + penalty, info


class SparseRWR(RWR):
    """RWR keeping only the top fraction of samples, unweighted."""

    config_class: ClassVar[type[SparseRWRConfig]] = SparseRWRConfig
    config: SparseRWRConfig

    def sample_weights(self) -> torch.Tensor:
        return sparse_rwr_weights(self.global_advantages, self.config.top_fraction)
