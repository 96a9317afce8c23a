"""Adapter from a Gymnasium ``VectorEnv`` (DenoisingDiffusion-v0, possibly wrapped) to stable-baselines3's ``VecEnv``.

stable-baselines3 accepts only its own VecEnv API: numpy in and out, a list of per-env info dicts, and a
same-step reset whose last observation sits in ``info["terminal_observation"]`` for the envs that finished.
stable-baselines3 clips Box actions to the space's bounds before ``step`` but stores the unclipped action, so a
clipped action would silently break the log-probability of the stored transition: the adapter counts
actions that sit exactly on a bound (what clipping produces) and warns.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn


class SB3VecEnv(VecEnv):
    """``SB3VecEnv(gym.make_vec("DenoisingDiffusion-v0", num_envs=8))`` is a stable-baselines3 VecEnv.

    Attributes:
        num_clipped_actions: env-steps whose action touched the Box bound (clipped by SB3); should stay 0.
    """

    def __init__(self, venv: gym.vector.VectorEnv) -> None:
        self.venv = venv
        self.num_clipped_actions = 0
        self._actions: np.ndarray | None = None
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)

    def reset(self) -> VecEnvObs:
        options = None
        if any(self._options):
            if not all("prompt" in o for o in self._options):
                raise ValueError("set_options() takes {'prompt': str} per env, for every env or none")
            options = {"prompts": [o["prompt"] for o in self._options]}
        obs, info = self.venv.reset(seed=self._seeds[0], options=options)
        self.reset_infos = self._split_info(info)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        low, high = self.action_space.low, self.action_space.high  # type: ignore[union-attr]
        at_bound = ((actions <= low) | (actions >= high)).reshape(len(actions), -1).any(axis=1)
        if at_bound.any():
            if self.num_clipped_actions == 0:
                warnings.warn(
                    f"actions of env(s) {np.flatnonzero(at_bound).tolist()} sit on the action-space bound, as "
                    "stable-baselines3's clipping leaves them: the stored log-probabilities no longer match the "
                    "actions taken. Raise the env's latent_bound.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            self.num_clipped_actions += int(at_bound.sum())
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
        dones = np.logical_or(terminated, truncated)
        infos = self._split_info(info)
        for i, info_i in enumerate(infos):
            info_i["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        if dones.any():
            final_obs = info.get("final_obs")
            if final_obs is None:  # next-step or disabled autoreset: reset here, as SB3 expects
                final_obs = obs
                obs, reset_info = self.venv.reset()
                self.reset_infos = self._split_info(reset_info)
            for i in np.flatnonzero(dones):
                infos[i]["terminal_observation"] = {k: v[i] for k, v in final_obs.items()}
                infos[i].pop("final_obs", None)
        return obs, rewards.astype(np.float32), dones, infos

    def _split_info(self, info: dict[str, Any]) -> list[dict[str, Any]]:
        """Gymnasium's vector info (arrays + "_key" masks) → SB3's list of per-env dicts."""
        out: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for key, value in info.items():
            if key.startswith("_"):
                continue
            mask = info.get(f"_{key}", np.ones(self.num_envs, dtype=bool))
            for i in np.flatnonzero(mask):
                out[i][key] = {k: v[i] for k, v in value.items()} if isinstance(value, dict) else value[i]
        return out

    def close(self) -> None:
        self.venv.close()

    def get_images(self) -> list[np.ndarray]:
        images = self.venv.render()
        return list(images) if images is not None else []

    def _indices(self, indices: VecEnvIndices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self.venv.unwrapped, attr_name)
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.venv.unwrapped, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        result = getattr(self.venv.unwrapped, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [any(isinstance(w, wrapper_class) for w in _wrapper_chain(self.venv))] * len(self._indices(indices))


def _wrapper_chain(env: Any) -> Iterable[Any]:
    while env is not None:
        yield env
        env = getattr(env, "env", None)
