"""DenoisingDiffusion-v0 as a Gymnasium citizen (docs/reliability.md 1-5)."""

import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import ddpo_env
from ddpo_env import DDIMSampler, DenoisingDiffusionVectorEnv
from tests.conftest import TINY


def run_episode(env, sampler=None, seed=0):
    """Reset, then act with the base model until terminated; returns (obs list, rewards, flags, last info)."""
    sampler = sampler or DDIMSampler(env, seed=seed)
    obs, _ = env.reset(seed=seed)
    observations, rewards, terminateds, truncateds, infos, actions = [obs], [], [], [], [], []
    for _ in range(env.unwrapped.schedule.num_steps):
        action, _ = sampler(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        for seq, v in zip((observations, rewards, terminateds, truncateds, infos, actions),
                          (obs, reward, terminated, truncated, info, action), strict=False):
            seq.append(v)
    return observations, rewards, terminateds, truncateds, infos, actions


def test_make_and_make_vec_raise_no_warning_and_obs_stay_in_space():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make("DenoisingDiffusion-v0", **TINY)
        venv = gym.make_vec("DenoisingDiffusion-v0", num_envs=3, **TINY)
        for e in (env, venv):
            observations, *_ = run_episode(e)
            for obs in observations:
                assert e.observation_space.contains(obs), obs
    assert isinstance(venv.unwrapped, DenoisingDiffusionVectorEnv)
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    assert venv.observation_space["latent"].shape == (3, 4, 8, 8)
    assert venv.single_action_space.dtype == np.float32 and np.isfinite(venv.single_action_space.low).all()


def test_gym_make_without_arguments_uses_the_embedded_default():
    env = gym.make("DenoisingDiffusion-v0")
    assert isinstance(env.unwrapped.backend, ddpo_env.backends.EmbeddedBackend)
    assert env.unwrapped.schedule.num_steps == 20 and env.unwrapped.backend.name == "default"


def test_gymnasium_and_sb3_env_checkers_pass():
    env = gym.make("DenoisingDiffusion-v0", **TINY).unwrapped
    gym_check_env(env, skip_render_check=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(env, warn=True)
    # SB3's only advice concerns its CnnPolicy (uint8 images >= 36x36) and a [-1, 1] action Box; the diffusion
    # policy reads float latents of any size and acts in latent space, so this advice does not apply.
    advice = ("observation latent is an image but its `dtype`", "observation space latent is an image but the upper",
              "minimal resolution for an image", "symmetric and normalized Box action")
    messages = [str(w.message) for w in caught]
    assert all(any(a in m for a in advice) for m in messages), messages


@pytest.mark.parametrize("num_envs", [1, 3])
def test_episode_is_exactly_T_steps_with_terminal_only_reward(num_envs):
    venv = gym.make_vec("DenoisingDiffusion-v0", num_envs=num_envs, **TINY)
    observations, rewards, terminateds, truncateds, infos, _actions = run_episode(venv)
    T = venv.unwrapped.schedule.num_steps
    assert len(rewards) == T == 4
    for k in range(T - 1):
        assert np.array_equal(rewards[k], np.zeros(num_envs)) and not terminateds[k].any() and not truncateds[k].any()
        assert infos[k] == {}  # nothing large in non-terminal infos
    assert terminateds[-1].all() and not truncateds[-1].any() and np.isfinite(rewards[-1]).all()
    assert infos[-1]["image"].shape == (num_envs, 16, 16, 3) and infos[-1]["image"].dtype == np.uint8
    assert list(infos[-1]["prompt"]) == venv.unwrapped.prompt_strings(observations[0]["prompt_id"])


def test_obs_latent_is_the_action_bit_for_bit_timestep_follows_schedule_prompt_constant():
    venv = gym.make_vec("DenoisingDiffusion-v0", num_envs=3, **TINY)
    observations, *_, actions = run_episode(venv)
    schedule = venv.unwrapped.schedule
    for k, obs in enumerate(observations):
        expected_t = int(schedule.timesteps[k]) if k < schedule.num_steps else 0
        assert (obs["timestep"] == expected_t).all()
        assert np.array_equal(obs["prompt_id"], observations[0]["prompt_id"])
    for obs, action in zip(observations[1:], actions, strict=False):
        assert obs["latent"].tobytes() == action.astype(np.float32).tobytes()
    # a torch action on the env's device is taken bit for bit too
    obs, _ = venv.reset(seed=1)
    action = torch.randn(3, 4, 8, 8)
    obs, *_ = venv.step(action)
    assert torch.equal(torch.from_numpy(obs["latent"]), action)


def test_next_step_autoreset_step_by_step():
    venv = gym.make_vec("DenoisingDiffusion-v0", num_envs=3, **TINY)
    _observations, *_ = run_episode(venv)
    garbage = np.full((3, 4, 8, 8), 7.0, dtype=np.float32)
    obs, reward, terminated, truncated, info = venv.step(garbage)  # the autoreset step ignores the action
    assert (obs["timestep"] == int(venv.unwrapped.schedule.timesteps[0])).all()
    assert not np.array_equal(obs["latent"], garbage) and not terminated.any() and not truncated.any()
    assert np.array_equal(reward, np.zeros(3)) and info == {}
    obs, reward, terminated, *_ = venv.step(garbage)  # then the new episode runs normally
    assert np.array_equal(obs["latent"], garbage) and (obs["timestep"] == 501).all() and not terminated.any()


def test_same_step_autoreset_returns_reset_obs_and_final_obs():
    venv = gym.make_vec("DenoisingDiffusion-v0", num_envs=3, autoreset_mode="same_step", **TINY)
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    observations, _rewards, terminateds, _, infos, actions = run_episode(venv)
    last_obs, last_info = observations[-1], infos[-1]
    assert terminateds[-1].all()
    assert (last_obs["timestep"] == 751).all()  # already the next episode's first state
    assert np.array_equal(last_info["final_obs"]["latent"], actions[-1]) and last_info["_final_obs"].all()
    assert (last_info["final_obs"]["timestep"] == 0).all()
    obs, _, terminated, *_ = venv.step(actions[0])
    assert not terminated.any() and (obs["timestep"] == 501).all()


def test_disabled_autoreset_and_single_env_refuse_to_step_after_the_end():
    for env in (gym.make_vec("DenoisingDiffusion-v0", num_envs=2, autoreset_mode="disabled", **TINY),
                gym.make("DenoisingDiffusion-v0", **TINY)):
        *_, actions = run_episode(env)
        with pytest.raises(ResetNeeded) as e:
            env.step(actions[-1])
        assert str(e.value) == (
            "the episode ended after 4 steps and autoreset_mode is 'disabled': call env.reset() before stepping again"
        )


def _vector(**kwargs):
    return DenoisingDiffusionVectorEnv(num_envs=3, **{**TINY, **kwargs})


def test_misuse_raises_exact_messages():
    venv = _vector()
    with pytest.raises(ResetNeeded) as e:
        venv.step(np.zeros((3, 4, 8, 8), np.float32))
    assert str(e.value) == "step() was called before reset(): call env.reset(seed=...) first"
    venv.reset(seed=0)
    cases = [
        (np.zeros((2, 4, 8, 8), np.float32),
         "actions have shape (2, 4, 8, 8) but the env expects (3, 4, 8, 8): one x_(t-1) latent per env (num_envs=3)"),
        (np.zeros((3, 4, 8, 9), np.float32),
         "actions have per-env shape (4, 8, 9) but the latent shape is (4, 8, 8) (full batch (3, 4, 8, 8))"),
        (np.zeros((3, 256), np.float32),
         "actions have shape (3, 256) but the env expects (3, 4, 8, 8): one x_(t-1) latent per env (num_envs=3)"),
    ]
    nan = np.zeros((3, 4, 8, 8), np.float32)
    nan[1, 0, 0, 0], nan[2, 3, 7, 7] = np.nan, np.inf
    cases.append((nan, "actions contain NaN or Inf in env(s) [1, 2]: the policy produced a non-finite latent "
                       "(look at the learning rate and the log-probabilities)"))
    big = np.zeros((3, 4, 8, 8), np.float32)
    big[0] = 2000.0
    cases.append((big, "actions exceed the latent bound ±1000.0 in env(s) [0]: no real latent is that large; "
                       "raise latent_bound if your model's latents are"))
    cases.append((torch.zeros(3, 4, 8, 8, device="meta"),
                  "actions are on device meta but the env runs on cpu: move them with actions.to('cpu') "
                  "or pass a numpy array"))
    for action, message in cases:
        with pytest.raises(ValueError) as e:
            venv.step(action)
        assert str(e.value) == message
    assert venv.step_index == 0  # refused actions change nothing
    single = gym.make("DenoisingDiffusion-v0", **TINY)
    single.reset(seed=0)
    with pytest.raises(ValueError) as e:
        single.step(np.zeros((3, 4, 8, 8), np.float32))
    assert str(e.value) == "action has shape (3, 4, 8, 8) but the env expects (4, 8, 8): one x_(t-1) latent"


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"model": "sd-2000"}, ValueError,
         "unknown model 'sd-2000': use a task name ['default', 'shapes', 'tiny', 'tiny-sd3'], package.module:TASK "
         "(a ddpo_env.tasks.Task), a local folder saved by a diffusers StableDiffusion(3)Pipeline, a hub id like "
         "'org/name', or a pipeline instance"),
        ({"prompts": []}, ValueError,
         "prompts is empty: give at least one prompt string, a text file with one prompt per line, "
         "or a callable fn(rng) -> str"),
        ({"eta": 0.0}, ValueError,
         "eta must be > 0, got 0.0: with eta=0 the denoising step is deterministic and has no log-probability "
         "(DDPO uses eta=1.0)"),
        ({"dtype": "float8"}, ValueError, "unknown dtype 'float8': use one of ['bfloat16', 'float16', 'float32']"),
        ({"device": "tpu"}, ValueError, "unknown device 'tpu': use 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ({"image_size": 15}, ValueError,
         "image_size (15, 15) must be positive multiples of the VAE factor 2 (the native size of this model is 16)"),
        ({"autoreset_mode": "sometimes"}, ValueError,
         "unknown autoreset_mode 'sometimes': use 'next_step', 'same_step' or 'disabled'"),
        ({"guidance_scale": 0.5}, ValueError,
         "guidance_scale must be a finite number >= 1 (1 disables guidance), got 0.5"),
        ({"prompts": "missing/prompts.txt"}, FileNotFoundError,
         "prompt file 'missing/prompts.txt' does not exist: pass a text file with one prompt per line, "
         "or a list of prompt strings"),
        ({"prompts": ["a cat", 3]}, TypeError, "every prompt must be a str, got 3 (int)"),
        ({"scheduler_overrides": {"steps_offset": 0}}, ValueError,
         "step 3 of 4 (timestep 0 -> -250) has std 0, so its log-probability is undefined. This happens when the "
         "last step lands on ᾱ_{t'} = ᾱ_t (timestep_spacing='leading' or 'linspace' with steps_offset=0) or "
         "ᾱ_{t'} = 1 (set_alpha_to_one=True): use timestep_spacing='trailing' or steps_offset=1, "
         "and set_alpha_to_one=False"),
    ],
)
def test_bad_configuration_raises_exact_messages(kwargs, error, message):
    with pytest.raises(error) as e:
        DenoisingDiffusionVectorEnv(num_envs=2, **{**TINY, **kwargs})
    assert str(e.value) == message
    with pytest.raises(error, match="^" + re.escape(message)):  # gym.make surfaces it (TypeErrors get a suffix)
        gym.make("DenoisingDiffusion-v0", **{**TINY, **kwargs})


