"""Data-parallel training over torch.distributed (agents/distributed.py), on CPU with 2 processes over gloo
launched by torchrun (``accelerate launch --cpu --num_processes 2`` silently runs one process)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from stable_baselines3.common.logger import Logger

from agents import make_agent
from agents.job.checkpoint import list_checkpoints, read_meta
from agents.job.train import TrainConfig, build_agent, build_env
from tests.conftest import TINY

# Global batch: 4 samples per epoch in micro-batches of 4 — each of the 2 ranks samples 2 episodes (2 envs) and
# trains on micro-batches of 2; one optimizer step per epoch. (Adam's first step is lr·g/(|g| + 1e-8): where a
# gradient entry is ~1e-8, float rounding — other batch shapes, other thread counts — changes that weight's step by
# a few % of lr, so lr is 1e-5 for a ≤1e-6 comparison.)
AGENT = {"samples_per_epoch": 4, "batch_size": 4, "lora_rank": 4, "learning_rate": 1e-5, "seed": 3}

WORKER = """
    import json, sys, torch, torch.distributed as dist
    import gymnasium as gym
    from stable_baselines3.common.logger import Logger
    import ddpo_env
    from agents import make_agent
    from agents.distributed import close_process_group, init_from_environment
    from rewards import JpegCompressibility, VectorTerminalReward

    init_from_environment("cpu")
    rank = dist.get_rank()
    tiny, agent_kwargs, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    results = {}
    for name in ("ddpo-is", "ddpo-sf", "rwr", "rwr-sparse", "ddpo-is+groups+kl+ema"):
        grpo = name == "ddpo-is+groups+kl+ema"
        env = VectorTerminalReward(gym.make_vec("DenoisingDiffusion-v0", num_envs=2, group_size=2 if grpo else 1,
                                                **tiny), JpegCompressibility(upscale=2))
        extra = {"top_fraction": 0.25} if name == "rwr-sparse" else {}  # 1 sample of 4: on one rank only
        extra = {"group_advantages": True, "kl_coef": 1.0, "ema_decay": 0.5} if grpo else extra
        agent = make_agent(name.split("+")[0], env, **agent_kwargs, **extra)
        agent.set_logger(Logger(folder=None, output_formats=[]))
        params = agent.policy.trainable_parameters()
        start = [p.detach().clone() for p in params]
        agent.learn(total_samples=4)  # one epoch: one update
        b = agent.buffer
        results[name] = {
            "start": start, "after_one": [p.detach().clone() for p in params],
            "buffer": {"latents": b.latents.clone(), "timesteps": b.timesteps.clone(), "log_probs": b.log_probs.clone(),
                       "prompt_ids": b.prompt_ids.clone(), "prompts": list(b.prompts), "rewards": b.rewards.copy()},
            "train_samples": len(agent.train_samples()),
        }
        agent.learn(total_samples=4, reset_num_timesteps=False)
        results[name]["after_two"] = [p.detach().clone() for p in params]
        results[name]["updates"] = agent._n_updates
    torch.save(results, f"{out}/rank{rank}.pt")
    close_process_group()
"""


def torchrun(*args: str, port: int, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every agent trained 2 epochs by 2 ranks: what each rank saw and its parameters."""
    out = tmp_path_factory.mktemp("ranks")
    script = out / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    torchrun(str(script), json.dumps(TINY), json.dumps(AGENT), str(out), port=29531)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def one_process_update(name: str, ranks: list[dict]) -> list[torch.Tensor]:
    """A 1-process agent over both ranks' rollouts together (the same global batch): its parameters after the
    update, from the same start."""
    import gymnasium as gym

    from rewards import JpegCompressibility, VectorTerminalReward

    grpo = name == "ddpo-is+groups+kl+ema"
    env = VectorTerminalReward(gym.make_vec("DenoisingDiffusion-v0", num_envs=4, group_size=2 if grpo else 1, **TINY),
                               JpegCompressibility(upscale=2))
    extra = {"group_advantages": True, "kl_coef": 1.0, "ema_decay": 0.5} if grpo else {}
    agent = make_agent(name.split("+")[0], env, **AGENT, **extra)
    agent.set_logger(Logger(folder=None, output_formats=[]))
    params = agent.policy.trainable_parameters()
    with torch.no_grad():
        for p, start in zip(params, ranks[0][name]["start"], strict=True):
            p.copy_(start)
    b, parts = agent.buffer, [r[name]["buffer"] for r in ranks]
    for key in ("latents", "timesteps", "log_probs", "prompt_ids"):
        setattr(b, key, torch.cat([part[key] for part in parts]))
    b.prompts = parts[0]["prompts"] + parts[1]["prompts"]
    b.rewards = np.concatenate([part["rewards"] for part in parts])
    agent._compute_advantages()
    agent.train()
    return [p.detach() for p in params]


