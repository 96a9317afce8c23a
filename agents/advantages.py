"""Advantages of a rollout: group-relative (GRPO: Shao et al. 2024; Flow-GRPO, DanceGRPO 2025), per-prompt stat
tracking (DDPO, :mod:`agents.stat_tracking`) or normalised over the whole batch; then clipped.

Each rollout holds k samples of every prompt (the env's ``group_size``). A sample's advantage is its reward
normalised within its prompt's group g in this rollout:

    Â_i = (r_i − mean_g r) / (std_g r + ε)          ("group" std)
    Â_i = (r_i − mean_g r) / (std r + ε)            ("global" std: the whole rollout's, as Flow-GRPO offers)

A group whose rewards are all equal (std_g = 0, e.g. a binary reward every sample passed) carries no signal: its
advantages are masked to 0 rather than left to rounding noise amplified by 1/ε, and such groups are counted.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from agents.stat_tracking import EPS, PerPromptStatTracker

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


def rollout_advantages(config: Any, stat_tracker: PerPromptStatTracker, prompts: list[str], rewards: np.ndarray
                       ) -> tuple[np.ndarray, dict[str, int]]:
    """The advantages of a whole rollout by ``config`` (an :class:`~agents.config.AgentConfig`): group-relative
    with ``group_advantages``, else per prompt with ``per_prompt_stat_tracking``, else over the batch; clipped to
    ±``adv_clip``. Also what to log (the group counts)."""
    logs: dict[str, int] = {}
    if config.group_advantages:
        groups = group_advantages(prompts, rewards, config.group_std)
        advantages = groups.advantages
        logs = {"groups": groups.num_groups, "zero_std_groups": groups.zero_std_groups}
    elif config.per_prompt_stat_tracking:
        advantages = stat_tracker.update(prompts, rewards)
    else:
        advantages = (rewards - rewards.mean()) / (rewards.std() + EPS)
    return np.clip(advantages, -config.adv_clip, config.adv_clip), logs
