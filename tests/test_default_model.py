"""The embedded default model and its digit classifier (issue #3)."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ddpo_env import DDIMSampler, DenoisingDiffusionVectorEnv
from ddpo_env.backends import EmbeddedBackend
from ddpo_env.models import digits, embedded
from ddpo_env.models.digit_classifier import images_to_input, load_classifier
from ddpo_env.models.train_default import TrainArgs, train


def test_shipped_weights_load_and_are_small():
    backend = EmbeddedBackend(digits.DEFAULT_DIR, name="default")
    size = (digits.DEFAULT_DIR / "unet.safetensors").stat().st_size
    assert size <= 10 * 2**20
    shipped = load_file(digits.DEFAULT_DIR / "unet.safetensors")
    for name, param in backend.unet.state_dict().items():
        assert torch.equal(param, shipped[name]), name
    assert backend.unet.config.cross_attention_dim == 384 and backend.unet.config.in_channels == 1


def test_model_index_round_trips_into_the_unet_config():
    index = embedded.read_model_index(digits.DEFAULT_DIR)
    assert index["unet"] == digits.UNET_CONFIG and index["scheduler"] == embedded.SCHEDULER_CONFIG
    unet = embedded.load_unet(digits.DEFAULT_DIR)
    for key, value in index["unet"].items():
        got = unet.config[key]
        assert (list(got) if isinstance(got, tuple) else got) == value, key


def test_training_script_is_reproducible_and_its_output_loads(tmp_path):
    records = []
    for run in ("a", "b"):
        records.append(train(TrainArgs(steps=2, batch_size=4, warmup_steps=1, out=str(tmp_path / run))))
    first, second = load_file(tmp_path / "a" / "unet.safetensors"), load_file(tmp_path / "b" / "unet.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)
    reloaded = embedded.load_unet(tmp_path / "a")
    assert all(torch.equal(v, first[k]) for k, v in reloaded.state_dict().items())
    index = json.loads((tmp_path / "a" / "model_index.json").read_text())
    assert index["training"]["steps"] == 2 and np.isfinite(index["training"]["final_loss_mean_last_100"])


def test_default_env_runs_an_episode_and_returns_gray_uint8_images():
    env = gym.make("DenoisingDiffusion-v0", device="cpu")
    assert isinstance(env.unwrapped.backend, EmbeddedBackend) and env.unwrapped.schedule.num_steps == 20
    sampler = DDIMSampler(env)
    obs, _ = env.reset(seed=0, options={"prompt": "the number seven"})
    assert obs["latent"].shape == (1, 16, 16)
    terminated = False
    while not terminated:
        action, log_prob = sampler(obs)
        assert np.isfinite(log_prob)
        obs, _reward, terminated, _truncated, info = env.step(action)
    image = info["image"]
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8 and info["prompt"] == "the number seven"
    assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])
    expected = np.round((np.clip(obs["latent"][0], -1, 1) / 2 + 0.5) * 255)
    assert np.abs(image[..., 0].astype(int) - expected.astype(int)).max() <= 1


def test_any_prompt_string_is_accepted():
    venv = DenoisingDiffusionVectorEnv(num_envs=2, device="cpu", num_steps=2)
    venv.reset(seed=0, options={"prompts": ["", "a purple elephant riding a bicycle through Paris at noon " * 4]})
    embeds = venv.prompt_embeds([0, 1, 2])
    assert embeds.shape == (3, embedded.MAX_PROMPT_TOKENS, 384) and torch.isfinite(embeds).all()


def test_default_model_refuses_other_image_sizes():
    with pytest.raises(ValueError) as e:
        DenoisingDiffusionVectorEnv(num_envs=1, device="cpu", image_size=32)
    assert str(e.value) == "the default model makes 16x16 images only, got image_size (32, 32)"


def test_classifier_heldout_accuracy_is_at_least_95_percent():
    data = digits.digits_dataset(seed=0)
    classifier = load_classifier()
    uint8 = ((data["heldout_images"][:, 0] + 1) / 2 * 255).round().to(torch.uint8).numpy()
    rgb = np.repeat(uint8[..., None], 3, axis=-1)
    accuracy = (classifier.predict_proba(rgb).argmax(1) == data["heldout_labels"]).float().mean().item()
    assert accuracy >= 0.95
    record = json.loads((digits.DEFAULT_DIR / "classifier.json").read_text())
    assert abs(record["heldout_accuracy"] - accuracy) < 0.01


def test_split_is_stratified_and_fixed_by_seed():
    a, b = digits.digits_dataset(seed=0), digits.digits_dataset(seed=0)
    assert torch.equal(a["heldout_labels"], b["heldout_labels"])
    assert len(a["train_labels"]) + len(a["heldout_labels"]) == 1797
    counts = torch.bincount(a["heldout_labels"], minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # 20 % of each class (174..183 images per class)
    c = digits.digits_dataset(seed=1)
    assert not torch.equal(a["heldout_images"], c["heldout_images"])


def test_classifier_input_conversion_rejects_float_images():
    with pytest.raises(TypeError) as e:
        images_to_input(np.zeros((1, 16, 16, 3), np.float32))
    assert str(e.value) == "images must be uint8 (B, H, W[, C]), got dtype torch.float32"
