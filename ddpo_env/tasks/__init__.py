"""Tasks: a model, its prompt sets and its judge, registered by name (:mod:`ddpo_env.tasks.registry`).

Shipped: ``"default"`` (digits, :mod:`~ddpo_env.tasks.digits`), ``"shapes"`` (:mod:`~ddpo_env.tasks.shapes`),
``"tiny"`` and ``"tiny-sd3"`` (:mod:`~ddpo_env.tasks.tiny`). Your own: one file that calls :func:`register_task`,
then ``gym.make("DenoisingDiffusion-v0", model="package.module:TASK")`` or ``ddpo train --model package.module:TASK``.
"""

from ddpo_env.tasks import digits, shapes, tiny  # noqa: F401  (each registers its task)
from ddpo_env.tasks.registry import (
    EVAL_SEEDS_PER_PROMPT,
    Judge,
    Task,
    get_task,
    is_task_spec,
    register_task,
    task_for_world,
    task_names,
    task_of,
)

__all__ = [
    "EVAL_SEEDS_PER_PROMPT",
    "Judge",
    "Task",
    "get_task",
    "is_task_spec",
    "register_task",
    "task_for_world",
    "task_names",
    "task_of",
]
