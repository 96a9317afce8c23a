"""Several rewards at once: ``weighted_sum(env, {"jpeg_compressibility": 1.0, "digit_alignment": 2.0})``.

Reward wrappers add ``weight × score`` to the env's reward, so stacking them is a weighted sum; each score stays
visible in ``info["reward_<name>"]``.
"""

from __future__ import annotations

import math
from typing import Any


def weighted_sum(env: Any, weights: dict[str, float], options: dict[str, dict] | None = None) -> Any:
    """Wrap ``env`` with every reward named in ``weights`` (see ``rewards.REWARDS``), each with its weight.

    Args:
        weights: reward name → weight (non-zero, finite).
        options: reward name → constructor keyword arguments, e.g. {"jpeg_compressibility": {"upscale": 4}}.
    """
    from rewards import REWARDS, make_reward

    if not weights:
        raise ValueError("weighted_sum needs at least one reward: weights={'jpeg_compressibility': 1.0, ...}")
    options = options or {}
    unknown = sorted(set(weights) - set(REWARDS)) + sorted(set(options) - set(weights))
    if unknown:
        raise ValueError(f"weighted_sum: unknown or unweighted reward(s) {unknown}: use names from {sorted(REWARDS)}")
    for name, weight in weights.items():
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight != 0):
            raise ValueError(f"weighted_sum: the weight of {name!r} must be a finite non-zero number, got {weight!r}")
        env = make_reward(name, env, weight=weight, **options.get(name, {}))
    return env
