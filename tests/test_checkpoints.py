"""Checkpoints (docs/reliability.md 18-22): exact save/load in a fresh process, bit-exact resume after SIGKILL, atomic
writes with safe rotation, recorded versions, the final epoch always saved."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from agents.job.checkpoint import (
    FORMAT_VERSION,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from agents.job.evaluation import evaluate_policy
from agents.job.train import TrainConfig, build_agent, build_env, train

JOB = {"model": "tiny", "num_steps": 4, "samples_per_epoch": 6, "num_envs": 3, "batch_size": 3, "device": "cpu",
       "lora_rank": 4, "learning_rate": 1e-3, "evaluate": False, "tensorboard": False, "image_every": 0, "epochs": 2}


def job(tmp_path, **overrides) -> TrainConfig:
    return TrainConfig.from_flat({**JOB, "output_dir": str(tmp_path / "run"), **overrides})


def run_python(code: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": os.getcwd()})
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def assert_trees_equal(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            assert_trees_equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_trees_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def trained_job(tmp_path_factory):
    """The module's baseline job, trained once: 3 epochs, a checkpoint each epoch, the newest 2 kept. Tests read it
    (copy a checkpoint before changing it) and do not train it further."""
    folder = tmp_path_factory.mktemp("job")
    cfg = job(folder, epochs=3, save_every=1, keep_last=2)
    return cfg, train(cfg).agent, folder / "run" / "checkpoints"


def test_save_then_load_in_a_fresh_process_is_exact(trained_job, tmp_path):
    """18: weights and optimizer state exactly equal; a seeded sample matches; other env shapes are refused."""
    cfg, agent, root = trained_job
    path = latest_checkpoint(root)
    eval_env = build_env(cfg, num_envs=3, model=agent.diffusion_env.backend)
    expected = evaluate_policy(agent.policy, eval_env, ["a cat", "a dog", "a bird"], seed=7).images
    np.save(tmp_path / "expected.npy", expected)
    torch.save({"weights": agent.policy.trainable_state_dict(), "optimizer": agent.policy.optimizer.state_dict()},
               tmp_path / "expected.pt")
    run_python("""
        import sys, numpy as np, torch
        from agents.job.checkpoint import load_checkpoint
        from agents.job.evaluation import evaluate_policy
        from agents.job.train import TrainConfig, build_agent, build_env
        import json
        cfg = TrainConfig.from_flat(json.loads(sys.argv[1]))
        agent = build_agent(cfg, build_env(cfg))
        load_checkpoint(agent, sys.argv[2])
        expected = torch.load(sys.argv[3] + "/expected.pt", weights_only=True)
        for name, value in agent.policy.trainable_state_dict().items():
            assert torch.equal(value, expected["weights"][name]), name
        saved, loaded = expected["optimizer"], agent.policy.optimizer.state_dict()
        assert saved["param_groups"] == loaded["param_groups"]
        for i, state in saved["state"].items():
            for key, value in state.items():
                assert torch.equal(loaded["state"][i][key], value), (i, key)
        eval_env = build_env(cfg, num_envs=3, model=agent.diffusion_env.backend)
        images = evaluate_policy(agent.policy, eval_env, ["a cat", "a dog", "a bird"], seed=7).images
        assert np.abs(images.astype(int) - np.load(sys.argv[3] + "/expected.npy").astype(int)).max() == 0
        print("ok", agent.num_epochs)
    """, json.dumps(cfg.to_flat()), str(path), str(tmp_path))

    other = build_agent(job(tmp_path, num_envs=2, batch_size=2), build_env(job(tmp_path, num_envs=2, batch_size=2)))
    with pytest.raises(ValueError) as e:
        load_checkpoint(other, path)
    assert str(e.value) == (f"checkpoint {path} was saved with a different env: {{'num_envs': (3, 2)}} (saved, here): "
                            "build the agent with the saved run's config (a checkpoint holds each env's state, so "
                            "resuming needs the same env; Class.load(path, env=env) loads the agent alone onto "
                            "another num_envs)")
    sixteen = job(tmp_path, lora_rank=8)
    with pytest.raises(ValueError, match=r"build the policy with the saved run's model and lora_rank$"):
        load_checkpoint(build_agent(sixteen, build_env(sixteen)), path)


KILL_AFTER_EPOCH_2 = """
    import json, os, signal, sys
    from agents.hooks import EpochEndCallback
    from agents.job.train import TrainConfig, train

    class Kill(EpochEndCallback):
        def on_epoch_logged(self):
            if self.model.num_epochs == 2:  # after the job's own callbacks saved epoch 2
                os.kill(os.getpid(), signal.SIGKILL)

    train(TrainConfig.from_flat(json.loads(sys.argv[1])), callbacks=[Kill()])
