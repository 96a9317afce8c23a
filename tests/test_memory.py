"""Memory savers for real Stable Diffusion on one GPU, each a config switch, tested here on CPU: gradient
checkpointing, 8-bit AdamW (when bitsandbytes is installed), VAE decode in slices. (Mixed precision with float32
LoRA weights and cached prompt embeddings are tested in test_agents.py and test_env.py.)"""

import importlib.util

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.logger import Logger

from agents import make_agent
from tests.conftest import TINY, tiny_env

SMALL = {"samples_per_epoch": 6, "batch_size": 3, "seed": 0, "learning_rate": 1e-3}


def trained_params(**overrides) -> tuple[list[torch.Tensor], list[torch.Tensor], object]:
    agent = make_agent("ddpo-is", tiny_env(), **{**SMALL, **overrides})
    agent.set_logger(Logger(folder=None, output_formats=[]))
    start = [p.detach().clone() for p in agent.policy.trainable_parameters()]
    agent.learn(total_samples=6)
    return [p.detach().clone() for p in agent.policy.trainable_parameters()], start, agent


@pytest.mark.parametrize("lora_rank", [4, 0])
def test_gradient_checkpointing_gives_the_same_update(lora_rank):
    plain, start, _ = trained_params(lora_rank=lora_rank)
    saved, _, agent = trained_params(lora_rank=lora_rank, gradient_checkpointing=True)
    assert agent.policy.unet.is_gradient_checkpointing
    for a, b in zip(plain, saved, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert max(float((a - s).abs().max()) for a, s in zip(plain, start, strict=True)) > 1e-4


def test_optimizer_switch_names_its_fix():
    with pytest.raises(ValueError, match=r"unknown optimizer 'sgd': use one of \['adamw', 'adamw8bit'\]"):
        trained_params(optimizer="sgd")
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ImportError, match=r"optimizer='adamw8bit' needs bitsandbytes: pip install bitsandbytes"):
            trained_params(optimizer="adamw8bit")
    else:  # where bitsandbytes is installed
        agent = make_agent("ddpo-is", tiny_env(), **SMALL, optimizer="adamw8bit")
        assert type(agent.policy.optimizer).__name__ == "AdamW8bit"


def test_decoding_in_slices_gives_the_same_images():
    venvs = [gym.make_vec("DenoisingDiffusion-v0", num_envs=3, decode_batch_size=k, **TINY) for k in (0, 1, 2)]
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    images = [v.unwrapped.decode_images(latents) for v in venvs]
    for other in images[1:]:
        assert other.shape == images[0].shape == (3, 16, 16, 3)
        assert np.abs(other.astype(int) - images[0].astype(int)).max() <= 1  # uint8 rounding of equal floats
    with pytest.raises(ValueError, match=r"decode_batch_size must be an int >= 0 \(0: all at once\), got -1"):
        gym.make_vec("DenoisingDiffusion-v0", num_envs=3, decode_batch_size=-1, **TINY)
