"""Rewards as wrappers (docs/reliability.md 16, 17)."""

import gymnasium as gym
import numpy as np
import pytest

from ddpo_env import DDIMSampler
from ddpo_env.models.digit_classifier import images_to_input
from rewards import (
    AestheticScore,
    DigitAlignment,
    DigitMargin,
    JpegCompressibility,
    JpegIncompressibility,
    TerminalReward,
    VectorTerminalReward,
    add_reward,
    digit_agreement,
    from_callable,
    jpeg_size_kb,
)
from tests.conftest import TINY


def run(env, seed=0):
    sampler = DDIMSampler(env)
    obs, _ = env.reset(seed=seed)
    out = []
    for _ in range(env.unwrapped.num_steps if hasattr(env.unwrapped, "num_steps") else 4):
        obs, reward, terminated, truncated, info = env.step(sampler(obs)[0])
        out.append((reward, terminated, info))
    return out


@pytest.mark.parametrize("num_envs", [1, 3])
def test_vector_reward_equals_the_function_per_sample_and_only_at_the_last_step(num_envs):
    calls = []

    def brightness(images, prompts):
        calls.append((images.shape, images.dtype, images.min(), images.max(), list(prompts)))
        return images.mean(axis=(1, 2, 3)) / 255.0

    env = from_callable(gym.make_vec("DenoisingDiffusion-v0", num_envs=num_envs, **TINY), brightness)
    steps = run(env)
    assert len(calls) == 1  # called once, at step T
    shape, dtype, low, high, prompts = calls[0]
    assert shape == (num_envs, 16, 16, 3) and dtype == np.uint8 and 0 <= low <= high <= 255
    for reward, terminated, info in steps[:-1]:
        assert np.array_equal(reward, np.zeros(num_envs)) and "reward_brightness" not in info
    reward, terminated, info = steps[-1]
    expected = np.array([brightness(info["image"][i : i + 1], [info["prompt"][i]])[0] for i in range(num_envs)])
    np.testing.assert_allclose(reward, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(info["reward_brightness"], expected)
    assert prompts == list(info["prompt"])


def test_single_env_form_and_recorded_arguments():
    scorer = JpegIncompressibility(quality=80, upscale=2)
    env = TerminalReward(gym.make("DenoisingDiffusion-v0", **TINY), scorer, weight=0.5)
    steps = run(env)
    reward, terminated, info = steps[-1]
    assert terminated and reward == pytest.approx(0.5 * jpeg_size_kb(info["image"], 80, 2))
    assert info["reward_jpeg_incompressibility"] == pytest.approx(jpeg_size_kb(info["image"], 80, 2))
    recorded = env.spec.additional_wrappers[-1].kwargs
    assert recorded["scorer"] is scorer and recorded["weight"] == 0.5  # shared like a function, never copied
    # by name, the wrapper matching the env: options build the scorer
    venv = add_reward(gym.make_vec("DenoisingDiffusion-v0", num_envs=2, **TINY), "jpeg_compressibility", upscale=3)
    assert isinstance(venv, VectorTerminalReward) and venv.weight == 1.0
    assert repr(venv).startswith("<VectorTerminalReward(JpegCompressibility(quality=95, upscale=3), weight=1), ")
    assert (venv.scorer.quality, venv.scorer.upscale) == (95, 3)
    single = add_reward(gym.make("DenoisingDiffusion-v0", **TINY), scorer, -2.0)
    assert isinstance(single, TerminalReward) and single.scorer is scorer and single.weight == -2.0
    assert str(single) == repr(single) and repr(single).startswith(
        "<TerminalReward(JpegIncompressibility(quality=80, upscale=2), weight=-2), <")
    with pytest.raises(TypeError, match=r"a reward wraps a Gymnasium env, got int"):
        add_reward(3, scorer)


def test_jpeg_size_matches_pillow_and_signs():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    flat = np.zeros((16, 16, 3), dtype=np.uint8)
    assert jpeg_size_kb(image) > jpeg_size_kb(flat) > 0
    scorer = JpegCompressibility()  # a plain object: no env needed
    assert scorer(np.stack([image, flat]), ["", ""]).tolist() == [-jpeg_size_kb(image), -jpeg_size_kb(flat)]


@pytest.mark.parametrize(
    "fn, error, message",
    [
        (lambda im, p: np.zeros((len(im), 2)), ValueError,
         "reward 'bad' returned shape (3, 2) for 3 images, expected (3,)"),
        (lambda im, p: np.array([0.0, np.nan, np.inf]), FloatingPointError,
         "reward 'bad' returned NaN or Inf for sample(s) [1, 2]"),
        (lambda im, p: 3.0, TypeError, "reward 'bad' returned float, expected an array of floats"),
        (lambda im, p: np.array(["a", "b", "c"]), TypeError, "reward 'bad' returned dtype <U1, expected floats"),
    ],
)
def test_bad_reward_output_raises_naming_the_reward(fn, error, message):
    env = from_callable(gym.make_vec("DenoisingDiffusion-v0", num_envs=3, **TINY), fn, name="bad")
    with pytest.raises(error) as e:
        run(env)
    assert str(e.value) == message


def test_constructor_arguments_are_validated():
    venv = gym.make_vec("DenoisingDiffusion-v0", num_envs=1, **TINY)
    with pytest.raises(ValueError) as e:
        JpegCompressibility(quality=0)
    assert str(e.value) == "jpeg_compressibility: quality must be an int in [1, 100], got 0"
    with pytest.raises(ValueError) as e:
        VectorTerminalReward(venv, JpegCompressibility(), weight=float("inf"))
    assert str(e.value) == "jpeg_compressibility: weight must be a finite number, got inf"
    with pytest.raises(TypeError, match=r"needs a scorer: .* \(a class: build it first\)"):
        VectorTerminalReward(venv, JpegCompressibility)
    with pytest.raises(ValueError) as e:
        add_reward(venv, JpegCompressibility(), upscale=2)
    assert str(e.value) == "reward 'JpegCompressibility' is a scorer object: it takes no options (got ['upscale'])"
    with pytest.raises(TypeError) as e:
        from_callable(venv, "not a function")
    assert str(e.value) == "from_callable needs a function fn(images, prompts) -> rewards, got str"


def test_digit_alignment_scores_real_digits_high_and_refuses_unknown_prompts():
    from ddpo_env.models.digits import digits_dataset

    data = digits_dataset()
    images = ((data["heldout_images"][:20, 0] + 1) / 2 * 255).round().byte().numpy()
    rgb = np.repeat(images[..., None], 3, axis=-1)
    labels = data["heldout_labels"][:20].tolist()
    reward = DigitAlignment()
    right = reward(rgb, [f"the number {d}" for d in labels])
    wrong = reward(rgb, [f"the number {(d + 1) % 10}" for d in labels])
    assert right.mean() > 0.9 and wrong.mean() < 0.1
    margin = DigitMargin()
    right_margin = margin(rgb, [f"the number {d}" for d in labels])
    logits = margin.classifier(images_to_input(rgb)).detach()
    for i, d in enumerate(labels):  # by hand: the prompted digit's logit over the best other one
        others = [float(logits[i, j]) for j in range(10) if j != d]
        assert right_margin[i] == pytest.approx(float(logits[i, d]) - max(others), abs=1e-5)
    assert (right_margin > 0).mean() == (right > 0.5).mean() == digit_agreement(rgb, [str(d) for d in labels])
    assert digit_agreement(rgb, ["a cat"] * len(rgb)) is None
    with pytest.raises(ValueError) as e:
        reward(rgb[:1], ["a cat"])
    assert str(e.value) == ("digit_alignment cannot tell which digit the prompt 'a cat' asks for: name exactly one "
                            "digit (0-9 or zero..nine)")


def test_digit_alignment_on_the_default_model_episode():
    env = add_reward(gym.make("DenoisingDiffusion-v0", device="cpu"), "digit_alignment")
    assert env.scorer.device == "cpu"  # by name: the env's device
    sampler = DDIMSampler(env)
    obs, _ = env.reset(seed=0, options={"prompt": "the number four"})
    terminated = False
    while not terminated:
        obs, reward, terminated, _, info = env.step(sampler(obs)[0])
    assert 0.5 < reward <= 1.0 and info["reward_digit_alignment"] == reward


def test_weighted_sum_adds_weighted_scores_and_keeps_each_in_info():
    from rewards import weighted_sum

    venv = gym.make_vec("DenoisingDiffusion-v0", num_envs=3, **TINY)
    env = weighted_sum(venv, {"jpeg_compressibility": 2.0, "jpeg_incompressibility": 0.5},
                       options={"jpeg_compressibility": {"upscale": 2}})
    reward, terminated, info = run(env)[-1]
    expected = 2.0 * info["reward_jpeg_compressibility"] + 0.5 * info["reward_jpeg_incompressibility"]
    np.testing.assert_allclose(reward, expected)
    sizes = np.array([jpeg_size_kb(im, 95, 2) for im in info["image"]])
    np.testing.assert_allclose(info["reward_jpeg_compressibility"], -sizes)
    with pytest.raises(ValueError) as e:
        weighted_sum(venv, {"beauty": 1.0})
    assert str(e.value) == ("unknown reward 'beauty': use one of ['aesthetic', 'alignment', 'digit_alignment', "
                            "'digit_margin', 'geneval', 'geneval_binary', 'geneval_strict', 'jpeg_compressibility', "
                            "'jpeg_incompressibility'] or an import path package.module:function")
    with pytest.raises(ValueError, match=r"reward 'nowhere\.module:f' cannot be imported"):
        weighted_sum(venv, {"nowhere.module:f": 1.0})
    with pytest.raises(ValueError) as e:
        weighted_sum(venv, {"jpeg_compressibility": 0})
    assert str(e.value) == "weighted_sum: the weight of 'jpeg_compressibility' must be a finite non-zero number, got 0"


@pytest.fixture(scope="module")
def tiny_clip_and_mlp(tmp_path_factory):
    """A random CLIP with ViT-L/14's projection size (768) and a random head of the real predictor's shape."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from rewards.aesthetic import AestheticMLP

    folder = tmp_path_factory.mktemp("tiny-clip")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 99, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 37,
                       "num_hidden_layers": 2, "num_attention_heads": 4},
        projection_dim=768,
    )
    CLIPModel(config).save_pretrained(folder / "clip")
    torch.save(AestheticMLP().state_dict(), folder / "head.pth")
    return str(folder / "clip"), str(folder / "head.pth")


def test_aesthetic_score_equals_clip_embedding_through_the_mlp(tiny_clip_and_mlp):
    import torch
    from transformers import CLIPModel

    from rewards.aesthetic import AestheticMLP, clip_pixels

    clip_path, head_path = tiny_clip_and_mlp
    env = add_reward(gym.make_vec("DenoisingDiffusion-v0", num_envs=3, **TINY), "aesthetic", clip_model=clip_path,
                     mlp_weights=head_path, batch_size=2)
    reward, terminated, info = run(env)[-1]
    clip = CLIPModel.from_pretrained(clip_path).eval()
    head = AestheticMLP()
    head.load_state_dict(torch.load(head_path, weights_only=True))
    head.eval()
    with torch.no_grad():
        e = clip.visual_projection(clip.vision_model(pixel_values=clip_pixels(info["image"], 32, "cpu")).pooler_output)
        expected = head(e / e.norm(dim=-1, keepdim=True)).squeeze(1).numpy()
    np.testing.assert_allclose(reward, expected, rtol=1e-5, atol=1e-6)
    assert env.scorer.mlp.layers[0].weight.shape == (1024, 768) and env.scorer.mlp.layers[7].weight.shape == (1, 16)


def test_aesthetic_names_the_fix_when_weights_are_missing(tiny_clip_and_mlp, tmp_path):
    clip_path, _ = tiny_clip_and_mlp
    with pytest.raises(FileNotFoundError) as e:
        AestheticScore(clip_model=clip_path, mlp_weights=str(tmp_path / "missing.pth"))
    assert str(e.value) == (
        f"aesthetic: no predictor weights at {str(tmp_path / 'missing.pth')!r}. Download the LAION aesthetic "
        "predictor's MLP (e.g. sac+logos+ava1-l14-linearMSE.pth) and pass its path as mlp_weights="
    )
    with pytest.raises(FileNotFoundError, match=r"^aesthetic: could not load a CLIP model from '/nowhere/clip'"):
        AestheticScore(clip_model="/nowhere/clip", mlp_weights="x.pth")


def test_the_spec_of_a_wrapped_env_rebuilds_it_with_its_rewards():
    from rewards import weighted_sum

    env = weighted_sum(gym.make("DenoisingDiffusion-v0", **TINY), {"jpeg_incompressibility": 0.5})
    env = TerminalReward(env, JpegCompressibility(quality=80, upscale=2), weight=2.0)
    rebuilt = gym.make(env.spec)
    assert [w.kwargs for w in rebuilt.spec.additional_wrappers] == [w.kwargs for w in env.spec.additional_wrappers]
    (reward, _, info), (rebuilt_reward, _, rebuilt_info) = run(env, seed=3)[-1], run(rebuilt, seed=3)[-1]
    assert rebuilt_reward == reward != 0
    assert rebuilt_info["reward_jpeg_compressibility"] == info["reward_jpeg_compressibility"]
    assert rebuilt_info["reward_jpeg_incompressibility"] == info["reward_jpeg_incompressibility"]


def brightness(images, prompts):  # a user's reward, importable as tests.test_rewards:brightness
    return images.astype(np.float64).mean(axis=(1, 2, 3)) / 255


def test_weighted_sum_takes_a_users_function_by_name_or_import_path():
    from rewards import weighted_sum

    venv = gym.make_vec("DenoisingDiffusion-v0", num_envs=3, **TINY)
    env = weighted_sum(venv, {"jpeg_compressibility": 1.0, "tests.test_rewards:brightness": 3.0, "mine": -1.0},
                       custom={"mine": brightness})
    reward, _, info = run(env)[-1]
    np.testing.assert_allclose(info["reward_brightness"], brightness(info["image"], []))
    np.testing.assert_allclose(info["reward_mine"], info["reward_brightness"])
    np.testing.assert_allclose(reward, info["reward_jpeg_compressibility"] + 2.0 * info["reward_brightness"])
