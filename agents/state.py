"""What an agent is at one moment, owned by the agent: ``state_dict()`` / ``load_state_dict()``, and
stable-baselines3's ``save(path)`` / ``Class.load(path, env=...)`` on top of them.

The state holds the trained weights (the LoRA adapter, or the whole UNet without LoRA), the optimizer, the value
head, the counters, the per-prompt statistics, the EMA, every random generator (python, numpy, torch, CUDA, the
minibatch shuffling, the policy's noise) and, for an exact resume, the env's state and the agent's last
observation. The model itself is never part of it: it comes from the env the agent is built on.

``save`` writes one zip (``.zip`` added as SB3 does): ``agent.json`` (class, algorithm config, env shape, package
versions) and ``state.pt`` (the state without the env, loadable with ``torch.load(weights_only=True)``), so its
size is about that of the trained weights plus the optimizer. ``load`` builds the agent on the env you pass and
restores that state; training then starts from a fresh env reset, as after any SB3 ``load``.
"""

from __future__ import annotations

import copy
import importlib.metadata
import io
import json
import os
import random
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

SAVE_FORMAT = 1
PACKAGES = ("ddpo-env", "torch", "diffusers", "transformers", "gymnasium", "stable-baselines3", "peft", "numpy")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def numpy_to_torch(tree: Any) -> Any:
    """numpy arrays → tensors, recursively (so ``torch.load(weights_only=True)`` reads the state back)."""
    if isinstance(tree, np.ndarray):  # unsigned ints travel as int64 (torch's uint32 support is partial)
        values = tree.astype(np.int64) if tree.dtype.kind == "u" else tree.copy()
        return {"__ndarray__": torch.from_numpy(values), "dtype": str(tree.dtype)}
    if isinstance(tree, dict):
        return {k: numpy_to_torch(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(numpy_to_torch(v) for v in tree)
    return tree


def torch_to_numpy(tree: Any) -> Any:
    """The inverse of :func:`numpy_to_torch`."""
    if isinstance(tree, dict):
        if set(tree) == {"__ndarray__", "dtype"}:
            return tree["__ndarray__"].numpy().astype(tree["dtype"])
        return {k: torch_to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(torch_to_numpy(v) for v in tree)
    return tree


class AgentState:
    """``state_dict`` / ``load_state_dict`` / ``save`` / ``load`` of :class:`agents.base.DiffusionAgent`."""

    def env_signature(self) -> dict[str, Any]:
        """What a saved state must match in the env it is loaded into."""
        env = self.diffusion_env
        return {"model": env.backend.name, "num_envs": env.num_envs, "num_steps": env.num_steps,
                "latent_shape": list(env.latent_shape)}

    def check_env_signature(self, found: dict[str, Any], source: Any,
                            fix: str = "build the env with the saved run's settings") -> None:
        """Refuse a state saved (in ``source``) with another env than this agent's, naming the differences."""
        expected = self.env_signature()
        if found != expected:
            diff = {k: (found.get(k), v) for k, v in expected.items() if found.get(k) != v}
            raise ValueError(f"{source} was saved with a different env: {diff} (saved, here): {fix}")

    def state_dict(self, include_env: bool = True) -> dict[str, Any]:
        """The agent's whole state as tensors, numpy arrays and plain Python (see the module docstring); without
        ``include_env``, the env's state and the last observation are left out."""
        policy = self.policy
        state = {
            "weights": {k: v.detach().cpu() for k, v in policy.trainable_state_dict().items()},
            "optimizer": policy.optimizer.state_dict(),
            "value_net": None if policy.value_net is None else policy.value_net.state_dict(),
            "counters": {"num_timesteps": self.num_timesteps, "n_updates": self._n_updates,
                         "num_epochs": self.num_epochs, "num_skipped_updates": self.num_skipped_updates},
            "stat_tracker": self.stat_tracker.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "train_generator": self.train_generator.get_state(),
                "policy_noise": policy.noise_generator.get_state(),
            },
        }
        if include_env:
            state["env"] = self.diffusion_env.state_dict()
            state["last_obs"] = self._last_obs
        return copy.deepcopy(state)  # a snapshot: training on does not change it (the optimizer's are references)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` into this agent (built with the same model, env shape, agent class and
        LoRA rank). Without an env state in it, the next ``learn`` starts from a fresh env reset."""
        policy = self.policy
        policy.load_trainable_state_dict(state["weights"])
        policy.optimizer.load_state_dict(state["optimizer"])
        if policy.value_net is not None:
            policy.value_net.load_state_dict(state["value_net"])
        counters = state["counters"]
        self.num_timesteps, self._n_updates = counters["num_timesteps"], counters["n_updates"]
        self.num_epochs, self.num_skipped_updates = counters["num_epochs"], counters["num_skipped_updates"]
        self.stat_tracker.load_state_dict(state["stat_tracker"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError("the saved state has no EMA weights but this agent keeps them (ema_decay > 0): "
                                 "build the agent with the saved run's config")
            self.ema.load_state_dict(state["ema"])
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.train_generator.set_state(rng["train_generator"])
        policy.noise_generator.set_state(rng["policy_noise"])
        if "env" in state:
            self.diffusion_env.load_state_dict(state["env"])
            self._last_obs = state["last_obs"]
        else:
            self._last_obs = None  # learn() resets the env
        if self.ranks:  # data parallel: rank 0's RNG states were saved; each rank derives its own
            self.reseed_rank(self.num_epochs)

    # ------------------------------------------------------------------------ stable-baselines3's save / load

    def save(self, path: str | os.PathLike | io.BufferedIOBase, exclude: Any = None, include: Any = None) -> None:
        """Write the agent to one zip file (SB3's ``save``; ``.zip`` is added to a path without a suffix). The env
        and the model are not in it: :meth:`load` takes the env."""
        if exclude is not None or include is not None:
            raise ValueError("exclude/include select pickled attributes in SB3; this agent saves its state_dict: "
                             "call save(path)")
        meta = {"format": SAVE_FORMAT, "agent": type(self).__name__, "config": asdict(self.config),
                "env": self.env_signature(), "packages": package_versions()}
        buffer = io.BytesIO()
        torch.save(numpy_to_torch(self.state_dict(include_env=False)), buffer)
        if isinstance(path, (str, os.PathLike)):
            path = Path(path)
            if not path.suffix:
                path = path.with_suffix(".zip")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            _write_zip(tmp, meta, buffer.getvalue())
            os.replace(tmp, path)  # atomic: a reader never sees half a file
        else:
            _write_zip(path, meta, buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike | io.BufferedIOBase, env: Any = None, device: Any = "auto",
             custom_objects: Any = None, print_system_info: bool = False, force_reset: bool = True,
             **kwargs: Any) -> Any:
        """Build the saved agent on ``env`` and restore its state (SB3's ``load``). ``env`` is required: the
        model lives in it. Keyword arguments override fields of the saved algorithm config."""
        if isinstance(path, (str, os.PathLike)) and not Path(path).exists() and Path(f"{path}.zip").exists():
            path = f"{path}.zip"
        with zipfile.ZipFile(path) as archive:
            if "agent.json" not in archive.namelist():
                raise ValueError(f"{path} was not written by a ddpo-env agent's save() (no agent.json)")
            meta = json.loads(archive.read("agent.json"))
            state = torch.load(io.BytesIO(archive.read("state.pt")), map_location="cpu", weights_only=True)
        if meta.get("format", 0) > SAVE_FORMAT:
            raise ValueError(f"{path} has save format {meta['format']}; this ddpo-env reads up to {SAVE_FORMAT}: "
                             "upgrade ddpo-env")
        if env is None:
            raise ValueError(f"{cls.__name__}.load needs the env the agent trains on (the model lives in it): "
                             f"{cls.__name__}.load(path, env=gym.make_vec('DenoisingDiffusion-v0', ...)) with the "
                             f"saved env's settings {meta['env']}")
        from agents import AGENTS  # the saved class, also when called on the base class

        by_name = {c.__name__: c for c in AGENTS.values()}
        saved = by_name.get(meta["agent"])
        if saved is None or not issubclass(saved, cls):
            raise ValueError(f"{path} holds a {meta['agent']}, not a {cls.__name__}: load it with "
                             f"{meta['agent']}.load")
        agent = saved(env, config=saved.config_class(**{**meta["config"], **kwargs}))
        agent.check_env_signature(meta["env"], path)
        agent.load_state_dict(torch_to_numpy(state))
        return agent


def _write_zip(target: Any, meta: dict[str, Any], state: bytes) -> None:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("agent.json", json.dumps(meta, indent=2, default=str))
        archive.writestr("state.pt", state)
