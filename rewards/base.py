"""Rewards as env wrappers: score the terminal image (and prompt) at step T and add it to the reward.

A reward is a subclass of :class:`TerminalReward` that implements ``score(images, prompts) -> (B,) floats``;
``env = MyReward(env, **params)`` works on the vector env (``gym.make_vec``) and on the single env
(``gym.make``). The wrapper checks what ``score`` returns (shape, type, finiteness) and names the reward in any
error; it records its constructor arguments; it puts each reward's raw value in ``info["reward_<name>"]``.

``images`` are uint8 arrays (B, H, W, 3) — what the env puts in ``info["image"]`` — and ``prompts`` a list of B
strings. A reward never runs on the steps before T.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np


class RewardError(RuntimeError):
    """A reward function raised while scoring a rollout's images; the message names the reward."""


class TerminalReward(gym.vector.VectorWrapper, gym.utils.RecordConstructorArgs):
    """Base of every reward wrapper.

    Args:
        env: a DenoisingDiffusion-v0 vector env or single env (possibly wrapped already).
        weight: multiplies the score before it is added to the reward (use a negative weight to minimise).
    """

    name: ClassVar[str] = "reward"

    def __new__(cls, env: Any = None, *args: Any, **kwargs: Any):
        if isinstance(env, gym.Env):  # the single env: same reward, one image at a time
            return SingleEnvReward(env, cls, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, env: gym.vector.VectorEnv | None, *, weight: float = 1.0, **recorded: Any) -> None:
        if not (isinstance(weight, (int, float)) and math.isfinite(weight)):
            raise ValueError(f"{self.name}: weight must be a finite number, got {weight!r}")
        self.weight = float(weight)
        gym.utils.RecordConstructorArgs.__init__(self, weight=weight, **recorded)
        if env is not None:  # None: a scorer only, held by SingleEnvReward
            gym.vector.VectorWrapper.__init__(self, env)

    def score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        """Rewards (B,) for uint8 images (B, H, W, 3) and their prompts. Implemented by each reward."""
        raise NotImplementedError

    def checked_score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        """``score`` with its output checked: (B,) finite floats, else an error that names this reward (a score
        that raises is re-raised as :class:`RewardError` naming the reward, the original chained)."""
        try:
            values = self.score(images, prompts)
        except Exception as error:
            raise RewardError(f"reward {self.name!r} raised {type(error).__name__}: {error}") from error
        if not isinstance(values, (np.ndarray, list, tuple)) and not hasattr(values, "__array__"):
            raise TypeError(f"reward {self.name!r} returned {type(values).__name__}, expected an array of floats")
        values = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
        if values.dtype == object or not np.issubdtype(values.dtype, np.number):
            raise TypeError(f"reward {self.name!r} returned dtype {values.dtype}, expected floats")
        if values.shape != (len(images),):
            raise ValueError(
                f"reward {self.name!r} returned shape {values.shape} for {len(images)} images, "
                f"expected ({len(images)},)"
            )
        if not np.isfinite(values).all():
            bad = np.flatnonzero(~np.isfinite(values)).tolist()
            raise FloatingPointError(f"reward {self.name!r} returned NaN or Inf for sample(s) {bad}")
        return values.astype(np.float64)

    def step(self, actions: Any):
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        if "image" in info:
            mask = info.get("_image", np.ones(len(rewards), dtype=bool))
            images, prompts = info["image"][mask], [str(p) for p in np.asarray(info["prompt"])[mask]]
            values = np.zeros(len(rewards))
            values[mask] = self.checked_score(images, prompts)
            rewards = rewards + self.weight * values
            info = {**info, f"reward_{self.name}": values, f"_reward_{self.name}": mask.copy()}
        return obs, rewards, terminated, truncated, info


class SingleEnvReward(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """The single-env form of a :class:`TerminalReward`: ``MyReward(gym.make(...))`` returns one of these."""

    def __init__(self, env: gym.Env, reward_class: type[TerminalReward], *args: Any, **kwargs: Any) -> None:
        scorer = object.__new__(reward_class)
        scorer.__init__(None, *args, **kwargs)
        self.reward = scorer
        gym.utils.RecordConstructorArgs.__init__(self, reward_class=reward_class, **scorer._saved_kwargs)
        gym.Wrapper.__init__(self, env)

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if "image" in info:
            value = float(self.reward.checked_score(info["image"][None], [str(info["prompt"])])[0])
            reward = reward + self.reward.weight * value
            info = {**info, f"reward_{self.reward.name}": value}
        return obs, reward, terminated, truncated, info
