"""ddpo-env: RL fine-tuning of diffusion models as a Gymnasium environment (DDPO, Black et al. 2024).

``import ddpo_env`` registers ``DenoisingDiffusion-v0`` (single env and native vector env). Importing
touches no GPU, downloads nothing and imports no torch: the names below load their module on first use
(``from ddpo_env import DDIMSampler`` works as usual), and models load when an env is made.
"""

from __future__ import annotations

import logging

from gymnasium.envs.registration import register, registry

from ddpo_env.lazy import lazy_attributes

__version__ = "0.1.0"
ENV_ID = "DenoisingDiffusion-v0"

if ENV_ID not in registry:
    register(
        id=ENV_ID,
        entry_point="ddpo_env.env:DenoisingDiffusionEnv",
        vector_entry_point="ddpo_env.vector_env:DenoisingDiffusionVectorEnv",
    )

#: Each public name → the module that defines it, imported on first access (PEP 562).
_LAZY = {
    "DiffusionBackend": "ddpo_env.backends",
    "StableDiffusionBackend": "ddpo_env.backends",
    "TinyBackend": "ddpo_env.backends",
    "load_backend": "ddpo_env.backends",
    "StableDiffusion3Backend": "ddpo_env.backends.sd3",
    "EnvConfig": "ddpo_env.config",
    "DDIMSchedule": "ddpo_env.ddim",
    "DDIMStepOutput": "ddpo_env.ddim",
    "ddim_step": "ddpo_env.ddim",
    "gaussian_log_prob": "ddpo_env.ddim",
    "DenoisingDiffusionEnv": "ddpo_env.env",
    "FlowMatchSchedule": "ddpo_env.flow",
    "flow_sde_step": "ddpo_env.flow",
    "PromptSource": "ddpo_env.prompts",
    "PromptTable": "ddpo_env.prompts",
    "DDIMSampler": "ddpo_env.sampler",
    "guided_model_output": "ddpo_env.sampler",
    "DenoisingDiffusionVectorEnv": "ddpo_env.vector_env",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


class _TorchvisionFallbackFilter(logging.Filter):
    """Drops transformers' notice that an image processor falls back to its PIL version without torchvision.

    diffusers' Stable Diffusion pipeline module imports ``CLIPImageProcessor`` (for the safety checker's feature
    extractor, which the env never runs), and transformers ≥ 5 prints the notice for it and for
    ``SiglipImageProcessor`` on every run where torchvision is not installed. The PIL fallback is what this
    package wants, so the notice is noise; every other message of that logger still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed); falling back to" not in record.getMessage()


_quiet = logging.getLogger("transformers.utils.import_utils")
if not any(isinstance(f, _TorchvisionFallbackFilter) for f in _quiet.filters):
    _quiet.addFilter(_TorchvisionFallbackFilter())

__all__ = [
    "ENV_ID",
    "DDIMSampler",
    "DDIMSchedule",
    "DDIMStepOutput",
    "DenoisingDiffusionEnv",
    "DenoisingDiffusionVectorEnv",
    "DiffusionBackend",
    "EnvConfig",
    "FlowMatchSchedule",
    "PromptSource",
    "PromptTable",
    "StableDiffusion3Backend",
    "StableDiffusionBackend",
    "TinyBackend",
    "ddim_step",
    "flow_sde_step",
    "gaussian_log_prob",
    "guided_model_output",
    "load_backend",
]
