"""Flow-matching models in DenoisingDiffusion-v0: the Flow-GRPO SDE step against diffusers and Normal, the tiny SD3
pipeline end to end, and every agent training on it."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import Recorder
from stable_baselines3.common.logger import Logger

from agents import DDPO_IS, DDPO_SF, RWR
from agents.job.export import LORA_FILE, export_weights
from ddpo_env.backends import load_backend
from ddpo_env.flow import FlowMatchSchedule, flow_sde_step
from ddpo_env.models.tiny import SD3_SCHEDULER_CONFIG
from ddpo_env.sampler import guided_model_output
from rewards import JpegCompressibility, VectorTerminalReward

SD3 = {"model": "tiny-sd3", "num_steps": 4, "device": "cpu"}


def sd3_env(num_envs=4, **kwargs):
    return VectorTerminalReward(gym.make_vec("DenoisingDiffusion-v0", num_envs=num_envs, **{**SD3, **kwargs}),
                                JpegCompressibility(upscale=4))


def diffusers_scheduler(num_steps):
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG)
    scheduler.set_timesteps(num_steps)
    return scheduler


def test_zero_noise_level_is_diffusers_euler_step_at_every_step():
    scheduler, generator = diffusers_scheduler(6), torch.Generator().manual_seed(0)
    sigmas = scheduler.sigmas
    x = torch.randn(2, 4, 8, 8, generator=generator)
    for k, t in enumerate(scheduler.timesteps):
        v = torch.randn(x.shape, generator=generator)
        expected = scheduler.step(v, t, x).prev_sample
        ours = flow_sde_step(v, x, sigmas[k], sigmas[k + 1], float(sigmas[1]), 0.0, noise=torch.randn(x.shape))
        torch.testing.assert_close(ours.prev_sample, expected, rtol=0, atol=1e-6)
        x = expected


def test_sde_step_mean_std_and_log_prob_against_normal():
    schedule = FlowMatchSchedule.from_scheduler_config(SD3_SCHEDULER_CONFIG, 5, eta=0.7)
    generator = torch.Generator().manual_seed(1)
    x, v = torch.randn(5, 4, 8, 8, generator=generator), torch.randn(5, 4, 8, 8, generator=generator)
    keys = schedule.timesteps  # one sample per step, σ = 1 included
    out = schedule.step(v, keys, x, generator=generator)
    s, s_prev = schedule.sigmas.reshape(-1, 1, 1, 1), schedule.prev_sigmas.reshape(-1, 1, 1, 1)
    d = (s_prev - s).double()
    s_sigma = 0.7 * torch.sqrt(s / (1 - torch.where(s == 1, schedule.sigma_max, s))).double()
    mean = x.double() * (1 + s_sigma**2 / (2 * s) * d) + v.double() * (1 + s_sigma**2 * (1 - s) / (2 * s)) * d
    std = s_sigma * torch.sqrt(-d)
    torch.testing.assert_close(out.mean.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.std_dev_t.double(), std, rtol=1e-6, atol=0)
    expected = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(out.prev_sample.double())
    torch.testing.assert_close(out.log_prob.double(), expected.mean(dim=(1, 2, 3)), rtol=1e-5, atol=1e-5)
    # zero noise: the sample is the mean; scoring it again gives the same log-prob
    still = schedule.step(v, keys, x, noise=torch.zeros_like(x))
    torch.testing.assert_close(still.prev_sample, out.mean)
    rescored = schedule.step(v, keys, x, prev_sample=out.prev_sample)
    torch.testing.assert_close(rescored.log_prob, out.log_prob)
    # the step samples N(μ, std²): the empirical std of x' − μ over many draws
    draws = torch.stack([schedule.step(v, keys, x, generator=generator).prev_sample - out.mean for _ in range(200)])
    np.testing.assert_allclose(draws.std(dim=(0, 2, 3, 4)).numpy(), std.flatten().numpy(), rtol=0.05)


def test_flow_schedule_keys_and_refusals():
    schedule = FlowMatchSchedule.from_scheduler_config(SD3_SCHEDULER_CONFIG, 10, eta=0.7)
    scheduler = diffusers_scheduler(10)
    torch.testing.assert_close(schedule.model_timesteps(schedule.timesteps), scheduler.timesteps)
    assert schedule.timesteps[0] == 1000 and bool((schedule.timesteps.diff() < 0).all())
    assert bool((schedule.std_dev_t > 0).all())
    with pytest.raises(ValueError, match="noise level a"):
        FlowMatchSchedule.from_scheduler_config(SD3_SCHEDULER_CONFIG, 10, eta=0.0)
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        FlowMatchSchedule.from_scheduler_config({**SD3_SCHEDULER_CONFIG, "use_dynamic_shifting": True}, 10)
    with pytest.raises(ValueError, match="not in this flow schedule"):
        schedule.step_index(torch.tensor([999]))


@torch.no_grad()
def test_env_steps_with_zero_noise_reproduce_the_sd3_pipeline():
    """The env's conditioning (pooled embedding folded into tokens), network timesteps σ·N, CFG and step, with the
    noise level at 0, give StableDiffusion3Pipeline's own latents from the same x_T."""
    env = gym.make_vec("DenoisingDiffusion-v0", num_envs=2, guidance_scale=3.0, **SD3).unwrapped
    obs, _ = env.reset(seed=0, options={"prompts": ["a cat", "a zebra"]})
    x = torch.as_tensor(obs["latent"])
    schedule, backend = env.schedule, env.backend
    for k, key in enumerate(schedule.timesteps):
        keys = key.repeat(2)
        v = guided_model_output(backend, x, schedule.model_timesteps(keys), env.prompt_embeds(obs["prompt_id"]),
                                env.negative_prompt_embeds(), env.guidance_scale)
        x = flow_sde_step(v, x, schedule.sigmas[k], schedule.prev_sigmas[k], schedule.sigma_max, 0.0,
                          noise=torch.zeros_like(x)).prev_sample
    pipe = backend.pipeline
    expected = pipe(prompt=["a cat", "a zebra"], latents=torch.as_tensor(obs["latent"]), num_inference_steps=4,
                    guidance_scale=3.0, output_type="latent", max_sequence_length=16).images
    torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", [DDPO_IS, DDPO_SF, RWR])
