"""DenoisingDiffusion-v0 as a single ``gym.Env``: the same MDP as the vector env with one env."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from ddpo_env.config import EnvConfig
from ddpo_env.vector_env import DenoisingDiffusionVectorEnv


class DenoisingDiffusionEnv(gym.Env):
    """``gym.make("DenoisingDiffusion-v0", **EnvConfig fields)``: one denoising trajectory per episode.

    Observation {"latent": (C,h,w) float32, "timestep": (1,) int64, "prompt_id": (1,) int64}; action (C,h,w)
    float32; T steps; the terminal info holds "image" (H,W,3) uint8 and "prompt" (str). After the terminal
    step call ``reset()``. The batched machinery (and the attributes policies use) is ``self.vector``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, config: EnvConfig | None = None, **kwargs: Any) -> None:
        if config is None:
            kwargs.setdefault("autoreset_mode", AutoresetMode.DISABLED)
            config = EnvConfig(**kwargs)
        elif kwargs:
            raise ValueError(f"pass either config= or keyword arguments, not both (got {sorted(kwargs)})")
        self.vector = DenoisingDiffusionVectorEnv(num_envs=1, config=config)
        self.render_mode = config.render_mode
        self.observation_space = self.vector.single_observation_space
        self.action_space = self.vector.single_action_space

    @property
    def backend(self):
        return self.vector.backend

    @property
    def schedule(self):
        return self.vector.schedule

    @property
    def guidance_scale(self) -> float:
        return self.vector.guidance_scale

    def prompt_embeds(self, prompt_ids: Any) -> torch.Tensor:
        return self.vector.prompt_embeds(prompt_ids)

    def prompt_strings(self, prompt_ids: Any) -> list[str]:
        return self.vector.prompt_strings(prompt_ids)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        if options and "prompt" in options:
            options = {"prompts": [options["prompt"]], **{k: v for k, v in options.items() if k != "prompt"}}
        if seed is None and self.vector.step_index is None:
            seed = int(self.np_random.integers(2**62))  # first reset without a seed: seed from Env.np_random
        obs, info = self.vector.reset(seed=seed, options=options)
        return _unbatch(obs), info

    def step(self, action: np.ndarray | torch.Tensor) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        if not isinstance(action, torch.Tensor):
            action = np.asarray(action)
        shape = tuple(action.shape)
        if shape != self.vector.latent_shape:
            raise ValueError(
                f"action has shape {shape} but the env expects {self.vector.latent_shape}: one x_(t-1) latent"
            )
        obs, reward, terminated, truncated, info = self.vector.step(action[None])
        single_info = {k: v[0] for k, v in info.items() if not k.startswith("_")}
        return _unbatch(obs), float(reward[0]), bool(terminated[0]), bool(truncated[0]), single_info

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            gym.logger.warn("render() needs render_mode='rgb_array' at construction")
            return None
        return self.vector.render()[0]

    def close(self) -> None:
        self.vector.close()


def _unbatch(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v[0].copy() for k, v in obs.items()}
