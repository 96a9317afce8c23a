"""The base of the agents that learn from the rollout's final samples x₀ with the model's own denoising loss
(reward-weighted regression, AWM, DiffusionNFT) rather than from the log-probabilities of its steps: their losses have
no ratio, so a compiled rollout's log-probs are not recomputed, and ``train/approx_kl`` is measured by a probe.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from agents.base import DiffusionAgent
from agents.buffer import TrajectoryBatch
from agents.kl import approx_kl


class FinalSampleAgent(DiffusionAgent):
    """A :class:`~agents.base.DiffusionAgent` whose loss reads the final samples (:meth:`noised` builds its inputs)."""

    uses_old_log_probs: ClassVar[bool] = False  # no ratio in the loss (the approx_kl probe recomputes its own)

    def train(self) -> None:
        probe = self._kl_probe()
        super().train()
        self.logger.record("train/approx_kl", self.approx_kl_after_update(*probe))

    def _kl_probe(self) -> tuple[TrajectoryBatch, torch.Tensor]:
        """One micro-batch of the rollout's transitions (its first samples, one step each, chosen by a generator of
        their own) and their log-probs under the sampling weights, as the eager network computes them (the stored
        ones unless :attr:`recomputes_log_probs`)."""
        n = min(self.rank_batch_size, self.buffer.num_samples)
        choose = torch.Generator().manual_seed(self.config.seed * 100_003 + self.num_epochs + 1)  # the epoch trained
        samples = torch.arange(n, device="cpu")
        steps = torch.randint(self.num_steps, (n,), generator=choose, device="cpu")
        batch = self.buffer.transitions(samples.to(self.device), steps.to(self.device))
        if not self.recomputes_log_probs:
            return batch, batch.old_log_probs
        with torch.no_grad(), self.diffusion_env.backend.eager():
            return batch, self.transition_log_probs(batch)

    def approx_kl_after_update(self, batch: TrajectoryBatch, old_log_probs: torch.Tensor) -> float:
        """½·mean (log π_θ − log π_old)² over the probe's transitions (:meth:`_kl_probe`) under the updated weights:
        how far the epoch's updates moved the sampling policy. These losses have no ratio to read it from, as the
        DDPO losses do."""
        with torch.no_grad(), self.diffusion_env.backend.eager():
            return approx_kl(self.transition_log_probs(batch), old_log_probs)

    def noised(self, samples: torch.Tensor, steps: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The denoising loss's inputs for ``samples`` at the episode's steps ``steps`` (indices k, (B,)): (x₀, x_t
        with fresh noise from :meth:`loss_generator`, the network's timestep, the target, the noise level, the prompt
        conditioning)."""
        x0 = self.buffer.final_samples()[samples]
        generator = self.loss_generator()
        noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
        x_t, timesteps, target, level = self.diffusion_env.schedule.forward_noise(x0, steps, noise)
        embeds = self.diffusion_env.prompt_embeds(self.buffer.prompt_ids[samples].cpu().numpy())
        return x0, x_t, timesteps, target, level, embeds
