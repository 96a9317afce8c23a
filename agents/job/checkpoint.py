"""Checkpoints: atomic on disk, and complete enough that a resumed run continues bit for bit.

A checkpoint is a folder ``<root>/epoch-000012/`` holding

    meta.json             format version, epoch, package versions, the agent's and the job's config, env shape
    trainable.safetensors the trained weights (LoRA adapter, or the whole UNet with lora_rank 0)
    ema.safetensors       their exponential moving average, under the same names (only with ema_decay > 0)
    state.pt              optimizer, counters, per-prompt statistics, value head, EMA, every RNG (python, numpy, torch,
                          policy noise, minibatch shuffling), the env's state (latents, prompts, per-env generators,
                          prompt-id table) and the agent's last observation

It is written into a hidden staging folder on the same filesystem and renamed into place: a folder named
``epoch-*`` is always complete (``meta.json`` is written last). Older checkpoints are pruned to ``keep_last`` only
after a save succeeded. Only rank 0 of a distributed run writes.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1
PACKAGES = ("ddpo-env", "torch", "diffusers", "transformers", "gymnasium", "stable-baselines3", "peft", "numpy")
PREFIX = "epoch-"
EMA_FILE = "ema.safetensors"


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def is_writer() -> bool:
    """True on rank 0 (or without torch.distributed): the one process that writes checkpoints."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def env_signature(agent: Any) -> dict[str, Any]:
    env = agent.diffusion_env
    return {"model": env.backend.name, "num_envs": env.num_envs, "num_steps": env.num_steps,
            "latent_shape": list(env.latent_shape)}


def _numpy_to_torch(tree: Any) -> Any:
    """numpy arrays → tensors, recursively (so ``torch.load(weights_only=True)`` reads the file back)."""
    if isinstance(tree, np.ndarray):  # unsigned ints travel as int64 (torch's uint32 support is partial)
        values = tree.astype(np.int64) if tree.dtype.kind == "u" else tree.copy()
        return {"__ndarray__": torch.from_numpy(values), "dtype": str(tree.dtype)}
    if isinstance(tree, dict):
        return {k: _numpy_to_torch(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_numpy_to_torch(v) for v in tree)
    return tree


def _torch_to_numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        if set(tree) == {"__ndarray__", "dtype"}:
            return tree["__ndarray__"].numpy().astype(tree["dtype"])
        return {k: _torch_to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_torch_to_numpy(v) for v in tree)
    return tree


def agent_state(agent: Any) -> dict[str, Any]:
    """Everything but the trained weights, as tensors and plain Python."""
    policy = agent.policy
    return _numpy_to_torch({
        "optimizer": policy.optimizer.state_dict(),
        "value_net": None if policy.value_net is None else policy.value_net.state_dict(),
        "counters": {"num_timesteps": agent.num_timesteps, "n_updates": agent._n_updates,
                     "num_epochs": agent.num_epochs, "num_skipped_updates": agent.num_skipped_updates},
        "stat_tracker": agent.stat_tracker.state_dict(),
        "ema": None if getattr(agent, "ema", None) is None else agent.ema.state_dict(),
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "train_generator": agent.train_generator.get_state(),
            "policy_noise": policy.noise_generator.get_state(),
        },
        "env": agent.diffusion_env.state_dict(),
        "last_obs": agent._last_obs,
    })


