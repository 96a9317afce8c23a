"""Fixed prompt sets of the shapes world: the training prompts RL trains on and the held-out ones it never sees.

    prompt_set("train")     up to 20 distinct prompts per category, none with a held-out combination
    prompt_set("heldout")   up to 20 per category that has held-out combinations (counting, colors, position,
                            color_attr), each containing one

Both are drawn once from a fixed seed, so every run and benchmark uses the same lists; categories alternate, so any
prefix of a set covers them evenly.
"""

from __future__ import annotations

import functools

import numpy as np

from ddpo_env.scenes.prompts import prompt_for
from ddpo_env.scenes.render import sample_spec
from ddpo_env.scenes.spec import CATEGORIES

SPLITS = ("train", "heldout")
HELDOUT_CATEGORIES = ("counting", "colors", "position", "color_attr")


@functools.lru_cache(maxsize=16)
def prompt_set(split: str = "train", per_category: int = 20, seed: int = 0) -> tuple[str, ...]:
    """The fixed prompts of ``split``, categories interleaved (see the module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"unknown prompt split {split!r}: use one of {SPLITS}")
    categories = CATEGORIES if split == "train" else HELDOUT_CATEGORIES
    rng = np.random.default_rng(seed)
    columns = []
    for category in categories:
        chosen: dict[str, None] = {}
        for _ in range(200 * per_category):  # small categories run out of distinct prompts before per_category
            if len(chosen) == per_category:
                break
            chosen[prompt_for(sample_spec(category, rng, heldout=split == "heldout"), rng)] = None
        columns.append(list(chosen))
    return tuple(column[row] for row in range(per_category) for column in columns if row < len(column))
