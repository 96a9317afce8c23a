"""The default task: the embedded digits model (:mod:`ddpo_env.models.digits`), free-text prompts naming a digit,
judged by the shipped digit classifier."""

from __future__ import annotations

from ddpo_env.tasks.registry import Judge, Task, register_task


def _build():
    from ddpo_env.backends.embedded import EmbeddedBackend
    from ddpo_env.models.digits import DEFAULT_DIR

    return EmbeddedBackend(DEFAULT_DIR, name="default", default_prompts=_train_prompts())


def _train_prompts() -> tuple[str, ...]:
    from ddpo_env.models.digits import digit_prompt

    return tuple(digit_prompt(d, "a handwritten digit {n}") for d in range(10))


def _held_out_prompts() -> list[str]:
    """The ten digits in a wording the model never saw in training ("an image of the digit seven")."""
    from ddpo_env.models.digits import HELDOUT_TEMPLATES, digit_prompt

    return [digit_prompt(d, HELDOUT_TEMPLATES[0]) for d in range(10)]


DIGITS = register_task(Task(
    name="default",
    build=_build,
    description="16×16 handwritten digits from free-text prompts (the embedded default model)",
    world="digits",
    train_prompts=_train_prompts,
    held_out_prompts=_held_out_prompts,
    judge=Judge("rewards.digits:digit_agreement", metric="digit_agreement", label="digits read",
                description="digits the classifier reads as prompted"),
))