def save_checkpoint(agent: Any, root: str | os.PathLike, *, config: dict[str, Any] | None = None,
                    keep_last: int = 3) -> Path | None:
    """Write ``<root>/epoch-<agent.num_epochs>`` atomically; prune to the newest ``keep_last`` (0: keep all).
    Returns the folder (None on ranks other than 0)."""
    if not is_writer():
        return None
    from safetensors.torch import save_file

    root = Path(root)
    for stale in root.glob(".staging-*") if root.is_dir() else []:  # left by a writer killed mid-save
        shutil.rmtree(stale, ignore_errors=True)

    def write(staging: Path) -> None:
        weights = {k: v.detach().contiguous().cpu() for k, v in agent.policy.trainable_state_dict().items()}
        save_file(weights, staging / "trainable.safetensors")
        if getattr(agent, "ema", None) is not None:  # the averaged weights under the same names
            save_file({k: v.contiguous().cpu() for k, v in zip(weights, agent.ema.shadow, strict=False)},
                      staging / EMA_FILE)
        torch.save(agent_state(agent), staging / "state.pt")
        meta = {
            "format_version": FORMAT_VERSION,
            "epoch": agent.num_epochs,
            "num_timesteps": agent.num_timesteps,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "agent": type(agent).__name__,
            "agent_config": asdict(agent.config),
            "config": config or {},
            "env": env_signature(agent),
            "packages": package_versions(),
        }
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    final = write_atomically(root / f"{PREFIX}{agent.num_epochs:06d}", write)
    if keep_last:
        for stale in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def write_atomically(folder: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """``write(staging)`` fills a hidden staging folder next to ``folder``; its files are fsynced and the folder is
    renamed into place (an existing ``folder`` stays until the new one is complete). On any error the staging
    folder is removed and ``folder`` is untouched."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    try:
        write(staging)
        for path in staging.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=".replaced-", dir=folder.parent))
            os.rename(folder, old / folder.name)
            os.rename(staging, folder)
            shutil.rmtree(old)
        else:
            os.rename(staging, folder)
        _fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (staging folders are hidden and never listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's meta.json, refusing formats newer than this code reads."""
    path = Path(path)
    if not (path / "meta.json").is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint (no meta.json): pass a folder like <run>/checkpoints/"
                                f"{PREFIX}000010")
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format version {version!r}; this ddpo-env reads versions up to "
            f"{FORMAT_VERSION}: upgrade ddpo-env to load it"
        )
    return meta


def load_weights(policy: Any, path: str | os.PathLike, ema: bool = False) -> None:
    """Only the trained weights of a checkpoint into ``policy`` (for sampling and evaluation); with ``ema``, its
    EMA weights when the run kept an average (``ema_decay`` > 0)."""
    from safetensors.torch import load_file

    read_meta(path)
    file = Path(path) / EMA_FILE
    policy.load_trainable_state_dict(load_file(str(file if ema and file.is_file() else
                                                   Path(path) / "trainable.safetensors")))


def load_checkpoint(agent: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Restore everything :func:`save_checkpoint` wrote into a freshly built ``agent`` (same model, env shape,
    agent class and lora_rank). Returns the checkpoint's meta."""
    path = Path(path)
    meta = read_meta(path)
    expected, found = env_signature(agent), meta["env"]
    if found != expected:
        diff = {k: (found.get(k), v) for k, v in expected.items() if found.get(k) != v}
        raise ValueError(f"checkpoint {path} was saved with a different env: {diff} (saved, here): build the agent "
                         "with the saved run's config")
    if meta["agent"] != type(agent).__name__:
        raise ValueError(f"checkpoint {path} holds a {meta['agent']}, not a {type(agent).__name__}")
    load_weights(agent.policy, path)
    state = _torch_to_numpy(torch.load(path / "state.pt", map_location="cpu", weights_only=True))
    policy = agent.policy
    policy.optimizer.load_state_dict(state["optimizer"])
    if policy.value_net is not None:
        policy.value_net.load_state_dict(state["value_net"])
    counters = state["counters"]
    agent.num_timesteps, agent._n_updates = counters["num_timesteps"], counters["n_updates"]
    agent.num_epochs, agent.num_skipped_updates = counters["num_epochs"], counters["num_skipped_updates"]
    agent.stat_tracker.load_state_dict(state["stat_tracker"])
    if getattr(agent, "ema", None) is not None:
        if state.get("ema") is None:
            raise ValueError(f"checkpoint {path} has no EMA weights but this agent keeps them (ema_decay > 0): build "
                             "the agent with the saved run's config")
        agent.ema.load_state_dict(state["ema"])
    rng = state["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    agent.train_generator.set_state(rng["train_generator"])
    policy.noise_generator.set_state(rng["policy_noise"])
    agent.diffusion_env.load_state_dict(state["env"])
    agent._last_obs = state["last_obs"]
    if getattr(agent, "ranks", None):  # data parallel: rank 0's RNG states were saved; each rank derives its own
        agent.reseed_rank(agent.num_epochs)
    return meta
