"""DiffusionNFT (Zheng et al. 2025, arXiv 2509.16117): online RL on the forward process. The rollout's final samples
are split softly by their reward into an implicit positive and an implicit negative policy around the old one, and
the network is fitted with the denoising loss so that the positive policy explains the good samples and the negative
one the bad. No likelihoods, any sampler.

    r      = ½ + ½ · clip(Â / Z, −1, 1)                      (optimality probability; Z = optimality_scale)
    f⁺     = β·f_θ + (1 − β)·f_old,    f⁻ = (1 + β)·f_old − β·f_θ    (f_old: the old policy, no gradient)
    x̂₀±    = the clean sample f± predicts at x_t               (x_t: x_0 noised at a sampler step τ_k, fresh ε)
    L±     = mean ‖x̂₀± − x_0‖² / sg(mean |x̂₀± − x_0|)        (adaptive weight, ≥ 1e-5)
    L(θ)   = E[ r·L⁺ + (1 − r)·L⁻ ] / β + β_KL · E[ KL(π_θ ‖ π_ref) ]
    θ_old  ← η·θ_old + (1 − η)·θ after each epoch,  η = min(old_policy_rate · steps, old_policy_max)

The rollouts are sampled by the old policy θ_old. The mixtures are linear in the network output, so f may be ε̂, v̂
or x̂₀: for DDIM models (the embedded ones predict ε) the mix is of ε̂ and x̂₀± = (x_t − √(1−ᾱ)·ε±)/√ᾱ (the paper
trains flow models only; this parameterisation is ours). The network runs without guidance, as in the paper; the
rollouts come from the env's sampler. KL: the Gaussian KL of the samples' stored transitions (agents/kl.py).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from agents.config import DiffusionNFTConfig
from agents.ema import EMA
from agents.final_samples import FinalSampleAgent


def optimality(advantages: torch.Tensor, scale: float) -> torch.Tensor:
    """r = ½ + ½·clip(Â/Z, −1, 1) ∈ [0, 1] (B,)."""
    return 0.5 + 0.5 * (advantages / scale).clamp(-1.0, 1.0)


def implicit_policies(prediction: torch.Tensor, old_prediction: torch.Tensor, beta: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(f⁺, f⁻) = (β·f_θ + (1−β)·f_old, (1+β)·f_old − β·f_θ)."""
    return beta * prediction + (1 - beta) * old_prediction, (1 + beta) * old_prediction - beta * prediction


def nft_loss(x0_positive: torch.Tensor, x0_negative: torch.Tensor, x0: torch.Tensor, optimality_prob: torch.Tensor,
             beta: float) -> torch.Tensor:
    """(r·L⁺ + (1−r)·L⁻)/β per sample (B,), each L± its squared x₀ error over its detached mean absolute error."""
    dims = tuple(range(1, x0.ndim))

    def weighted(x0_hat: torch.Tensor) -> torch.Tensor:
        error = x0_hat - x0
        return error.square().mean(dim=dims) / error.detach().abs().mean(dim=dims).clamp(min=1e-5)

    return (optimality_prob * weighted(x0_positive) + (1 - optimality_prob) * weighted(x0_negative)) / beta


class DiffusionNFT(FinalSampleAgent):
    """DiffusionNFT on the rollout's final samples, sampling with a slowly updated old policy (module docstring)."""

    config_class: ClassVar[type[DiffusionNFTConfig]] = DiffusionNFTConfig
    config: DiffusionNFTConfig

    def _setup_model(self) -> None:
        super()._setup_model()
        # θ_old: an average of the trained weights that the rollouts sample with (decay η, set before each update)
        self.old_policy = EMA(self.policy.trainable_parameters(), 0.0)

    def collect_rollouts(self, env: Any, callback: Any, rollout_buffer: Any, n_rollout_steps: int) -> bool:
        with self.old_policy.applied():
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)

    def train(self) -> None:
        super().train()
        self.old_policy.decay = min(self.config.old_policy_rate * self._n_updates, self.config.old_policy_max)
        self.old_policy.update(1)
        self.logger.record("train/old_policy_decay", self.old_policy.decay)

    def compute_loss(self, samples: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        x0, x_t, timesteps, _, _, embeds = self.noised(samples, steps)
        backend, schedule, beta = self.diffusion_env.backend, self.diffusion_env.schedule, self.config.nft_beta
        with torch.no_grad(), self.old_policy.applied():
            old_prediction = backend.predict(x_t, timesteps, embeds).float()
        prediction = backend.predict(x_t, timesteps, embeds).float()
        positive, negative = implicit_policies(prediction, old_prediction, beta)
        r = optimality(self.buffer.advantages[samples], self.config.optimality_scale)
        loss = nft_loss(schedule.original_sample(positive, x_t, steps), schedule.original_sample(negative, x_t, steps),
                        x0, r, beta).mean()
        penalty, info = self.kl_penalty(self.buffer.transitions(samples, steps))
        info["optimality_mean"] = float(r.mean())
        return loss + penalty, info

    def algorithm_state(self) -> dict[str, Any]:
        return {"old_policy": self.old_policy.state_dict()}

    def load_algorithm_state(self, state: dict[str, Any]) -> None:
        if "old_policy" not in state:
            raise ValueError("the saved state has no DiffusionNFT old policy: load it into the agent class it was "
                             "saved from")
        self.old_policy.load_state_dict(state["old_policy"])
