"""Checkpoints: atomic on disk, and complete enough that a resumed run continues bit for bit.

A checkpoint is a folder ``<root>/epoch-000012/`` holding

    meta.json             format version, epoch, package versions, the agent's and the job's config, env shape
    trainable.safetensors the trained weights (LoRA adapter, or the whole UNet with lora_rank 0)
    ema.safetensors       their exponential moving average, under the same names (only with ema_decay > 0)
    state.pt              the rest of the agent's ``state_dict()`` (agents/state.py): optimizer, counters, per-prompt
                          statistics, value head, EMA, every RNG, the env's state and the agent's last observation

It is written into a hidden staging folder on the same filesystem and renamed into place: a folder named
``epoch-*`` is always complete (``meta.json`` is written last). Older checkpoints are pruned to ``keep_last`` only
after a save succeeded. Only rank 0 of a distributed run writes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from agents.state import numpy_to_torch, package_versions, torch_to_numpy

FORMAT_VERSION = 1
PREFIX = "epoch-"
EMA_FILE = "ema.safetensors"


def is_writer() -> bool:
    """True on rank 0 (or without torch.distributed): the one process that writes checkpoints."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


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
        state = agent.state_dict()
        weights = state.pop("weights")
        save_file(weights, staging / "trainable.safetensors")
        if agent.ema is not None:  # the averaged weights under the same names
            save_file({k: v.contiguous().cpu() for k, v in zip(weights, agent.ema.shadow, strict=False)},
                      staging / EMA_FILE)
        torch.save(numpy_to_torch(state), staging / "state.pt")
        meta = {
            "format_version": FORMAT_VERSION,
            "epoch": agent.num_epochs,
            "num_timesteps": agent.num_timesteps,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "agent": type(agent).__name__,
            "agent_config": asdict(agent.config),
            "config": config or {},
            "env": agent.env_signature(),
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
        mask = _umask()  # mkdtemp's folder is 0700 and some writers' files 0600: give them the user's usual modes
        os.chmod(staging, 0o777 & ~mask)
        for path in staging.rglob("*"):
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    agent.check_env_signature(meta["env"], f"checkpoint {path}", "build the agent with the saved run's config")
    if meta["agent"] != type(agent).__name__:
        raise ValueError(f"checkpoint {path} holds a {meta['agent']}, not a {type(agent).__name__}")
    from safetensors.torch import load_file

    state = torch_to_numpy(torch.load(path / "state.pt", map_location="cpu", weights_only=True))
    state["weights"] = load_file(str(path / "trainable.safetensors"))
    try:
        agent.load_state_dict(state)
    except ValueError as err:
        raise ValueError(f"checkpoint {path}: {err}") from None
    return meta
