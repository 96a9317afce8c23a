"""Agents that train a diffusion policy on DenoisingDiffusion-v0: DDPO-IS, DDPO-SF, RWR and sparse RWR.

They share one rollout loop (:mod:`agents.base`), a stable-baselines3 policy (:mod:`agents.policy`) and a
constructor: ``make_agent("ddpo-is", env, samples_per_epoch=64, ...)``. Imports ``ddpo_env`` and ``rewards``.
"""

from __future__ import annotations

from typing import Any

from agents.base import DiffusionAgent
from agents.config import AgentConfig, DDPOISConfig, DDPOSFConfig, RWRConfig, SparseRWRConfig
from agents.ddpo import DDPO_IS
from agents.policy import DiffusionPolicy
from agents.reinforce import DDPO_SF
from agents.rwr import RWR, SparseRWR
from agents.stat_tracking import PerPromptStatTracker

AGENTS: dict[str, type[DiffusionAgent]] = {
    "ddpo-is": DDPO_IS,
    "ddpo-sf": DDPO_SF,
    "rwr": RWR,
    "rwr-sparse": SparseRWR,
}


def make_agent(name: str, env: Any, **kwargs: Any) -> DiffusionAgent:
    """Build the agent called ``name`` ("ddpo-is" | "ddpo-sf" | "rwr" | "rwr-sparse") on ``env``."""
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}: use one of {sorted(AGENTS)}")
    return AGENTS[name](env, **kwargs)


__all__ = [
    "AGENTS",
    "DDPO_IS",
    "DDPO_SF",
    "RWR",
    "AgentConfig",
    "DDPOISConfig",
    "DDPOSFConfig",
    "DiffusionAgent",
    "DiffusionPolicy",
    "PerPromptStatTracker",
    "RWRConfig",
    "SparseRWR",
    "SparseRWRConfig",
    "make_agent",
]
