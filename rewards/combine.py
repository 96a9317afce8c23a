"""Several rewards at once, built-in or your own: ``weighted_sum(env, {"jpeg_compressibility": 1.0,
"mypackage.rewards:sharpness": 0.5})``.

Reward wrappers add ``weight × score`` to the env's reward, so stacking them is a weighted sum; each score stays
visible in ``info["reward_<name>"]`` (and an agent logs each as ``rollout/reward_<name>``).

A term is named by a key of ``rewards.REWARDS``, by an import path ``package.module:attribute``, or by a key of
``custom`` (name → object). The object is a :class:`~rewards.base.TerminalReward` subclass (built as
``cls(env, weight=w, **options)``) or a function ``fn(images, prompts) -> (B,) floats`` (wrapped with
:func:`~rewards.callable.from_callable`, named after the term).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from typing import Any


def resolve_reward(name: str, custom: Mapping[str, Any] | None = None) -> Any:
    """The reward class or function a term ``name`` stands for (see the module docstring)."""
    from rewards import REWARDS

    if custom and name in custom:
        return custom[name]
    if name in REWARDS:
        return REWARDS[name]
    if ":" in name:
        module, _, attribute = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"reward {name!r} cannot be imported ({error}): give package.module:function with "
                             "the package importable (installed or on PYTHONPATH)") from None
    known = sorted(REWARDS) + sorted(custom or {})
    raise ValueError(f"unknown reward {name!r}: use one of {known} or an import path package.module:function")


def add_reward(env: Any, name: str, weight: float = 1.0, options: Mapping[str, Any] | None = None,
               custom: Mapping[str, Any] | None = None) -> Any:
    """``env`` wrapped with the term ``name`` at ``weight``."""
    from rewards.base import TerminalReward
    from rewards.callable import from_callable

    reward = resolve_reward(name, custom)
    if isinstance(reward, type) and issubclass(reward, TerminalReward):
        return reward(env, weight=weight, **(options or {}))
    if callable(reward):
        if options:
            raise ValueError(f"reward {name!r} is a function: it takes no options (got {sorted(options)})")
        return from_callable(env, reward, name=name.rpartition(":")[2], weight=weight)
    raise TypeError(f"reward {name!r} is a {type(reward).__name__}: give a TerminalReward subclass or a function "
                    "fn(images, prompts) -> rewards")


def weighted_sum(env: Any, weights: dict[str, float], options: dict[str, dict] | None = None,
                 custom: Mapping[str, Any] | None = None) -> Any:
    """Wrap ``env`` with every reward named in ``weights``, each with its weight.

    Args:
        weights: term (a built-in name, ``package.module:function`` or a key of ``custom``) → weight (non-zero,
            finite).
        options: term → constructor keyword arguments, e.g. {"jpeg_compressibility": {"upscale": 4}}.
        custom: your own rewards by name: a TerminalReward subclass or a function fn(images, prompts).
    """
    if not weights:
        raise ValueError("weighted_sum needs at least one reward: weights={'jpeg_compressibility': 1.0, ...}")
    options = options or {}
    unweighted = sorted(set(options) - set(weights))
    if unweighted:
        raise ValueError(f"weighted_sum: options for reward(s) {unweighted}, which have no weight")
    for name, weight in weights.items():
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight != 0):
            raise ValueError(f"weighted_sum: the weight of {name!r} must be a finite non-zero number, got {weight!r}")
        resolve_reward(name, custom)  # every term is known before any is built
    for name, weight in weights.items():
        env = add_reward(env, name, weight, options.get(name), custom)
    return env
