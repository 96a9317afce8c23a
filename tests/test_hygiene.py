"""docs/reliability.md 23–24: the suite is offline with GPU tests marked, and rollout storage does not grow with
steps × prompt-embedding size."""

import os
import socket

import gymnasium as gym
import pytest
import torch

from agents.buffer import TrajectoryBuffer
from tests.conftest import TINY


def test_the_suite_is_offline():
    with pytest.raises(ConnectionRefusedError, match=r"the test suite is offline: a connection to 192.0.2.1 was"):
        socket.create_connection(("192.0.2.1", 443), timeout=1)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_gpu_tests_are_marked_and_skipped_without_a_gpu(monkeypatch):
    from tests import conftest, test_gpu

    marks = test_gpu.pytestmark if isinstance(test_gpu.pytestmark, list) else [test_gpu.pytestmark]
    assert [m.name for m in marks] == ["gpu"] + ["filterwarnings"] * 4  # the whole module; third parties' warnings
    assert all("error" not in m.args[0] for m in marks[1:])  # on the GPU machine's newer libraries are shown

    class Item:
        module, fixturenames = test_gpu, []  # what the slow marker looks at

        def __init__(self, keywords):
            self.keywords, self.markers = keywords, []
            self.function = lambda: None

        def add_marker(self, marker):
            self.markers.append(marker)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    gpu, cpu = Item({"gpu": True}), Item({})
    conftest.pytest_collection_modifyitems(None, [gpu, cpu])
    assert [m.name for m in gpu.markers] == ["skip"] and gpu.markers[0].kwargs["reason"] == "needs a CUDA GPU"
    assert cpu.markers == []


def test_rollout_storage_holds_prompt_ids_not_embeddings():
    """Per episode: T+1 latents, T timesteps and log-probs, one prompt id, reward and advantage — no L × D
    embedding per step or per episode."""
    n, steps, latent = 6, 4, (4, 8, 8)
    buffer = TrajectoryBuffer(n, steps, latent, torch.device("cpu"))
    tensors = {k: v for k, v in vars(buffer).items() if isinstance(v, torch.Tensor)}
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    assert nbytes == n * (steps + 1) * 256 * 4 + n * steps * (8 + 4) + n * 8 + n * 4
    venv = gym.make_vec("DenoisingDiffusion-v0", num_envs=3, **TINY)
    length, width = venv.unwrapped.prompt_embeds([0]).shape[1:]
    assert nbytes < n * steps * length * width * 4  # what a per-step embedding copy alone would have cost
    assert set(venv.observation_space.spaces) == {"latent", "timestep", "prompt_id"}  # obs carry the id only


def test_the_algorithms_import_nothing_of_the_training_application():
    import subprocess
    import sys

    code = ("import sys, agents, agents.ddpo, agents.reinforce, agents.rwr; "
            "print(sorted(m for m in sys.modules if m.startswith('agents.job') or m == 'matplotlib'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_package_tops_and_the_command_line_import_no_torch():
    """``import ddpo_env, agents, rewards`` and the CLI's parser load no torch (its names load on first use), and
    ``import ddpo_env`` still registers the env; then every name in each package's __all__ resolves."""
    import subprocess
    import sys

    code = ("import sys, gymnasium, ddpo_env, agents, rewards, agents.job.cli; "
            "print('torch' in sys.modules, 'DenoisingDiffusion-v0' in gymnasium.registry); "
            "[getattr(package, name) for package in (ddpo_env, agents, rewards) for name in package.__all__]; "
            "print(ddpo_env.backends.__name__, rewards.jpeg.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["False True", "ddpo_env.backends rewards.jpeg"]
    from agents import AGENTS, DDPO_IS, make_agent  # the lazy names are the real ones
    from agents.ddpo import DDPO_IS as defined
    from rewards import REWARDS, JpegCompressibility

    assert DDPO_IS is defined and AGENTS["ddpo-is"] is defined
    assert REWARDS["jpeg_compressibility"] is JpegCompressibility
    with pytest.raises(ValueError, match=r"unknown agent 'ppo': use one of \['awm', 'ddpo-is', 'ddpo-sf', "):
        make_agent("ppo", None)
    import ddpo_env

    with pytest.raises(AttributeError, match="module 'ddpo_env' has no attribute 'no_such_name'"):
        ddpo_env.no_such_name  # noqa: B018


def test_loading_a_stable_diffusion_pipeline_prints_no_torchvision_notice():
    """diffusers' pipeline module imports transformers' CLIPImageProcessor, whose torchvision fallback notice
    ddpo_env filters out (the env never uses an image processor)."""
    import subprocess
    import sys

    code = "import ddpo_env; from diffusers import StableDiffusionPipeline; print('loaded')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "loaded" and "torchvision" not in result.stderr, result.stderr
