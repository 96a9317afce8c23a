"""Group-relative advantages (GRPO: Shao et al. 2024; Flow-GRPO, DanceGRPO 2025).

Each rollout holds k samples of every prompt (the env's ``group_size``). A sample's advantage is its reward
normalised within its prompt's group g in this rollout:

    Â_i = (r_i − mean_g r) / (std_g r + ε)          ("group" std)
    Â_i = (r_i − mean_g r) / (std r + ε)            ("global" std: the whole rollout's, as Flow-GRPO offers)

A group whose rewards are all equal (std_g = 0, e.g. a binary reward every sample passed) carries no signal: its
advantages are masked to 0 rather than left to rounding noise amplified by 1/ε, and such groups are counted.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from agents.stat_tracking import EPS

GROUP_STDS = ("group", "global")


class GroupAdvantages(NamedTuple):
    advantages: np.ndarray  # (N,) float64
    num_groups: int
    zero_std_groups: int  # groups masked to 0


def group_advantages(prompts: list[str], rewards: np.ndarray, std: str = "group") -> GroupAdvantages:
    """Advantages of ``rewards`` (N,) normalised within the groups of equal ``prompts`` (N)."""
    if std not in GROUP_STDS:
        raise ValueError(f"unknown group std {std!r}: use one of {list(GROUP_STDS)}")
    rewards = np.asarray(rewards, dtype=np.float64)
    if len(prompts) != len(rewards):
        raise ValueError(f"got {len(prompts)} prompts for {len(rewards)} rewards")
    advantages = np.zeros_like(rewards)
    groups = dict.fromkeys(prompts)  # unique, in order of first appearance
    masked = 0
    for prompt in groups:
        members = np.array([p == prompt for p in prompts])
        group = rewards[members]
        if group.std() == 0:
            masked += 1
            continue
        scale = group.std() if std == "group" else rewards.std()
        advantages[members] = (group - group.mean()) / (scale + EPS)
    return GroupAdvantages(advantages, len(groups), masked)