def test_every_agent_trains_a_flow_matching_model(cls):
    recorder = Recorder()
    agent = cls(sd3_env(), samples_per_epoch=8, batch_size=4, learning_rate=1e-3, kl_coef=0.1)
    agent.set_logger(Logger(folder=None, output_formats=[recorder]))
    before = [p.detach().clone() for p in agent.policy.trainable_parameters()]
    agent.learn(total_samples=16)
    first = recorder.records[0]
    if cls is DDPO_IS:
        assert first["train/ratio_mean"] == pytest.approx(1.0, abs=1e-3)  # recomputed log-probs = sampled ones
    for record in recorder.records:
        assert np.isfinite(record["train/loss"]) and np.isfinite(record["train/kl"])
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.policy.trainable_parameters(), strict=True))


def test_flow_lora_exports_for_the_sd3_pipeline(tmp_path):
    agent = DDPO_IS(sd3_env(), samples_per_epoch=4, batch_size=4)
    with torch.no_grad():
        for name, param in agent.policy.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    folder = export_weights(agent.policy, tmp_path)
    assert (folder / LORA_FILE).is_file()
    pipe = load_backend("tiny-sd3").pipeline
    pipe.load_lora_weights(str(folder), weight_name=LORA_FILE)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500.0])
    embeds, pooled = torch.randn(1, 5, 64), torch.randn(1, 64)
    with torch.no_grad():
        ours = agent.policy.unet(hidden_states=x, timestep=t, encoder_hidden_states=embeds,
                                 pooled_projections=pooled).sample
        theirs = pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=embeds,
                                  pooled_projections=pooled).sample
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_ode_steps_are_diffusers_deterministic_samplers():
    """The monitor's deterministic ODE sampler: DDIM with η = 0 and the flow Euler step, from the stochastic step's
    output (its x̂₀), equal diffusers' own steps."""
    from diffusers import DDIMScheduler

    from ddpo_env.ddim import DDIMSchedule
    from ddpo_env.models.tiny import SD_SCHEDULER_CONFIG

    generator = torch.Generator().manual_seed(2)
    ddim = DDIMSchedule.from_scheduler_config({**SD_SCHEDULER_CONFIG, "timestep_spacing": "trailing"}, 5)
    scheduler = DDIMScheduler(**{**SD_SCHEDULER_CONFIG, "timestep_spacing": "trailing"})
    scheduler.set_timesteps(5)
    flow, euler = FlowMatchSchedule.from_scheduler_config(SD3_SCHEDULER_CONFIG, 5), diffusers_scheduler(5)
    for schedule, reference in ((ddim, lambda e, t, x: scheduler.step(e, t, x, eta=0.0).prev_sample),
                                (flow, lambda v, t, x: euler.step(v, t, x).prev_sample)):
        x = torch.randn(2, 4, 8, 8, generator=generator)
        for k, key in enumerate(schedule.timesteps):
            output = torch.randn(x.shape, generator=generator)
            keys = key.repeat(2)
            ours = schedule.ode_step(schedule.step(output, keys, x, noise=torch.zeros_like(x)), keys, x)
            torch.testing.assert_close(ours, reference(output, scheduler.timesteps[k] if schedule is ddim else
                                                       euler.timesteps[k], x), rtol=1e-5, atol=1e-5)
            x = ours


def test_training_job_on_a_flow_model_with_eight_evaluation_prompts(tmp_path):
    """`ddpo train --model tiny-sd3`: the whole job (evaluation of SD's eight default prompts × ten seeds, grid,
    EMA export of the transformer's LoRA)."""
    from PIL import Image

    from agents.job.train import TrainConfig, train

    result = train(TrainConfig.from_flat(dict(
        model="tiny-sd3", num_steps=3, device="cpu", epochs=1, samples_per_epoch=4, num_envs=4, batch_size=4,
        lora_rank=4, ema_decay=0.5, kl_coef=0.1, tensorboard=False, output_dir=str(tmp_path))))
    assert len(result.after.prompts) == 80 and np.isfinite(result.metrics["eval_reward_after"]["mean"])
    with Image.open(tmp_path / "before_after.png") as image:
        assert image.size[1] > image.size[0] * 0.5  # eight rows of five before | five after
    assert (tmp_path / "lora" / LORA_FILE).is_file()
