"""A task is what a benchmark or a training job needs to know about a model: how to build it, its prompt sets
(training, the fixed evaluation set, held out) and its judge (a check, with no learned reward, of whether an image
shows what its prompt asks). Tasks are data, registered by name, as Gymnasium registers env ids.

``gym.make("DenoisingDiffusion-v0", model=name)`` builds a registered task's model and trains on its prompts; the
training job, the held-out monitor and the benchmarks ask ``env.unwrapped.task`` for the rest and never branch on
model names. Adding a model is one file that calls :func:`register_task` (see ``ddpo_env/tasks/shapes.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ddpo_env.backends.base import DiffusionBackend

#: Prompts of the fixed evaluation set, each sampled with this many seeds.
EVAL_SEEDS_PER_PROMPT = 10


@dataclass(frozen=True)
class Judge:
    """How many images show what their prompt asks, by a program or a fixed classifier (not the reward).

    ``function(images, prompts) -> float | None``: images uint8 (B, H, W, 3), the share in [0, 1] of images that pass
    (None when a prompt is not one the judge understands). Given as a callable, or as ``"module:function"`` imported
    on first use (so a task in ``ddpo_env`` can name a judge that lives in ``rewards``)."""

    function: str | Callable[[np.ndarray, list[str]], float | None]
    metric: str
    """Key in metrics.json: ``<metric>_before`` / ``<metric>_after``."""
    label: str
    """A few words for picture titles, e.g. "digits read"."""
    description: str
    """What is counted, for the job's summary, e.g. "digits the classifier reads as prompted"."""

    def __call__(self, images: np.ndarray, prompts: list[str]) -> float | None:
        function = self.function
        if isinstance(function, str):
            module, _, name = function.partition(":")
            function = getattr(importlib.import_module(module), name)
        return function(images, list(prompts))


@dataclass(frozen=True)
class Task:
    """A model with its prompt sets and judge (every prompt set is a function, called when needed).

    Args:
        name: the registered name, also the ``model=`` that builds it.
        build: () -> the task's model as a :class:`~ddpo_env.backends.base.DiffusionBackend` (CPU, float32).
        description: one line for listings and ``--help``.
        world: what an embedded model draws (``model_index.json``'s "world"): a model folder of that world gets this
            task's prompts and judge.
        train_prompts: the prompts RL trains on; None: the model's own default prompts.
        eval_prompts: the fixed evaluation set's prompts (up to ten, each sampled with ten seeds); None: the first
            ten training prompts.
        held_out_prompts: prompts never trained on, for the held-out monitor; None: the user must give a file.
        judge: how many images show what their prompt asks; None: none is known for this model.
    """

    name: str
    build: Callable[[], DiffusionBackend]
    description: str = ""
    world: str | None = None
    train_prompts: Callable[[], Sequence[str]] | None = None
    eval_prompts: Callable[[], Sequence[str]] | None = None
    held_out_prompts: Callable[[], Sequence[str]] | None = None
    judge: Judge | None = None

    def training_prompts(self, backend: DiffusionBackend) -> tuple[str, ...]:
        """The prompts the env draws from when the user gives none."""
        return tuple(self.train_prompts() if self.train_prompts is not None else backend.default_prompts)

    def evaluation_prompts(self, backend: DiffusionBackend) -> list[str]:
        """The fixed evaluation set: each of up to ten prompts ``EVAL_SEEDS_PER_PROMPT`` times, in order."""
        base = list(self.eval_prompts() if self.eval_prompts is not None else self.training_prompts(backend))[:10]
        return [p for p in base for _ in range(EVAL_SEEDS_PER_PROMPT)]


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make ``task`` known by its name (``model=task.name``); a second, different task of the same name is refused."""
    if not isinstance(task, Task):
        raise TypeError(f"register_task takes a ddpo_env.tasks.Task, got {type(task).__name__}")
    if task.name in _TASKS and _TASKS[task.name] != task:
        raise ValueError(f"a task named {task.name!r} is already registered: choose another name")
    _TASKS[task.name] = task
    return task


def task_names() -> list[str]:
    """The registered task names, in registration order."""
    return list(_TASKS)


def is_task_spec(model: Any) -> bool:
    """Whether ``model`` names a task: a registered name, or ``"package.module:attribute"`` (a Task object)."""
    return isinstance(model, Task) or (isinstance(model, str) and (model in _TASKS or _is_import_path(model)))


def get_task(spec: str | Task) -> Task:
    """The task ``spec`` names: a registered name, a :class:`Task`, or ``"package.module:attribute"``, which is
    imported (a file that registers tasks as it is imported may also be named this way, by one of its tasks)."""
    if isinstance(spec, Task):
        return spec
    if spec in _TASKS:
        return _TASKS[spec]
    if isinstance(spec, str) and _is_import_path(spec):
        module, _, attribute = spec.partition(":")
        try:
            found = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"cannot import the task {spec!r} ({error}): give package.module:attribute of a "
                             "ddpo_env.tasks.Task on the Python path") from None
        if not isinstance(found, Task):
            raise ValueError(f"{spec!r} is a {type(found).__name__}, not a ddpo_env.tasks.Task")
        return found
    raise ValueError(f"unknown task {spec!r}: use one of {task_names()} or package.module:attribute of a Task")


def task_for_world(world: str | None) -> Task | None:
    """The registered task of an embedded model's world ("digits", "shapes"), if any."""
    return next((t for t in _TASKS.values() if world is not None and t.world == world), None)


def task_of(model: Any, backend: DiffusionBackend) -> Task:
    """The task of an env built with ``model=model`` on ``backend``: the named task; else, for a model folder of a
    known world, that world's task on this model; else the model alone (its default prompts, no held-out set, no
    judge)."""
    if is_task_spec(model):
        return get_task(model)
    world_task = task_for_world(getattr(backend, "world", None))
    if world_task is not None:
        return replace(world_task, name=backend.name, build=lambda: backend)
    return Task(name=backend.name, build=lambda: backend, description=f"the model {backend.name}")


def _is_import_path(text: str) -> bool:
    module, sep, attribute = text.partition(":")
    return bool(sep) and bool(attribute) and all(part.isidentifier() for part in (*module.split("."), attribute))
