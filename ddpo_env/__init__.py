"""ddpo-env: RL fine-tuning of diffusion models as a Gymnasium environment (DDPO, Black et al. 2024).

``import ddpo_env`` registers ``DenoisingDiffusion-v0`` (single env and native vector env). Importing
touches no GPU and downloads nothing; models load when an env is made.
"""

from gymnasium.envs.registration import register, registry

from ddpo_env.backends import DiffusionBackend, StableDiffusionBackend, TinyBackend, load_backend
from ddpo_env.backends.sd3 import StableDiffusion3Backend
from ddpo_env.config import EnvConfig
from ddpo_env.ddim import DDIMSchedule, DDIMStepOutput, ddim_step, gaussian_log_prob
from ddpo_env.env import DenoisingDiffusionEnv
from ddpo_env.flow import FlowMatchSchedule, flow_sde_step
from ddpo_env.prompts import PromptSource, PromptTable
from ddpo_env.sampler import DDIMSampler, guided_model_output
from ddpo_env.vector_env import DenoisingDiffusionVectorEnv

__version__ = "0.1.0"
ENV_ID = "DenoisingDiffusion-v0"

if ENV_ID not in registry:
    register(
        id=ENV_ID,
        entry_point="ddpo_env.env:DenoisingDiffusionEnv",
        vector_entry_point="ddpo_env.vector_env:DenoisingDiffusionVectorEnv",
    )

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