"""


def test_bit_exact_resume_after_sigkill(tmp_path):
    """19: 4 uninterrupted epochs == 2 epochs + save + SIGKILL + resume + 2 epochs, bit for bit, on the full
    fine-tune that make train runs; counters, per-prompt statistics and every RNG restored."""
    whole, killed = job(tmp_path / "a", epochs=4, lora_rank=0, save_every=1, keep_last=0), job(
        tmp_path / "b", epochs=4, lora_rank=0, save_every=1, keep_last=0)
    cli = [sys.executable, "-m", "agents.job.cli", "train"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    first = subprocess.run([*cli, "--config", str(write_json(tmp_path / "whole.json", whole.to_flat()))],
                           capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-3000:]

    dead = run_python(KILL_AFTER_EPOCH_2, json.dumps(killed.to_flat()), check=False)
    assert dead.returncode == -signal.SIGKILL
    killed_dir = tmp_path / "b" / "run"
    assert [p.name for p in list_checkpoints(killed_dir / "checkpoints")] == ["epoch-000001", "epoch-000002"]
    resumed = subprocess.run([*cli, "--output-dir", str(killed_dir), "--resume", "auto"], capture_output=True,
                             text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {killed_dir / 'checkpoints' / 'epoch-000002'} (epoch 2 of 4)" in resumed.stdout

    a, b = tmp_path / "a" / "run" / "checkpoints" / "epoch-000004", killed_dir / "checkpoints" / "epoch-000004"
    weights_a, weights_b = load_file(a / "trainable.safetensors"), load_file(b / "trainable.safetensors")
    assert len(weights_a) > 100  # the whole UNet
    assert_trees_equal(weights_a, weights_b, "weights")
    state_a = torch.load(a / "state.pt", weights_only=True)
    state_b = torch.load(b / "state.pt", weights_only=True)
    assert_trees_equal(state_a, state_b)  # optimizer, counters, tracker, python/numpy/torch/env/policy RNGs
    assert state_b["counters"] == {"num_timesteps": 4 * 6 * 4, "n_updates": 8, "num_epochs": 4,
                                   "num_skipped_updates": 0}
    assert read_meta(a)["config"]["history"] == read_meta(b)["config"]["history"]
    # progress.csv goes on where the checkpoint was: the same epochs and rewards as the uninterrupted run's
    import csv

    rows = [list(csv.DictReader((d / "logs" / "progress.csv").read_text().splitlines()))
            for d in (tmp_path / "a" / "run", killed_dir)]
    for key in ("rollout/epoch", "rollout/reward_mean"):
        assert [r[key] for r in rows[0]] == [r[key] for r in rows[1]], key
    assert len(rows[1]) == 4


def write_json(path, values):
    path.write_text(json.dumps(values))
    return path


def test_a_failed_write_leaves_the_last_checkpoint_and_prunes_nothing(trained_job, monkeypatch):
    """20: a writer failing midway: no partial checkpoint visible, the previous one loads, rotation untouched."""
    cfg, agent, root = trained_job
    assert [p.name for p in list_checkpoints(root)] == ["epoch-000002", "epoch-000003"]  # keep_last 2
    monkeypatch.setattr(agent, "num_epochs", 4)

    def broken_save(obj, path, *args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", broken_save)
        with pytest.raises(OSError, match="disk full"):
            save_checkpoint(agent, root, keep_last=1)
    assert [p.name for p in list_checkpoints(root)] == ["epoch-000002", "epoch-000003"]  # nothing pruned
    assert sorted(p.name for p in root.iterdir()) == ["epoch-000002", "epoch-000003"]  # no staging left
    fresh = build_agent(cfg, build_env(cfg))
    assert load_checkpoint(fresh, latest_checkpoint(root))["epoch"] == 3


def test_sigkill_during_a_checkpoint_write(tmp_path):
    """20: killed while writing epoch 2: epoch 1 stays the latest and loads; the next save clears the debris."""
    cfg = job(tmp_path, epochs=3, save_every=1, keep_last=0)
    run_python("""
        import json, os, signal, sys, torch
        from agents.job.train import TrainConfig, train
        real_save = torch.save
        def save(obj, path, *args, **kwargs):
            if isinstance(obj, dict) and obj.get("counters", {}).get("num_epochs") == 2:
                real_save(obj, path, *args, **kwargs)  # half the checkpoint is on disk
                os.kill(os.getpid(), signal.SIGKILL)
            real_save(obj, path, *args, **kwargs)
        torch.save = save
        train(TrainConfig.from_flat(json.loads(sys.argv[1])))
    """, json.dumps(cfg.to_flat()), check=False)
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["epoch-000001"]
    assert any(p.name.startswith(".staging-") for p in root.iterdir())  # the half-written one, hidden
    agent = build_agent(cfg, build_env(cfg))
    assert load_checkpoint(agent, latest_checkpoint(root))["epoch"] == 1
    save_checkpoint(agent, root)
    assert not any(p.name.startswith(".staging-") for p in root.iterdir())


def test_only_rank_zero_writes(tmp_path):
    """20: two processes over gloo both call save_checkpoint; one checkpoint appears, from rank 0. Leaving the group
    joins gloo's threads, although building the agent imported torch._dynamo after the group was made (else a
    thread still running at exit can abort the process, about one run in twelve on one core)."""
    script = tmp_path / "two_ranks.py"
    script.write_text(textwrap.dedent("""
        import json, os, sys, torch.distributed as dist
        from agents.distributed import close_process_group, init_from_environment
        init_from_environment("cpu")
        from agents.job.checkpoint import save_checkpoint
        from agents.job.train import TrainConfig, build_agent, build_env
        cfg = TrainConfig.from_flat(json.loads(sys.argv[1]))
        agent = build_agent(cfg, build_env(cfg))
        agent.num_epochs = dist.get_rank() + 1  # each rank would write its own folder
        agent._last_obs = None
        rank = dist.get_rank()
        sys.stdout.write(f"rank {rank} wrote {save_checkpoint(agent, sys.argv[2])}\\n")  # one write: ranks interleave
        close_process_group()
        threads = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
        sys.stdout.write(f"rank {rank}: gloo threads left {sorted(t for t in threads if 'gloo' in t)}\\n")
    """))
    cfg = job(tmp_path, batch_size=2)  # a global batch that splits over 2 ranks
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         str(script), json.dumps(cfg.to_flat()), str(tmp_path / "ckpt")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in list_checkpoints(tmp_path / "ckpt")] == ["epoch-000001"]
    assert "rank 1 wrote None" in result.stdout
    assert "rank 0: gloo threads left []" in result.stdout and "rank 1: gloo threads left []" in result.stdout


def test_checkpoint_records_versions_and_config_and_refuses_newer_formats(trained_job, tmp_path):
    """21."""
    path = tmp_path / "epoch-000003"
    shutil.copytree(latest_checkpoint(trained_job[2]), path)  # this test rewrites its meta.json
    meta = read_meta(path)
    assert meta["format_version"] == FORMAT_VERSION == 2
    assert meta["packages"]["torch"] == torch.__version__ and meta["packages"]["diffusers"]
    assert meta["config"]["model"] == "tiny" and meta["agent_config"]["lora_rank"] == 4
    assert meta["env"] == {"model": "tiny(seed=0)", "num_envs": 3, "num_steps": 4, "latent_shape": [4, 8, 8]}
    assert sorted(p.name for p in path.iterdir()) == ["agent.json", "meta.json", "state.pt", "trainable.safetensors"]
    (path / "meta.json").write_text(json.dumps({**meta, "format_version": 3}))
    with pytest.raises(ValueError) as e:
        read_meta(path)
    assert str(e.value) == (f"checkpoint {path} has format version 3; this ddpo-env reads versions up to 2: "
                            "upgrade ddpo-env to load it")


@pytest.mark.parametrize(("save_every", "expected"), [(2, [2, 3]), (0, [3]), (5, [3])])
def test_the_final_epoch_is_always_saved(tmp_path, save_every, expected):
    """22."""
    train(job(tmp_path, epochs=3, save_every=save_every, keep_last=0))
    assert [int(p.name[6:]) for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == expected
