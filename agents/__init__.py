"""Agents that train a diffusion policy on DenoisingDiffusion-v0: DDPO-IS, DDPO-SF, RWR and sparse RWR.

They share one rollout loop (:mod:`agents.base`), a stable-baselines3 policy (:mod:`agents.policy`) and a
constructor: ``make_agent("ddpo-is", env, samples_per_epoch=64, ...)``. Imports ``ddpo_env`` and ``rewards``.

``import agents`` imports no torch: the config classes (:mod:`agents.config`, with ``AGENT_CONFIGS``, each agent's
name → its config class) load at once, the algorithms and ``AGENTS`` (name → algorithm class) on first use
(PEP 562), so the command line can check its flags before any model code loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from agents.config import AGENT_CONFIGS, AgentConfig, DDPOISConfig, DDPOSFConfig, RWRConfig, SparseRWRConfig

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
    "PerPromptStatTracker": "agents.stat_tracking",
}
#: AGENTS' entries: name → (module, class); the same names as AGENT_CONFIGS.
_ALGORITHMS = {"ddpo-is": ("agents.ddpo", "DDPO_IS"), "ddpo-sf": ("agents.reinforce", "DDPO_SF"),
               "rwr": ("agents.rwr", "RWR"), "rwr-sparse": ("agents.rwr", "SparseRWR")}


def __getattr__(name: str) -> Any:
    if name == "AGENTS":
        value: Any = {key: getattr(importlib.import_module(module), cls) for key, (module, cls) in _ALGORITHMS.items()}
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'agents' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "AGENTS"})


def make_agent(name: str, env: Any, **kwargs: Any) -> DiffusionAgent:
    """Build the agent called ``name`` ("ddpo-is" | "ddpo-sf" | "rwr" | "rwr-sparse") on ``env``."""
    if name not in AGENT_CONFIGS:
        raise ValueError(f"unknown agent {name!r}: use one of {sorted(AGENT_CONFIGS)}")
    module, cls = _ALGORITHMS[name]
    return getattr(importlib.import_module(module), cls)(env, **kwargs)


__all__ = [
    "AGENTS",
    "AGENT_CONFIGS",
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
