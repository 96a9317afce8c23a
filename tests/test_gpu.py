"""GPU checks, skipped on machines without CUDA (the project never needs a GPU to build or pass its tests).

A GPU machine runs newer library versions than CI: their deprecation and user warnings are shown, not failures
(the CPU suite keeps warnings as errors for this project's own code, and warnings from it still fail here).
"""

import numpy as np
import pytest
import torch
from stable_baselines3.common.logger import Logger

from ddpo_env import DDIMSampler, DenoisingDiffusionVectorEnv

THIRD_PARTY = r"(?!ddpo_env|agents|rewards|benchmarks|tests)"  # a module regex: any module but this project's
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.filterwarnings("default::DeprecationWarning"),
    pytest.mark.filterwarnings("default::PendingDeprecationWarning"),
    pytest.mark.filterwarnings("default::FutureWarning"),
    pytest.mark.filterwarnings(f"default::UserWarning:{THIRD_PARTY}"),
]


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


@pytest.mark.parametrize("rank", [4, 0], ids=["lora", "full"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_an_agent_trains_on_cuda_with_first_update_ratios_at_one_and_finite_weights(dtype, rank):
    """The CPU suite proves ratio 1 exactly; on CUDA, sampling (batch 4 with guidance: 8 rows) and training (batch 2:
    4 rows) pick different kernels (float32 on an H200: |log ratio| 1.7e-4, beyond the clip range), so by default the
    agent recomputes log π_old there in the training shape; this asks for agreement far inside PPO's clip range and
    reports the value (benchmarks/gpu_ratio.py records the raw one per step on Stable Diffusion's size)."""
    import gymnasium as gym

    from agents import DDPO_IS
    from agents.step_stats import first_update_log_ratios
    from rewards import JpegCompressibility, VectorTerminalReward

    env = VectorTerminalReward(gym.make_vec("DenoisingDiffusion-v0", num_envs=4, model="tiny", num_steps=4,
                                            device="cuda", dtype=dtype, guidance_scale=3.0), JpegCompressibility())
    agent = DDPO_IS(env, samples_per_epoch=4, batch_size=2, lora_rank=rank, learning_rate=1e-5, kl_coef=0.1,
                    ema_decay=0.9)
    agent.set_logger(Logger(folder=None, output_formats=[]))
    assert (agent.grad_scaler is not None) == (dtype == "float16") and agent.recomputes_log_probs
    agent.collect_rollout()
    worst = max(first_update_log_ratios(agent).values())
    print(f"{dtype} {'lora' if rank else 'full'}: first-update max |log ratio| {worst:.3g}")
    assert worst < 1e-6  # clip_range is 1e-4
    before = [p.detach().clone() for p in agent.policy.trainable_parameters()]
    agent.learn(total_samples=8)  # 4 updates: float16's loss scale may skip the first on an overflow
    assert agent.num_updates >= 1, f"{agent.num_skipped_updates} updates skipped"
    params = agent.policy.trainable_parameters()
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 and torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(p, b) for p, b in zip(params, before, strict=True))
