"""Tasks (ddpo_env.tasks): a model with its prompt sets and judge, registered by name; the job asks the task."""

import json
import os
import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest

import ddpo_env
from ddpo_env.tasks import Judge, Task, get_task, register_task, task_names, task_of
from tests.conftest import TINY

#: A task of one's own, on the tiny random model, in one file: its prompts, held-out prompts and judge.
TASK_FILE = textwrap.dedent('''
    """Brightness on the tiny model: a task in one file."""
    import numpy as np

    from ddpo_env.tasks import Judge, Task, register_task


    def _build():
        from ddpo_env.backends import load_backend

        return load_backend("tiny")


    def bright_share(images, prompts):
        return float((images.mean(axis=(1, 2, 3)) > 127).mean())


    BRIGHT = register_task(Task(
        name="tiny-bright", build=_build, description="bright images from the tiny model",
        train_prompts=lambda: ["a bright square", "a bright circle"],
        eval_prompts=lambda: ["a bright square"],
        held_out_prompts=lambda: ["a bright triangle"],
        judge=Judge("bright_task:bright_share", metric="bright_share", label="bright",
                    description="images brighter than mid-grey"),
    ))
''')


def test_the_shipped_tasks_are_registered_and_name_their_judges():
    assert task_names()[:4] == ["default", "shapes", "tiny", "tiny-sd3"]
    assert get_task("default").judge.metric == "digit_agreement"
    assert get_task("shapes").judge.metric == "geneval_accuracy"
    assert get_task("tiny").judge is None and get_task("tiny").held_out_prompts is None
    images = np.zeros((2, 32, 32, 3), dtype=np.uint8)  # black: no shape found, so nothing passes
    assert get_task("shapes").judge(images, ["a red circle", "two blue squares"]) == 0.0


def test_an_env_knows_its_task_and_draws_the_tasks_training_prompts():
    env = gym.make_vec("DenoisingDiffusion-v0", num_envs=2, **TINY)
    assert env.unwrapped.task is get_task("tiny")
    assert env.unwrapped.prompt_source.prompts == tuple(env.unwrapped.backend.default_prompts)
    assert get_task("tiny").evaluation_prompts(env.unwrapped.backend) == [
        p for p in env.unwrapped.backend.default_prompts[:10] for _ in range(10)]


def test_a_model_folder_of_a_known_world_gets_that_worlds_prompts_and_judge(tmp_path):
    from ddpo_env.backends import load_backend
    from ddpo_env.models.shapes import SHAPES_DIR
    from ddpo_env.scenes import prompt_set

    backend = load_backend(SHAPES_DIR)  # the shipped folder, loaded as a folder
    task = task_of(str(SHAPES_DIR), backend)
    assert task.name == f"shapes({SHAPES_DIR})" and task.judge == get_task("shapes").judge
    assert task.training_prompts(backend) == tuple(prompt_set("train"))
    plain = task_of(backend, backend)  # an object: no task of its own, but its world's
    assert plain.judge == get_task("shapes").judge


def test_a_model_with_no_task_has_no_judge_and_no_held_out_prompts():
    from ddpo_env.backends.sd import TinyBackend

    backend = TinyBackend()
    task = task_of(backend, backend)
    assert task.judge is None and task.held_out_prompts is None and task.name == "tiny(seed=0)"


def test_task_errors_name_the_fix():
    with pytest.raises(ValueError) as e:
        get_task("nope")
    assert str(e.value) == ("unknown task 'nope': use one of ['default', 'shapes', 'tiny', 'tiny-sd3'] or "
                            "package.module:attribute of a Task")
    with pytest.raises(ValueError) as e:
        get_task("ddpo_env.tasks:task_names")
    assert str(e.value) == "'ddpo_env.tasks:task_names' is a function, not a ddpo_env.tasks.Task"
    with pytest.raises(ValueError) as e:
        get_task("no_such_module_here:TASK")
    assert str(e.value) == ("cannot import the task 'no_such_module_here:TASK' (No module named "
                            "'no_such_module_here'): give package.module:attribute of a ddpo_env.tasks.Task on the "
                            "Python path")
    with pytest.raises(ValueError) as e:
        register_task(Task(name="tiny", build=lambda: None))
    assert str(e.value) == "a task named 'tiny' is already registered: choose another name"
    with pytest.raises(TypeError) as e:
        register_task("tiny")
    assert str(e.value) == "register_task takes a ddpo_env.tasks.Task, got str"


def test_a_judge_given_as_an_import_path_is_imported_on_use():
    judge = Judge("rewards.digits:digit_agreement", metric="m", label="l", description="d")
    assert judge(np.zeros((1, 16, 16, 3), dtype=np.uint8), ["a cat"]) is None  # names no digit


def test_a_task_in_one_file_trains_with_ddpo_train(tmp_path):
    (tmp_path / "bright_task.py").write_text(TASK_FILE, encoding="utf-8")
    out = tmp_path / "run"
    flags = ["--model", "bright_task:BRIGHT", "--num-steps", "3", "--samples-per-epoch", "4", "--num-envs", "2",
             "--batch-size", "2", "--epochs", "1", "--monitor-every", "1", "--reward", "jpeg_compressibility",
             "--no-tensorboard", "--output-dir", str(out)]
    result = subprocess.run([sys.executable, "-m", "agents.job.cli", "train", *flags], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), str(tmp_path)])})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert 0.0 <= metrics["bright_share_before"] <= 1.0 and 0.0 <= metrics["bright_share_after"] <= 1.0
    assert "images brighter than mid-grey: " in result.stdout
    assert metrics["monitor"] and (out / "monitor.png").is_file()  # the task's held-out prompts were used
    assert ddpo_env.ENV_ID == "DenoisingDiffusion-v0"
