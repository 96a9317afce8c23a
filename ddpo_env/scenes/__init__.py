"""The shapes world: a procedural scene generator, its prompts in GenEval's categories, and prompt sets with
held-out combinations. The ``shapes`` model (:mod:`ddpo_env.models.shapes`) is trained on it and the ``geneval``
reward (:mod:`rewards.geneval`) checks images against it. Pure numpy; no download."""

from ddpo_env.scenes.prompts import EXAMPLES, parse_prompt, prompt_for, wordings
from ddpo_env.scenes.render import IMAGE_SIZE, PALETTE, PlacedObject, Scene, draw, layout, make_scene, sample_spec
from ddpo_env.scenes.sets import HELDOUT_CATEGORIES, SPLITS, prompt_set
from ddpo_env.scenes.spec import (
    CATEGORIES,
    COLOURS,
    COUNT_WORDS,
    HELDOUT_COUNTS,
    HELDOUT_PAIRS,
    RELATIONS,
    SHAPES,
    ObjectSpec,
    SceneSpec,
    violations,
)

__all__ = [
    "CATEGORIES",
    "COLOURS",
    "COUNT_WORDS",
    "EXAMPLES",
    "HELDOUT_CATEGORIES",
    "HELDOUT_COUNTS",
    "HELDOUT_PAIRS",
    "IMAGE_SIZE",
    "PALETTE",
    "RELATIONS",
    "SHAPES",
    "SPLITS",
    "ObjectSpec",
    "PlacedObject",
    "Scene",
    "SceneSpec",
    "draw",
    "layout",
    "make_scene",
    "parse_prompt",
    "prompt_for",
    "prompt_set",
    "sample_spec",
    "violations",
    "wordings",
]
