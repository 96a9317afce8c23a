"""Model backends: a diffusers StableDiffusionPipeline from a local folder, the tiny model, and an end-to-end
check that a rollout through the env equals diffusers' own DDIM sampling loop."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from ddpo_env import DenoisingDiffusionVectorEnv, StableDiffusionBackend, ddim_step, guided_model_output, load_backend
from ddpo_env.models.tiny import build_tiny_pipeline
from tests.conftest import TINY


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd")
    build_tiny_pipeline(seed=3).save_pretrained(folder)
    return folder


def test_pipeline_saved_to_a_folder_reloads_offline_into_the_env(saved_pipeline):
    venv = gym.make_vec("DenoisingDiffusion-v0", num_envs=2, model=str(saved_pipeline), num_steps=4, device="cpu")
    backend = venv.unwrapped.backend
    assert isinstance(backend, StableDiffusionBackend) and backend.name == str(saved_pipeline)
    reference = build_tiny_pipeline(seed=3)
    for name, param in reference.unet.state_dict().items():
        assert torch.equal(param, backend.unet.state_dict()[name]), name
    obs, _ = venv.reset(seed=0)
    *_, info = venv.step(obs["latent"])
    for _ in range(3):
        *_, info = venv.step(obs["latent"])
    assert info["image"].shape == (2, 16, 16, 3)
    assert backend.default_num_steps == 50 and backend.default_guidance_scale == 5.0  # SD's defaults


def test_pipeline_instance_and_backend_instance_are_accepted():
    pipe = build_tiny_pipeline(seed=1)
    env = DenoisingDiffusionVectorEnv(num_envs=1, model=pipe, num_steps=4, device="cpu")
    assert env.backend.unet is pipe.unet
    env2 = DenoisingDiffusionVectorEnv(num_envs=1, model=env.backend, num_steps=4, device="cpu")
    assert env2.backend is env.backend


def test_hub_id_that_cannot_be_downloaded_names_the_fix():
    with pytest.raises(ValueError, match=r"^could not load a Stable Diffusion \(1/2/3\) pipeline from "
                                         r"'nobody/no-such-model': .*"
                                         r"Pass a local folder written by pipeline.save_pretrained\(folder\), or "
                                         r"download the hub id first \(this machine may be offline\)$"):
        load_backend("nobody/no-such-model")


def test_image_size_sets_the_latent_shape():
    venv = DenoisingDiffusionVectorEnv(num_envs=2, image_size=(32, 24), **TINY)
    assert venv.latent_shape == (4, 16, 12)
    obs, _ = venv.reset(seed=0)
    assert obs["latent"].shape == (2, 4, 16, 12)


@pytest.mark.parametrize("guidance_scale", [1.0, 5.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_env_rollout_equals_diffusers_sampling_loop(guidance_scale, prediction_type):
    """Same x_T, same per-step noise: the env + DDIM math reproduce a hand-written diffusers loop
    (UNet + CFG + DDIMScheduler.step(eta=1, variance_noise=z) + VAE decode)."""
    pipe = build_tiny_pipeline(seed=2, prediction_type=prediction_type)
    venv = DenoisingDiffusionVectorEnv(
        num_envs=2, model=pipe, num_steps=5, guidance_scale=guidance_scale, device="cpu", prompts=["a cat", "a dog"]
    )
    obs, _ = venv.reset(seed=0, options={"prompts": ["a cat", "a dog"]})
    x_T = torch.from_numpy(obs["latent"])
    noises = torch.randn(5, 2, 4, 8, 8, generator=torch.Generator().manual_seed(9))

    with torch.no_grad():
        for k in range(5):
            t = torch.from_numpy(obs["timestep"]).reshape(-1)
            latents = torch.from_numpy(obs["latent"])
            model_output = guided_model_output(
                venv.backend, latents, t, venv.prompt_embeds(obs["prompt_id"]), venv.negative_prompt_embeds(),
                venv.guidance_scale,
            )
            out = ddim_step(model_output, t, latents, venv.schedule, noise=noises[k])
            obs, _, terminated, _, info = venv.step(out.prev_sample)

        scheduler = pipe.scheduler
        scheduler.set_timesteps(5)
        cond, _ = pipe.encode_prompt(["a cat", "a dog"], "cpu", 1, do_classifier_free_guidance=False)
        uncond, _ = pipe.encode_prompt(["", ""], "cpu", 1, do_classifier_free_guidance=False)
        latents = x_T
        for k, t in enumerate(scheduler.timesteps):
            if guidance_scale == 1.0:
                eps = pipe.unet(latents, t, encoder_hidden_states=cond).sample
            else:
                eps_u, eps_c = pipe.unet(
                    torch.cat([latents] * 2), t, encoder_hidden_states=torch.cat([uncond, cond])
                ).sample.chunk(2)
                eps = eps_u + guidance_scale * (eps_c - eps_u)
            latents = scheduler.step(eps, t, latents, eta=1.0, variance_noise=noises[k]).prev_sample
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        image = (image / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    assert terminated.all()
    # float32 rounding through 5 UNet calls on latents of magnitude ~10 (random weights): relative 1e-5
    np.testing.assert_allclose(obs["latent"], latents.numpy(), rtol=1e-5, atol=1e-5)
    assert np.abs(info["image"].astype(int) - image.astype(int)).max() <= 1


def test_the_tiny_model_conditions_differently_on_prompts_that_differ_late():
    import gymnasium as gym

    env = gym.make_vec("DenoisingDiffusion-v0", num_envs=2, model="tiny", num_steps=2,
                       prompts=["a handwritten digit 3", "a handwritten digit 8, drawn with thick strokes"])
    embeds = env.unwrapped.prompt_embeds([1, 2])
    assert (embeds[0] - embeds[1]).abs().max() > 0.1  # they differ only after 19 characters
