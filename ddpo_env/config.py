"""The env's configuration: one typed dataclass, one docstring per field, checked at construction (each value
against its field's type, :mod:`ddpo_env.fields`, then the ranges). Imports no torch: the command line builds its
flags from it before any model code loads."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode

from ddpo_env.fields import check_fields

#: A prompt function: draws one prompt with the generator it is given.
PromptFn = Callable[[np.random.Generator], str]
#: What ``prompts`` takes (read by :class:`ddpo_env.prompts.PromptSource`; defined here, where no torch is imported).
PromptsLike = Sequence[str] | str | os.PathLike | PromptFn


def is_prompt_file(text: str) -> bool:
    """Whether a prompts string names a text file of prompts (it ends in .txt or names an existing file) rather
    than being prompts itself."""
    return text.endswith(".txt") or os.path.isfile(text)

#: EnvConfig.attention's kernels.
ATTENTION_KERNELS = ("sdpa", "matmul")


@dataclass
class EnvConfig:
    """Everything that defines a DenoisingDiffusion-v0 task. ``gym.make`` keyword arguments map onto it."""

    model: Any = "default"
    """A task's model: 'default' (the embedded digits model), 'shapes' (the embedded shapes model), 'tiny' or
    'tiny-sd3' (random tiny Stable Diffusion 1 / 3, for smoke runs), or your own task as package.module:TASK; else a
    local diffusers pipeline folder, a hub id 'org/name', or a pipeline/backend instance."""

    prompts: PromptsLike | None = None
    """Prompt distribution: a list of strings, a text file (one per line) or fn(rng) -> str. None: the model's."""

    group_size: int = 1
    """Envs share prompts in consecutive groups of this size: each episode draws one prompt per group, giving k
    samples per prompt for group-relative (GRPO) advantages. num_envs must be a multiple of it."""

    num_steps: int | None = None
    """T, DDIM steps per episode (= episode length). None: the model's default (20 embedded, 50 on SD)."""

    eta: float | None = None
    """Noise scale of the policy: DDIM's η in (0, 1] (std η·σ_t), or a flow-matching model's SDE noise level a
    (Flow-GRPO). None: 1.0 for DDIM, 0.7 for flow matching. 0 has no log-probability and is refused."""

    guidance_scale: float | None = None
    """Classifier-free guidance weight w used by policies on this env (1 = no guidance). None: the model's."""

    image_size: int | tuple[int, int] | None = None
    """Output image (height, width), or one int for a square; must suit the model. None: native size."""

    device: str = "auto"
    """Where latents, prompt embeddings and the frozen model live: 'auto' (cuda if present), 'cpu', 'cuda:N'."""

    dtype: str = "float32"
    """Model compute precision: 'float32', 'float16' or 'bfloat16'. Latents are always stored in float32."""

    attention: str = "sdpa"
    """The UNet's attention kernel: 'sdpa' (the model's own, torch's scaled_dot_product_attention) or 'matmul'
    (diffusers' AttnProcessor: matmul, softmax, matmul): the same numbers, faster on a CPU for small heads."""

    decode_batch_size: int = 0
    """Latents decoded to images per VAE call at the last step (0: all envs at once); a small value (e.g. 1, like
    diffusers' VAE slicing) bounds the decoder's peak memory for large num_envs at the same images."""

    scheduler_overrides: dict = field(default_factory=dict)
    """Entries replacing the model's scheduler config, e.g. {"timestep_spacing": "trailing"}."""

    latent_bound: float = 1000.0
    """Finite bound of the latent Box spaces, far beyond any real latent so an action is never clipped."""

    autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP
    """Vector env only: 'next_step' (Gymnasium's default), 'same_step' or 'disabled'."""

    render_mode: str | None = None
    """None or 'rgb_array' (render() decodes the current latents to images)."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.eta is not None and not (isinstance(self.eta, (int, float)) and math.isfinite(self.eta)
                                         and self.eta > 0):
            raise ValueError(
                f"eta must be > 0, got {self.eta!r}: with eta=0 the denoising step is deterministic and has "
                "no log-probability (DDPO uses eta=1.0)"
            )
        if self.attention not in ATTENTION_KERNELS:
            raise ValueError(f"unknown attention {self.attention!r}: use one of {list(ATTENTION_KERNELS)}")
        if self.guidance_scale is not None and not (
            isinstance(self.guidance_scale, (int, float)) and math.isfinite(self.guidance_scale)
            and self.guidance_scale >= 1
        ):
            raise ValueError(
                f"guidance_scale must be a finite number >= 1 (1 disables guidance), got {self.guidance_scale!r}"
            )
        if isinstance(self.image_size, int):
            self.image_size = (self.image_size, self.image_size)
        if self.image_size is not None and not (
            len(self.image_size) == 2 and all(isinstance(s, int) for s in self.image_size)
        ):
            raise ValueError(f"image_size must be an int or (height, width) ints, got {self.image_size!r}")
        if not (isinstance(self.group_size, int) and self.group_size >= 1):
            raise ValueError(f"group_size must be a positive int (1: every env draws its own prompt), got "
                             f"{self.group_size!r}")
        if not (isinstance(self.decode_batch_size, int) and self.decode_batch_size >= 0):
            raise ValueError(f"decode_batch_size must be an int >= 0 (0: all at once), got {self.decode_batch_size!r}")
        if not (math.isfinite(self.latent_bound) and self.latent_bound > 0):
            raise ValueError(f"latent_bound must be finite and > 0, got {self.latent_bound!r}")
        self.autoreset_mode = _parse_autoreset_mode(self.autoreset_mode)
        if self.render_mode not in (None, "rgb_array"):
            raise ValueError(f"unknown render_mode {self.render_mode!r}: use None or 'rgb_array'")


def _parse_autoreset_mode(mode: AutoresetMode | str) -> AutoresetMode:
    """AutoresetMode from the enum, its value ('NextStep') or snake case ('next_step')."""
    if isinstance(mode, AutoresetMode):
        return mode
    for member in AutoresetMode:
        if isinstance(mode, str) and mode.replace("_", "").lower() == member.value.lower():
            return member
    raise ValueError(f"unknown autoreset_mode {mode!r}: use 'next_step', 'same_step' or 'disabled'")
