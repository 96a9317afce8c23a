"""A single DenoisingDiffusion-v0 env (``gym.make``) as the batched vector env the agents train on."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker

from ddpo_env.vector_env import DenoisingDiffusionVectorEnv


def vectorised(env: Any, verbose: int = 0) -> Any:
    """``env`` if it is a vector env; for a single DenoisingDiffusion-v0 env (``gym.make``), its own batched vector
    env (num_envs=1, ``env.unwrapped.vector``: the same episodes and model) with each ``TerminalReward`` around it
    re-applied as a ``VectorTerminalReward`` in the same order. Other wrappers than gym.make's own cannot be carried
    over: TypeError naming the fix."""
    if isinstance(env, gym.vector.VectorEnv) or not isinstance(env, gym.Env):
        return env
    from rewards.wrappers import TerminalReward, VectorTerminalReward

    rewards, inner = [], env
    while isinstance(inner, gym.Wrapper):
        if type(inner) is TerminalReward:
            rewards.append(inner)
        elif not isinstance(inner, (OrderEnforcing, PassiveEnvChecker)):
            raise TypeError(
                f"the single env is wrapped in {type(inner).__name__}, which the agent cannot carry over to the "
                "vector env it trains on (only TerminalReward is): build the vector env yourself, "
                "gym.make_vec(\"DenoisingDiffusion-v0\", num_envs=..., ...) with a VectorTerminalReward")
        inner = inner.env
    vector = getattr(inner, "vector", None)
    if not isinstance(vector, DenoisingDiffusionVectorEnv):
        raise TypeError(f"the agents train on DenoisingDiffusion-v0, got a single {type(inner).__name__} env: build it "
                        "with gym.make_vec(\"DenoisingDiffusion-v0\", num_envs=..., ...) or "
                        "gym.make(\"DenoisingDiffusion-v0\", ...)")
    for reward in reversed(rewards):  # innermost first
        vector = VectorTerminalReward(vector, reward.scorer, reward.weight)
    if verbose >= 1:
        print(f"Wrapping the env in its DenoisingDiffusionVectorEnv (num_envs=1){' with ' if rewards else ''}"
              + ", ".join(f"VectorTerminalReward({r.name})" for r in rewards))
    return vector
