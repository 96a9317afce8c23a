"""Random-weight miniatures of real pipelines, for tests and smoke runs: no judge, the models' default prompts."""

from __future__ import annotations

from ddpo_env.tasks.registry import Task, register_task


def _tiny():
    from ddpo_env.backends.sd import TinyBackend

    return TinyBackend()


def _tiny_sd3():
    from ddpo_env.backends.sd3 import TinySD3Backend

    return TinySD3Backend()


TINY = register_task(Task(name="tiny", build=_tiny, description="a random tiny Stable Diffusion (4×8×8 latents)"))
TINY_SD3 = register_task(Task(name="tiny-sd3", build=_tiny_sd3,
                              description="a random tiny Stable Diffusion 3 (flow matching, MMDiT)"))
