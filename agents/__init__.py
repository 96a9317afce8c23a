"""Agents that train a diffusion policy on DenoisingDiffusion-v0: DDPO-IS, DDPO-SF, RWR, sparse RWR, AWM and
DiffusionNFT.

They share one rollout loop (:mod:`agents.base`), a stable-baselines3 policy (:mod:`agents.policy`) and a
constructor: ``make_agent("ddpo-is", env, samples_per_epoch=64, ...)``. Imports ``ddpo_env`` and ``rewards``.

``import agents`` imports no torch: the config classes (:mod:`agents.config`, with ``AGENT_CONFIGS``, each agent's
name → its config class) load at once, the algorithms and ``AGENTS`` (name → algorithm class) on first use
(PEP 562), so the command line can check its flags before any model code loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from agents.config import (
    AGENT_CONFIGS,
    AgentConfig,
    AWMConfig,
    DDPOISConfig,
    DDPOSFConfig,
    DiffusionNFTConfig,
    RWRConfig,
    SparseRWRConfig,
)
from ddpo_env.lazy import lazy_attributes

if TYPE_CHECKING:
    from agents.base import DiffusionAgent

#: Each heavy public name → the module that defines it, imported on first access.
_LAZY = {
    "DiffusionAgent": "agents.base",
    "DDPO_IS": "agents.ddpo",
    "DiffusionPolicy": "agents.policy",
    "DDPO_SF": "agents.reinforce",
    "RWR": "agents.rwr",
    "SparseRWR": "agents.rwr",
    "AWM": "agents.awm",
    "DiffusionNFT": "agents.nft",
    "PerPromptStatTracker": "agents.stat_tracking",
}


def _algorithm(name: str) -> type[DiffusionAgent]:
    module, _, cls = AGENT_CONFIGS[name].algorithm.partition(":")
    return getattr(importlib.import_module(module), cls)


def _agents() -> dict[str, type[DiffusionAgent]]:
    """``AGENTS``: each agent's name → its class (imports the algorithms, and so torch)."""
    return {key: _algorithm(key) for key in AGENT_CONFIGS}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, {"AGENTS": _agents})


def make_agent(name: str, env: Any, **kwargs: Any) -> DiffusionAgent:
    """Build the agent called ``name`` (a key of ``AGENT_CONFIGS``: "ddpo-is", "ddpo-sf", "rwr", "rwr-sparse", "awm",
    "diffusion-nft") on ``env`` with its config's
    fields as keyword arguments (or ``config=``).

    ``env``: a DenoisingDiffusion-v0 vector env (``gym.make_vec``, possibly reward-wrapped), its SB3VecEnv, or a
    single env (``gym.make``, possibly with ``TerminalReward``), which is vectorised as its own 1-env vector env, as
    stable-baselines3 wraps a single env in a DummyVecEnv (printed with ``verbose=1``). A later agent built on the
    same env (another ``make_agent``, or ``Class.load(path, env=env)``) takes its UNet over; this one then raises
    on use."""
    if name not in AGENT_CONFIGS:
        raise ValueError(f"unknown agent {name!r}: use one of {sorted(AGENT_CONFIGS)}")
    return _algorithm(name)(env, **kwargs)


__all__ = [
    "AGENTS",
    "AGENT_CONFIGS",
    "AWM",
    "DDPO_IS",
    "DDPO_SF",
    "RWR",
    "AWMConfig",
    "AgentConfig",
    "DDPOISConfig",
    "DDPOSFConfig",
    "DiffusionAgent",
    "DiffusionNFT",
    "DiffusionNFTConfig",
    "DiffusionPolicy",
    "PerPromptStatTracker",
    "RWRConfig",
    "SparseRWR",
    "SparseRWRConfig",
    "make_agent",
]
