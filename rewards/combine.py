"""Rewards by name, and several at once: ``add_reward(env, "jpeg_compressibility", upscale=4)``,
``weighted_sum(env, {"jpeg_compressibility": 1.0, "mypackage.rewards:sharpness": 0.5})``.

Wrappers add ``weight × score`` to the env's reward, so stacking them is a weighted sum; each score stays visible in
``info["reward_<name>"]`` (and an agent logs each as ``rollout/reward_<name>``).

A reward is named by a key of ``rewards.REWARDS`` (:data:`BUILTIN_REWARDS`), by an import path
``package.module:attribute``, or by a key of ``custom`` (name → object). The object is a scorer class (built as
``cls(**options)``; a ``device`` it takes defaults to the env's), a scorer object, or a function
``fn(images, prompts) -> (B,) floats`` (named after the term).
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Mapping
from typing import Any

from rewards.scorer import FunctionScorer
from rewards.wrappers import wrap_reward

#: The built-in scorers: name → (module, class). A module is imported when its reward is first used (several load
#: torch or models); ``rewards.REWARDS`` is :func:`builtin_rewards`.
BUILTIN_REWARDS: dict[str, tuple[str, str]] = {
    "jpeg_compressibility": ("rewards.jpeg", "JpegCompressibility"),
    "jpeg_incompressibility": ("rewards.jpeg", "JpegIncompressibility"),
    "digit_alignment": ("rewards.digits", "DigitAlignment"),
    "digit_margin": ("rewards.digits", "DigitMargin"),
    "aesthetic": ("rewards.aesthetic", "AestheticScore"),
    "alignment": ("rewards.alignment", "PromptAlignment"),
    "geneval": ("rewards.geneval", "GenEval"),
    "geneval_binary": ("rewards.geneval", "GenEvalBinary"),
    "geneval_strict": ("rewards.geneval", "GenEvalStrict"),
}


def builtin_rewards() -> dict[str, type]:
    """The built-in scorer classes by name (imports all of them)."""
    return {name: _builtin(name) for name in BUILTIN_REWARDS}


def _builtin(name: str) -> type:
    module, cls = BUILTIN_REWARDS[name]
    return getattr(importlib.import_module(module), cls)


def resolve_reward(name: str, custom: Mapping[str, Any] | None = None) -> Any:
    """The scorer class, object or function a reward ``name`` stands for (see the module docstring)."""
    if custom and name in custom:
        return custom[name]
    if name in BUILTIN_REWARDS:
        return _builtin(name)
    if ":" in name:
        module, _, attribute = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"reward {name!r} cannot be imported ({error}): give package.module:function with "
                             "the package importable (installed or on PYTHONPATH)") from None
    known = sorted(BUILTIN_REWARDS) + sorted(custom or {})
    raise ValueError(f"unknown reward {name!r}: use one of {known} or an import path package.module:function")


def make_scorer(reward: Any, env: Any = None, options: Mapping[str, Any] | None = None,
                name: str | None = None) -> Any:
    """A scorer from a scorer class (built with ``options``; ``device`` from ``env`` when the class takes one and
    ``options`` lack it), a scorer object or a function (named ``name``)."""
    label = name or getattr(reward, "__name__", type(reward).__name__)
    if isinstance(reward, type):
        options = dict(options or {})
        parameters = inspect.signature(reward).parameters
        if "device" in parameters and "device" not in options and hasattr(getattr(env, "unwrapped", None), "device"):
            options["device"] = str(env.unwrapped.device)
        return reward(**options)
    if options:
        raise ValueError(f"reward {label!r} is {'a function' if inspect.isfunction(reward) else 'a scorer object'}: "
                         f"it takes no options (got {sorted(options)})")
    if not callable(reward):
        raise TypeError(f"reward {label!r} is a {type(reward).__name__}: give a scorer class, a scorer object or a "
                        "function fn(images, prompts) -> rewards")
    return reward if hasattr(reward, "name") else FunctionScorer(reward, name)  # a function: named after its term


def add_reward(env: Any, reward: Any, weight: float = 1.0, *, custom: Mapping[str, Any] | None = None,
               **options: Any) -> Any:
    """``env`` wrapped with ``reward`` at ``weight``: a name (see the module docstring), a scorer class, a scorer
    object or a function; ``options`` build a scorer class, e.g. ``add_reward(env, "jpeg_compressibility",
    upscale=4)``."""
    name = reward.rpartition(":")[2] if isinstance(reward, str) else None  # a function is named after its term
    if isinstance(reward, str):
        reward = resolve_reward(reward, custom)
    return wrap_reward(env, make_scorer(reward, env, options, name), weight)


def weighted_sum(env: Any, weights: dict[str, float], options: dict[str, dict] | None = None,
                 custom: Mapping[str, Any] | None = None) -> Any:
    """Wrap ``env`` with every reward named in ``weights``, each with its weight.

    Args:
        weights: reward (a built-in name, ``package.module:function`` or a key of ``custom``) → weight (non-zero,
            finite).
        options: reward → the scorer's keyword arguments, e.g. {"jpeg_compressibility": {"upscale": 4}}.
        custom: your own rewards by name: a scorer class or object, or a function fn(images, prompts).
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
        env = add_reward(env, name, weight, custom=custom, **options.get(name, {}))
    return env
