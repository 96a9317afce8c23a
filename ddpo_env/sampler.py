"""Acting on the env with a diffusion network: the guided model output, and the base model as a policy.

``guided_model_output`` is the one place that runs the network with classifier-free guidance; the agents'
trainable policy calls it too. ``DDIMSampler`` acts with the env's own (frozen) model, so a plain
``gym.make`` loop can generate images, and tests and benchmarks have a reference policy π_ref.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ddpo_env.backends import DiffusionBackend
from ddpo_env.ddim import DDIMStepOutput, classifier_free_guidance


def guided_model_output(
    backend: DiffusionBackend,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor,
    guidance_scale: float,
) -> torch.Tensor:
    """Network output for x_t (B, C, h, w) at τ (B,), guided: ε_u + w(ε_c − ε_u); one batched call of 2B.

    ``negative_prompt_embeds`` is (1, L, D) or (B, L, D). With w = 1 the unconditional pass is skipped.
    """
    if guidance_scale == 1.0:
        return backend.predict(latents, timesteps, prompt_embeds)
    batch = latents.shape[0]
    negative = negative_prompt_embeds.expand(batch, *negative_prompt_embeds.shape[1:])
    output = backend.predict(
        torch.cat([latents, latents]), torch.cat([timesteps, timesteps]), torch.cat([negative, prompt_embeds])
    )
    uncond, cond = output.chunk(2)
    return classifier_free_guidance(uncond, cond, guidance_scale)


class DDIMSampler:
    """The env's frozen model as a policy: ``action, log_prob = sampler(obs)``.

    Works with the single env (obs unbatched) and the vector env (obs batched). ``env`` may be wrapped; its
    ``unwrapped`` must be a DenoisingDiffusion env. Noise comes from this sampler's own generator.
    """

    def __init__(self, env: Any, seed: int = 0) -> None:
        self.env = env.unwrapped
        self.generator = torch.Generator(device=self.env.backend.device).manual_seed(seed)

    @torch.no_grad()
    def model_output(self, obs: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(guided network output, x_t, τ) for a batched observation (tensors on the env's device)."""
        backend = self.env.backend
        latents = torch.as_tensor(obs["latent"], device=backend.device)
        timesteps = torch.as_tensor(obs["timestep"], device=backend.device).reshape(-1)
        prompt_ids = np.asarray(obs["prompt_id"]).reshape(-1)
        model_output = guided_model_output(
            backend,
            latents,
            self.env.schedule.model_timesteps(timesteps),
            self.env.prompt_embeds(prompt_ids),
            self.env.prompt_embeds([0]),
            self.env.guidance_scale,
        )
        return model_output, latents, timesteps

    @torch.no_grad()
    def step(self, obs: dict[str, np.ndarray]) -> DDIMStepOutput:
        """The full DDIM step output for a batched observation (tensors on the env's device)."""
        model_output, latents, timesteps = self.model_output(obs)
        return self.env.schedule.step(model_output, timesteps, latents, generator=self.generator)

    def __call__(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(action, log_prob) as numpy, batched like ``obs``."""
        single = np.asarray(obs["latent"]).ndim == 3
        if single:
            obs = {k: np.asarray(v)[None] for k, v in obs.items()}
        out = self.step(obs)
        action, log_prob = out.prev_sample.cpu().numpy(), out.log_prob.cpu().numpy()
        return (action[0], log_prob[0]) if single else (action, log_prob)
