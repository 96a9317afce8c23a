"""GPU checks, skipped on machines without CUDA (the project never needs a GPU to build or pass its tests)."""

import numpy as np
import pytest
import torch

from ddpo_env import DDIMSampler, DenoisingDiffusionVectorEnv

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_vector_env_runs_on_cuda_with_device_tensors(dtype):
    venv = DenoisingDiffusionVectorEnv(num_envs=3, model="tiny", num_steps=4, device="cuda", dtype=dtype)
    assert venv.device.type == "cuda" and venv.backend.unet.device.type == "cuda"
    sampler = DDIMSampler(venv)
    obs, _ = venv.reset(seed=0)
    for _ in range(4):
        out = sampler.step(obs)
        assert out.prev_sample.device.type == "cuda"
        obs, _, terminated, _, info = venv.step(out.prev_sample)  # a CUDA tensor action, no host round trip
        assert torch.equal(torch.from_numpy(obs["latent"]), out.prev_sample.float().cpu())
    assert terminated.all() and info["image"].shape == (3, 16, 16, 3) and np.isfinite(obs["latent"]).all()
    with pytest.raises(ValueError, match=r"^actions are on device cpu but the env runs on cuda:0"):
        venv.step(torch.zeros(3, 4, 8, 8))
