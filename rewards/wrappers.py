"""Rewards as env wrappers, in Gymnasium's two forms: :class:`TerminalReward` wraps the single env (``gym.make``),
:class:`VectorTerminalReward` the vector env (``gym.make_vec``); :func:`wrap_reward` picks the right one.

At the terminal step each adds ``weight × scorer(images, prompts)`` to the env's reward and puts the raw score in
``info["reward_<name>"]``; it checks what the scorer returns (shape, type, finiteness) and names the reward in any
error. A scorer never runs on the steps before T.

    env = VectorTerminalReward(gym.make_vec("DenoisingDiffusion-v0", num_envs=16), JpegCompressibility(upscale=4))
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

from rewards.scorer import FunctionScorer, ScoreFn, checked_scores, scorer_name


def _checked_weight(name: str, weight: Any) -> float:
    if isinstance(weight, bool) or not (isinstance(weight, (int, float)) and math.isfinite(weight)):
        raise ValueError(f"{name}: weight must be a finite number, got {weight!r}")
    return float(weight)


def _checked_scorer(scorer: Any) -> Any:
    if isinstance(scorer, type) or not callable(scorer):
        raise TypeError(f"a reward wrapper needs a scorer: an object or function scorer(images, prompts) -> rewards, "
                        f"got {scorer!r}" + (" (a class: build it first)" if isinstance(scorer, type) else ""))
    return scorer


class TerminalReward(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Single env: ``reward += weight × scorer(image[None], [prompt])[0]`` at the terminal step.

    Args:
        env: a DenoisingDiffusion-v0 env (``gym.make``), possibly wrapped already.
        scorer: any ``scorer(images, prompts) -> (B,)``, e.g. a :class:`~rewards.scorer.Scorer`.
        weight: multiplies the score before it is added (negative to minimise).
    """

    def __init__(self, env: gym.Env, scorer: Any, weight: float = 1.0) -> None:
        self.scorer = _checked_scorer(scorer)
        self.name = scorer_name(scorer)
        self.weight = _checked_weight(self.name, weight)
        gym.utils.RecordConstructorArgs.__init__(self, scorer=scorer, weight=weight)
        gym.Wrapper.__init__(self, env)

    def __str__(self) -> str:  # gym.Wrapper's repr is its str
        return f"<TerminalReward({self.scorer!r}, weight={self.weight:g}), {self.env}>"

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if "image" in info:
            value = float(checked_scores(self.scorer, info["image"][None], [str(info["prompt"])], self.name)[0])
            reward = reward + self.weight * value
            info = {**info, f"reward_{self.name}": value}
        return obs, reward, terminated, truncated, info


class VectorTerminalReward(gym.vector.VectorWrapper, gym.utils.RecordConstructorArgs):
    """Vector env: the sub-envs that terminate this step get ``weight × scorer(images, prompts)`` added, scored in
    one batch; ``info["reward_<name>"]`` holds the scores (0 elsewhere) and ``info["_reward_<name>"]`` the mask.

    Args: as :class:`TerminalReward`, with ``env`` a DenoisingDiffusion-v0 vector env (``gym.make_vec``).
    """

    def __init__(self, env: gym.vector.VectorEnv, scorer: Any, weight: float = 1.0) -> None:
        self.scorer = _checked_scorer(scorer)
        self.name = scorer_name(scorer)
        self.weight = _checked_weight(self.name, weight)
        gym.utils.RecordConstructorArgs.__init__(self, scorer=scorer, weight=weight)
        gym.vector.VectorWrapper.__init__(self, env)

    def __repr__(self) -> str:
        return f"<VectorTerminalReward({self.scorer!r}, weight={self.weight:g}), {self.env}>"

    def step(self, actions: Any):
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        if "image" in info:
            mask = info.get("_image", np.ones(len(rewards), dtype=bool))
            images, prompts = info["image"][mask], [str(p) for p in np.asarray(info["prompt"])[mask]]
            values = np.zeros(len(rewards))
            values[mask] = checked_scores(self.scorer, images, prompts, self.name)
            rewards = rewards + self.weight * values
            info = {**info, f"reward_{self.name}": values, f"_reward_{self.name}": mask.copy()}
        return obs, rewards, terminated, truncated, info


def wrap_reward(env: Any, scorer: Any, weight: float = 1.0) -> TerminalReward | VectorTerminalReward:
    """``env`` with ``scorer``'s weighted score added at the terminal step: the vector or single-env wrapper,
    whichever ``env`` is."""
    if isinstance(env, gym.vector.VectorEnv):
        return VectorTerminalReward(env, scorer, weight)
    if isinstance(env, gym.Env):
        return TerminalReward(env, scorer, weight)
    raise TypeError(f"a reward wraps a Gymnasium env, got {type(env).__name__}: pass "
                    "gym.make_vec('DenoisingDiffusion-v0', ...) or gym.make('DenoisingDiffusion-v0', ...)")


def from_callable(env: Any, fn: ScoreFn, *, name: str | None = None, weight: float = 1.0) -> Any:
    """``env`` with ``fn(images, prompts) -> (B,)``'s score added at the terminal step (vector or single env)."""
    if not callable(fn):
        raise TypeError(f"from_callable needs a function fn(images, prompts) -> rewards, got {type(fn).__name__}")
    return wrap_reward(env, FunctionScorer(fn, name), weight)