def test_reset_options_and_errors():
    venv = _vector()
    obs, _ = venv.reset(seed=0, options={"prompts": ["a", "b", "a"]})
    assert venv.prompt_strings(obs["prompt_id"]) == ["a", "b", "a"]
    with pytest.raises(ValueError) as e:
        venv.reset(options={"prompts": ["a"]})
    assert str(e.value) == "options['prompts'] must be a list of 3 strings (one per env), got ['a']"
    with pytest.raises(ValueError) as e:
        venv.reset(options={"prompt": "a"})
    assert str(e.value) == "unknown reset options ['prompt']: the only option is 'prompts'"


def test_seeding_is_reproducible_and_independent_of_num_envs():
    venv = _vector()
    a, _ = venv.reset(seed=123)
    b, _ = venv.reset(seed=123)
    c, _ = venv.reset(seed=456)
    for key in a:
        assert np.array_equal(a[key], b[key])
    assert not np.array_equal(a["latent"], c["latent"])
    one = DenoisingDiffusionVectorEnv(num_envs=1, **TINY)
    for seed in (123, None, None):  # a seeded reset, then two that continue the generators
        o1, _ = one.reset(seed=seed)
        o3, _ = venv.reset(seed=seed)
        np.testing.assert_allclose(o1["latent"][0], o3["latent"][0], atol=1e-5, rtol=0)
        assert o1["prompt_id"][0] == o3["prompt_id"][0]
        assert not np.array_equal(o3["latent"][0], o3["latent"][1])  # env i uses seed + i
    # a whole trajectory under the same actions: terminal images of env 0 agree
    actions = np.random.default_rng(0).standard_normal((4, 3, 4, 8, 8)).astype(np.float32)
    for env in (one, venv):
        env.reset(seed=7)
        for k in range(4):
            *_, info = env.step(actions[k, : env.num_envs])
        env.last_image = info["image"][0]
    assert np.abs(one.last_image.astype(int) - venv.last_image.astype(int)).max() <= 1


