"""The shapes task: the embedded shapes model (:mod:`ddpo_env.models.shapes`), prompts in GenEval's six categories
(:mod:`ddpo_env.scenes`), judged by the programmatic GenEval-style verifier (:func:`rewards.geneval.verify`).
RL trains on the fixed training prompts; the held-out prompts combine colours, shapes and counts no training saw."""

from __future__ import annotations

from ddpo_env.tasks.registry import Judge, Task, register_task


def _build():
    from ddpo_env.backends.embedded import EmbeddedBackend
    from ddpo_env.models.shapes import SHAPES_DIR

    return EmbeddedBackend(SHAPES_DIR, name="shapes", default_prompts=_train_prompts())


def _train_prompts() -> tuple[str, ...]:
    from ddpo_env.scenes import prompt_set

    return tuple(prompt_set("train"))


def _held_out_prompts() -> list[str]:
    from ddpo_env.scenes import prompt_set

    return list(prompt_set("heldout"))[:10]


SHAPES = register_task(Task(
    name="shapes",
    build=_build,
    description="32×32 scenes of coloured circles, squares and triangles from GenEval-style prompts",
    world="shapes",
    train_prompts=_train_prompts,
    held_out_prompts=_held_out_prompts,
    judge=Judge("rewards.geneval:geneval_accuracy", metric="geneval_accuracy", label="geneval pass",
                description="images the geneval verifier passes"),
))
