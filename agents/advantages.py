"""Advantages of a rollout: group-relative (GRPO: Shao et al. 2024; Flow-GRPO, DanceGRPO 2025), per-prompt stat
tracking (DDPO, :mod:`agents.stat_tracking`) or normalised over the whole batch; then clipped.

Each rollout holds k samples of every prompt (the env's ``group_size``). A sample's advantage is its reward
normalised within its prompt's group g in this rollout:

    Â_i = (r_i − mean_g r) / (std_g r + ε)          ("group" std)
    Â_i = (r_i − mean_g r) / (std r + ε)            ("global" std: the whole rollout's, as Flow-GRPO offers)

A group whose rewards are all equal (std_g = 0, e.g. a binary reward every sample passed) carries no signal: its
advantages are masked to 0 rather than left to rounding noise amplified by 1/ε, and such groups are counted.

With ``group_reward="win_rate"`` (Pref-GRPO, arXiv 2508.20751) each reward is first replaced by the sample's win
rate against the other members of its group, ties counting half,

    w_i = (1 / (k − 1)) · Σ_{j ≠ i} ( 1[r_i > r_j] + ½·1[r_i = r_j] )

and the win rates are normalised as above: only the order of the scores within a group counts, so a gap of 0.001
weighs as much as a gap of 1 and no sample's tiny lead is blown up by a small group std. (Pref-GRPO compares the
images with a pairwise preference model; comparing scalar rewards is its special case.)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from agents.stat_tracking import EPS, PerPromptStatTracker

GROUP_STDS = ("group", "global")
GROUP_REWARDS = ("reward", "win_rate")


class GroupAdvantages(NamedTuple):
    advantages: np.ndarray  # (N,) float64
    num_groups: int
    zero_std_groups: int  # groups masked to 0


def win_rates(prompts: list[str], rewards: np.ndarray) -> np.ndarray:
    """Each sample's win rate against the other samples of its prompt's group (ties count ½; a group of one: ½)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    rates = np.full_like(rewards, 0.5)
    for prompt in dict.fromkeys(prompts):
        members = np.flatnonzero([p == prompt for p in prompts])
        if len(members) < 2:
            continue
        r = rewards[members]
        wins = (r[:, None] > r[None, :]).sum(1) + 0.5 * ((r[:, None] == r[None, :]).sum(1) - 1)
        rates[members] = wins / (len(members) - 1)
    return rates


def group_advantages(prompts: list[str], rewards: np.ndarray, std: str = "group", reward: str = "reward"
                     ) -> GroupAdvantages:
    """Advantages of ``rewards`` (N,) normalised within the groups of equal ``prompts`` (N); with ``reward=
    "win_rate"`` of the samples' win rates within their groups."""
    if std not in GROUP_STDS:
        raise ValueError(f"unknown group std {std!r}: use one of {list(GROUP_STDS)}")
    if reward not in GROUP_REWARDS:
        raise ValueError(f"unknown group reward {reward!r}: use one of {list(GROUP_REWARDS)}")
    rewards = np.asarray(rewards, dtype=np.float64)
    if len(prompts) != len(rewards):
        raise ValueError(f"got {len(prompts)} prompts for {len(rewards)} rewards")
    if reward == "win_rate":
        rewards = win_rates(prompts, rewards)
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
        groups = group_advantages(prompts, rewards, config.group_std, config.group_reward)
        advantages = groups.advantages
        logs = {"groups": groups.num_groups, "zero_std_groups": groups.zero_std_groups}
    elif config.per_prompt_stat_tracking:
        advantages = stat_tracker.update(prompts, rewards)
    else:
        advantages = (rewards - rewards.mean()) / (rewards.std() + EPS)
    return np.clip(advantages, -config.adv_clip, config.adv_clip), logs