def test_single_env_seeding_and_np_random():
    env = gym.make("DenoisingDiffusion-v0", **TINY)
    a, _ = env.reset(seed=5)
    b, _ = env.reset(seed=5)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    env2 = gym.make("DenoisingDiffusion-v0", **TINY)
    c, _ = env2.reset(seed=5)
    assert np.array_equal(a["latent"], c["latent"])


def test_prompt_sources(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# animals\na cat\n\na dog\n", encoding="utf-8")
    for prompts, allowed in [
        (path, {"a cat", "a dog"}),
        (str(path), {"a cat", "a dog"}),
        ("a lonely prompt", {"a lonely prompt"}),
        (lambda rng: f"digit {rng.integers(3)}", {"digit 0", "digit 1", "digit 2"}),
    ]:
        venv = DenoisingDiffusionVectorEnv(num_envs=3, **{**TINY, "prompts": prompts})
        seen = set()
        for seed in range(4):
            obs, _ = venv.reset(seed=seed)
            seen |= set(venv.prompt_strings(obs["prompt_id"]))
        assert seen <= allowed and len(seen) >= min(2, len(allowed))
    venv = DenoisingDiffusionVectorEnv(num_envs=1, **{**TINY, "prompts": lambda rng: 3})
    with pytest.raises(TypeError) as e:
        venv.reset(seed=0)
    assert str(e.value) == "the prompt function '<lambda>' returned int, expected str"


def test_prompt_embeds_are_cached_per_id_and_match_the_text_encoder():
    venv = _vector(prompts=["a cat", "a dog"])
    embeds = venv.prompt_embeds([1, 2, 1])
    direct = venv.backend.encode_prompts(["a cat", "a dog", "a cat"])
    torch.testing.assert_close(embeds, direct, rtol=0, atol=1e-6)
    torch.testing.assert_close(venv.negative_prompt_embeds(2), venv.backend.encode_prompts(["", ""]))
    assert venv.prompt_strings([0, 1, 2]) == ["", "a cat", "a dog"]


def test_render_returns_one_image_per_env():
    venv = _vector(render_mode="rgb_array")
    venv.reset(seed=0)
    images = venv.render()
    assert len(images) == 3 and images[0].shape == (16, 16, 3) and images[0].dtype == np.uint8
    single = gym.make("DenoisingDiffusion-v0", render_mode="rgb_array", **TINY)
    single.reset(seed=0)
    assert single.render().shape == (16, 16, 3)


def test_bfloat16_model_keeps_float32_latents():
    venv = _vector(dtype="bfloat16")
    observations, *_, infos, actions = run_episode(venv)
    assert observations[-1]["latent"].dtype == np.float32
    assert np.array_equal(observations[-1]["latent"], actions[-1])
    assert venv.backend.unet.dtype == torch.bfloat16 and infos[-1]["image"].shape == (3, 16, 16, 3)


def test_cpu_env_does_not_initialise_cuda():
    _vector().reset(seed=0)
    assert not torch.cuda.is_initialized()


TRAILING = {"scheduler_overrides": {"timestep_spacing": "trailing", "steps_offset": 0}}


@pytest.mark.parametrize("overrides", [{}, TRAILING])
def test_all_log_probs_of_a_default_length_rollout_are_finite(overrides):
    venv = DenoisingDiffusionVectorEnv(num_envs=3, model="tiny", device="cpu", **overrides)
    assert venv.num_steps == 20
    sampler = DDIMSampler(venv)
    obs, _ = venv.reset(seed=0)
    log_probs = []
    for _ in range(venv.num_steps):
        action, log_prob = sampler(obs)
        obs, *_ = venv.step(action)
        log_probs.append(log_prob)
    assert np.isfinite(np.stack(log_probs)).all()


def test_envs_on_the_same_model_share_prompt_ids():
    train = _vector(prompts=["a cat", "a dog"])
    evaluation = DenoisingDiffusionVectorEnv(num_envs=2, **{**TINY, "model": train.backend, "prompts": ["a dog", "x"]})
    obs, _ = evaluation.reset(seed=0, options={"prompts": ["x", "a cat"]})
    assert train.prompt_strings(obs["prompt_id"]) == ["x", "a cat"]
    torch.testing.assert_close(train.prompt_embeds(obs["prompt_id"]), evaluation.prompt_embeds(obs["prompt_id"]))
