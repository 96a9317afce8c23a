"""AWM, advantage-weighted matching (Xue et al. 2025, arXiv 2509.25050): the model's own denoising loss on the
rollout's final samples, each sample weighted by its advantage, so high-reward samples are fitted and low-reward ones
pushed away, with the same objective as pretraining instead of DDPO's per-step likelihoods.

    x_t = noised x_0 at a step τ_k of the sampler (fresh ε),  ℓ_θ = mean ‖f_θ(x_t, τ_k, c) − target‖²
    log p_θ = −w_k · ((ℓ_θ + δ)^p − δ^p) / p               (generalised Huber, p = awm_power, δ = 1e-10)
    L(θ) = E[ −Â · log p_θ ] + β · E[ KL(π_θ ‖ π_ref) ]      (Â: the episode's normalised, clipped advantage)

w_k is the step's noise level: σ for flow matching (the paper's t), √(1−ᾱ_τ) for DDIM, whose ε-, v- or x₀-target
stands in for the flow velocity (the paper trains flow models only; this parameterisation is ours). The official
code computes a PPO ratio exp(log p_θ − log p_old) against its own detached value, so it is 1 and the gradient is
exactly −Â·∇log p_θ, this loss's; its extra pull towards a lagging adapter is left out. The network runs without
guidance, as in the paper; the rollouts come from the env's sampler. KL: the Gaussian KL of the samples' stored
transitions (agents/kl.py), as for RWR.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from agents.config import AWMConfig
from agents.final_samples import FinalSampleAgent

DELTA = 1e-10


def awm_log_likelihood(squared_error: torch.Tensor, level: torch.Tensor, power: float) -> torch.Tensor:
    """log p_θ = −w·((ℓ + δ)^p − δ^p)/p per sample (B,) from its squared error ℓ (B,) and noise level w (B,); p = 1
    gives −w·ℓ."""
    return -level * ((squared_error + DELTA) ** power - DELTA**power) / power


def awm_loss(squared_error: torch.Tensor, level: torch.Tensor, advantages: torch.Tensor, power: float
             ) -> torch.Tensor:
    """E[−Â · log p_θ] over the batch (scalar)."""
    return (-advantages * awm_log_likelihood(squared_error, level, power)).mean()


class AWM(FinalSampleAgent):
    """Advantage-weighted matching on the rollout's final samples (see the module docstring)."""

    config_class: ClassVar[type[AWMConfig]] = AWMConfig
    config: AWMConfig

    def compute_loss(self, samples: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        x0, x_t, timesteps, target, level, embeds = self.noised(samples, steps)
        prediction = self.diffusion_env.backend.predict(x_t, timesteps, embeds).float()
        squared_error = (prediction - target).square().mean(dim=tuple(range(1, x0.ndim)))
        loss = awm_loss(squared_error, level.reshape(-1).float(), self.buffer.advantages[samples],
                        self.config.awm_power)
        penalty, info = self.kl_penalty(self.buffer.transitions(samples, steps))
        info["mse"] = float(squared_error.detach().mean())
        return loss + penalty, info