def test_two_ranks_stay_identical_and_every_agent_updates(two_ranks):
    for name in ("ddpo-is", "ddpo-sf", "rwr", "rwr-sparse", "ddpo-is+groups+kl+ema"):
        r0, r1 = two_ranks[0][name], two_ranks[1][name]
        for a, b in zip(r0["start"], r1["start"], strict=True):
            assert torch.equal(a, b)  # the same start
        for key in ("after_one", "after_two"):
            for a, b in zip(r0[key], r1[key], strict=True):
                assert torch.equal(a, b), f"{name}: ranks differ {key}"
        assert max(float((a - s).abs().max()) for a, s in zip(r0["after_two"], r0["start"], strict=True)) > 0
        assert r0["updates"] == r1["updates"] == 2, name
        # each rank sampled its own episodes
        assert not torch.equal(r0["buffer"]["latents"][:, 0], r1["buffer"]["latents"][:, 0])
    for rank in two_ranks:  # group_size 2: a rank's two envs share their group's prompt
        prompts = rank["ddpo-is+groups+kl+ema"]["buffer"]["prompts"]
        assert len(prompts) == 2 and prompts[0] == prompts[1]
    sparse = [r["rwr-sparse"]["train_samples"] for r in two_ranks]
    assert sorted(sparse) == [0, 1]  # the global top sample lives on one rank; the other still took the step


@pytest.mark.parametrize("name", ["ddpo-is", "ddpo-sf", "ddpo-is+groups+kl+ema"])
def test_two_ranks_equal_one_process_over_the_same_global_batch(two_ranks, name):
    """After one update, both ranks' parameters equal a 1-process update over their rollouts together (≤1e-6); with
    group advantages over the gathered groups and the KL penalty too."""
    expected = one_process_update(name, two_ranks)
    for got, want in zip(two_ranks[0][name]["after_one"], expected, strict=True):
        torch.testing.assert_close(got, want.detach(), atol=1e-6, rtol=0)
    moved = max(float((w - s).abs().max()) for w, s in zip(expected, two_ranks[0][name]["start"], strict=True))
    assert moved > 5e-6  # the comparison is not between unchanged weights (Adam's first step moves them by ~lr)


def test_rank_envs_are_slices_of_one_process_env(two_ranks):
    """Rank r's env i is seeded as env 2r + i of one process: the rollouts' x_T and prompts match (first epoch)."""
    import gymnasium as gym

    env = gym.make_vec("DenoisingDiffusion-v0", num_envs=4, **TINY)
    obs, _ = env.reset(seed=AGENT["seed"])
    x_T = torch.cat([r["ddpo-is"]["buffer"]["latents"][:, 0] for r in two_ranks])
    torch.testing.assert_close(x_T, torch.as_tensor(obs["latent"]), atol=0, rtol=0)
    prompt_ids = torch.cat([r["ddpo-is"]["buffer"]["prompt_ids"] for r in two_ranks])
    assert prompt_ids.tolist() == np.asarray(obs["prompt_id"]).reshape(-1).tolist()


def test_batches_that_do_not_split_over_ranks_are_refused():
    from agents.config import DDPOISConfig

    with pytest.raises(ValueError, match=r"samples_per_epoch=6 must be a multiple of world size × num_envs = 2 × 2"):
        DDPOISConfig(samples_per_epoch=6, batch_size=2).validate_ranks(2, 2)
    with pytest.raises(ValueError, match=r"batch_size=3 must be a multiple of the world size 2"):
        DDPOISConfig(samples_per_epoch=8, batch_size=3).validate_ranks(2, 2)
    DDPOISConfig(samples_per_epoch=8, batch_size=4).validate_ranks(2, 2)


def test_torchrun_train_job_writes_once_and_resumes_on_one_process(tmp_path):
    """``torchrun -m agents.job.cli train``: rank 0 alone writes checkpoints and metrics; the run resumes on a
    different number of processes (1) and finishes its epochs."""
    cfg = TrainConfig.from_flat({**TINY, "samples_per_epoch": 4, "num_envs": 2, "batch_size": 2, "lora_rank": 4,
                         "epochs": 2, "save_every": 1, "keep_last": 0, "evaluate": False, "tensorboard": False,
                         "image_every": 0, "output_dir": str(tmp_path / "run")})
    config = tmp_path / "job.json"
    config.write_text(json.dumps({k: v for k, v in cfg.to_flat().items() if k != "reward_options"}))
    result = torchrun("-m", "agents.job.cli", "train", "--config", str(config), port=29533)
    checkpoints = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in checkpoints] == ["epoch-000001", "epoch-000002"]
    assert result.stdout.count("ddpo-is on the tiny model") == 1  # one summary: rank 0's
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"]
    assert len(history) == 2 and read_meta(checkpoints[-1])["num_timesteps"] == 2 * 2 * 4  # rank 0's env steps

    from agents.job.train import train

    resumed = train(TrainConfig.from_flat({**cfg.to_flat(), "epochs": 3, "resume": "auto"}))
    assert resumed.agent.num_epochs == 3 and len(resumed.metrics["epochs"]) == 3
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")][-1] == "epoch-000003"


def test_single_process_agents_are_unchanged_by_the_rank_code():
    """Without a process group the agent is one rank of one: all samples, the whole batch, no collectives."""
    cfg = TrainConfig.from_flat({**TINY, "samples_per_epoch": 6, "num_envs": 3, "batch_size": 3})
    agent = build_agent(cfg, build_env(cfg))
    assert agent.ranks is None and agent.rank_samples == 6 and agent.rank_batch_size == 3
    assert agent.rank_rows() == slice(None)
