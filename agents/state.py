"""What an agent is at one moment, owned by the agent: ``state_dict()`` / ``load_state_dict()``, and
stable-baselines3's ``save(path)`` / ``Class.load(path, env=...)`` / ``set_parameters`` / ``get_parameters``.

The state holds the trained weights (the LoRA adapter, or the whole UNet without LoRA), the optimizer, the value
head, the counters, the per-prompt statistics, the EMA, every random generator (python, numpy, torch, CUDA, the
minibatch shuffling, the policy's noise) and, for an exact resume, the env's state and the agent's last
observation. The model itself is never part of it: it comes from the env the agent is built on.

``save`` writes one zip of the save format's files (:mod:`agents.save_format`, the same files a training job's
checkpoint folder holds) without the env state. ``load`` builds the agent on the env you pass (any num_envs
dividing samples_per_epoch, or the very env the agent trained on) and restores the state; training then starts
from a fresh env reset, as after any SB3 ``load``. The saved class is found in :data:`AGENT_CLASSES`, which every
agent class joins when it is defined.
"""

from __future__ import annotations

import copy
import importlib
import io
import os
import random
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.save_format import (
    SAVE_FORMAT,
    numpy_to_torch,
    package_versions,
    read_payload,
    write_folder,
    write_zip,
)

#: Every agent class by "module:qualname", filled as classes are defined (AgentState.__init_subclass__).
AGENT_CLASSES: dict[str, type] = {}
#: Format-1 files name only the class; these are the classes that wrote them.
FORMAT1_CLASSES = {"DDPO_IS": "agents.ddpo:DDPO_IS", "DDPO_SF": "agents.reinforce:DDPO_SF", "RWR": "agents.rwr:RWR",
                   "SparseRWR": "agents.rwr:SparseRWR"}


def env_signature(diffusion_env: Any) -> dict[str, Any]:
    """What a saved state must match in the env it is loaded into (a DenoisingDiffusionVectorEnv)."""
    return {"model": diffusion_env.backend.name, "num_envs": diffusion_env.num_envs,
            "num_steps": diffusion_env.num_steps, "latent_shape": list(diffusion_env.latent_shape)}


def signature_mismatch(found: dict[str, Any], expected: dict[str, Any], source: Any, fix: str,
                       ignore: tuple[str, ...] = ()) -> ValueError | None:
    """The error for a state saved (in ``source``) with another env, naming the differences; None if it fits."""
    diff = {k: (found.get(k), v) for k, v in expected.items() if k not in ignore and found.get(k) != v}
    return ValueError(f"{source} was saved with a different env: {diff} (saved, here): {fix}") if diff else None


def agent_payload(agent: Any, include_env: bool) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor],
                                                          dict[str, torch.Tensor] | None]:
    """(agent.json's content, the state without weights as torch.save takes it, the weights, their EMA or None)."""
    cls = type(agent)
    meta = {"format": SAVE_FORMAT, "agent": cls.__name__, "agent_class": f"{cls.__module__}:{cls.__qualname__}",
            "config": asdict(agent.config), "env": agent.env_signature(), "env_state": include_env,
            "packages": package_versions()}
    state = agent.state_dict(include_env=include_env)
    weights = {k: v.contiguous() for k, v in state.pop("weights").items()}
    ema = None
    if agent.ema is not None:  # the averaged weights under the same names (the value head's stay in state.pt)
        ema = {k: v.contiguous().cpu() for k, v in zip(weights, agent.ema.shadow, strict=False)}
    return meta, numpy_to_torch(state), weights, ema


def write_payload(folder: Path, agent: Any, include_env: bool) -> None:
    """Write ``agent`` in the save format into ``folder`` (a checkpoint: with ``include_env``)."""
    write_folder(folder, *agent_payload(agent, include_env))


def agent_class(meta: dict[str, Any], source: Any) -> type:
    """The class that saved ``meta`` (agent.json), found in :data:`AGENT_CLASSES` (its module imported when it is one
    of this package's)."""
    path = meta.get("agent_class") or FORMAT1_CLASSES.get(meta["agent"], f"?:{meta['agent']}")
    if path not in AGENT_CLASSES:
        module = path.partition(":")[0]
        if module.split(".")[0] != "agents":
            raise ValueError(f"{source} holds a {meta['agent']} ({path}), a class not imported here: import its "
                             f"module ({module}) before loading")
        importlib.import_module(module)
    return AGENT_CLASSES[path]


def existing_save(path: Any) -> Any:
    """``path``, or ``path.zip`` when only that exists (SB3 adds the suffix on save)."""
    if isinstance(path, (str, os.PathLike)) and not Path(path).exists() and Path(f"{path}.zip").exists():
        return f"{path}.zip"
    return path


class AgentState:
    """``state_dict`` / ``load_state_dict`` / ``save`` / ``load`` of :class:`agents.base.DiffusionAgent`."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        AGENT_CLASSES[f"{cls.__module__}:{cls.__qualname__}"] = cls  # what load finds a saved class by

    def env_signature(self) -> dict[str, Any]:
        """What a saved state must match in the env it is loaded into."""
        return env_signature(self.diffusion_env)

    def check_env_signature(self, found: dict[str, Any], source: Any,
                            fix: str = "build the env with the saved run's settings",
                            ignore: tuple[str, ...] = ()) -> None:
        """Refuse a state saved (in ``source``) with another env than this agent's, naming the differences (the
        keys in ``ignore`` may differ)."""
        error = signature_mismatch(found, self.env_signature(), source, fix, ignore)
        if error is not None:
            raise error

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
            "grad_scaler": None if self.grad_scaler is None else self.grad_scaler.state_dict(),
            "algorithm": self.algorithm_state(),
            "step_weights": None if self._step_weights is None else self._step_weights.detach().cpu(),
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "train_generator": self.train_generator.get_state(),
                "policy_noise": policy.noise_generator.get_state(),
                "policy_noise_device": policy.noise_generator.device.type,
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
        if self.grad_scaler is not None and state.get("grad_scaler") is not None:  # float16; absent in older saves
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        self.load_algorithm_state(state.get("algorithm") or {})
        if getattr(self.config, "step_weights", "uniform") == "gradient":  # measured once; absent before the first
            saved = state.get("step_weights")
            self._step_weights = None if saved is None else saved.to(self.device)
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.train_generator.set_state(rng["train_generator"])
        self._restore_noise_generator(rng["policy_noise"], rng.get("policy_noise_device", "cpu"))
        if "env" in state:
            self.diffusion_env.load_state_dict(state["env"])
            self._last_obs = state["last_obs"]
        else:
            self._last_obs = None  # learn() resets the env
        if self.ranks:  # data parallel: rank 0's RNG states were saved; each rank derives its own
            self.reseed_rank(self.num_epochs)

    def algorithm_state(self) -> dict[str, Any]:
        """What an algorithm keeps beyond the shared state (e.g. DiffusionNFT's old policy); saved with the rest."""
        return {}

    def load_algorithm_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`algorithm_state` (empty in saves of agents that keep none)."""

    def _restore_noise_generator(self, state: torch.Tensor, saved_on: str) -> None:
        """The sampling noise's generator state; one saved on another kind of device (a CPU run resumed on a GPU, or
        the reverse) does not fit this generator, which then continues from a seed derived from (seed, epoch)."""
        generator = self.policy.noise_generator
        if saved_on == generator.device.type:
            generator.set_state(state)
            return
        generator.manual_seed(int(np.random.SeedSequence([self.config.seed, self.num_epochs, 2]).generate_state(
            1, np.uint64)[0] >> 1))
        warnings.warn(f"this checkpoint sampled its noise on {saved_on} and this agent samples on "
                      f"{generator.device.type}: the noise continues from a seed derived from (seed, epoch), so the "
                      "resumed run is the same algorithm but not bit for bit the run that never stopped", stacklevel=3)

    # ------------------------------------------------------------------------ stable-baselines3's save / load

    def save(self, path: str | os.PathLike | io.BufferedIOBase, exclude: Any = None, include: Any = None) -> None:
        """Write the agent to one zip file (SB3's ``save``; ``.zip`` is added to a path without a suffix) holding the
        save format's files without the env state. The env and the model are not in it: :meth:`load` takes the env."""
        if exclude is not None or include is not None:
            raise ValueError("exclude/include select pickled attributes in SB3; this agent saves its state_dict: "
                             "call save(path)")
        if isinstance(path, (str, os.PathLike)):
            path = Path(path)
            if not path.suffix:
                path = path.with_suffix(".zip")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            write_zip(tmp, *agent_payload(self, include_env=False))
            os.replace(tmp, path)  # atomic: a reader never sees half a file
        else:
            write_zip(path, *agent_payload(self, include_env=False))

    @classmethod
    def load(cls, path: str | os.PathLike | io.BufferedIOBase, env: Any = None, device: Any = "auto",
             custom_objects: Any = None, print_system_info: bool = False, force_reset: bool = True,
             **kwargs: Any) -> Any:
        """Build the saved agent on ``env`` and restore its state (SB3's ``load``), from a ``save`` zip or a job's
        checkpoint folder (its env state is left out). ``env`` is required, the model lives in it: one built like
        the saved one, with any num_envs that divides samples_per_epoch (a single env is vectorised), also the very
        env the agent trained on (the new agent takes its UNet over, see :class:`agents.policy.DiffusionPolicy`).
        Keyword arguments override fields of the saved algorithm config."""
        path = existing_save(path)
        meta, state = read_payload(path)
        name = meta["agent"]
        if env is None:
            raise ValueError(f"{cls.__name__}.load needs the env the agent trains on (the model lives in it): "
                             f"{cls.__name__}.load(path, env=gym.make_vec('DenoisingDiffusion-v0', ...)) with the "
                             f"saved env's settings {meta['env']}")
        saved = agent_class(meta, path)
        if not issubclass(saved, cls):
            raise ValueError(f"{path} holds a {name}, not a {cls.__name__}: load it with {name}.load")
        config = saved.config_class(**{**meta["config"], **kwargs})
        target = _diffusion_env(env)
        if target is not None:  # checked before the agent takes the env's UNet over
            error = signature_mismatch(meta["env"], env_signature(target), path,
                                       "build the env with the saved run's settings", ignore=("num_envs",))
            if error is not None:
                raise error
            n, per_epoch = target.num_envs, config.samples_per_epoch
            if per_epoch % n:
                raise ValueError(
                    f"{path} trains samples_per_epoch={per_epoch}, not a multiple of this env's num_envs={n}: pass a "
                    f"multiple, e.g. {name}.load(path, env=env, samples_per_epoch={-(-per_epoch // n) * n}) (and a "
                    f"batch_size dividing it), or build the env with a num_envs dividing {per_epoch}")
        agent = saved(env, config=config)
        agent.check_env_signature(meta["env"], path, ignore=("num_envs",))
        for key in ("env", "last_obs"):  # SB3's load: training starts from a fresh env reset
            state.pop(key, None)
        agent.load_state_dict(state)
        return agent

    def get_parameters(self) -> dict[str, dict[str, Any]]:
        """SB3's ``get_parameters``: {"policy": the trained weights ("unet.<name>", and "value_net.<name>" with a
        value head), "policy.optimizer": the optimizer's state}; the frozen model stays out."""
        policy = self.policy
        weights = {f"unet.{k}": v.detach().cpu() for k, v in policy.trainable_state_dict().items()}
        if policy.value_net is not None:
            weights.update({f"value_net.{k}": v for k, v in policy.value_net.state_dict().items()})
        return {"policy": weights, "policy.optimizer": policy.optimizer.state_dict()}

    def set_parameters(self, load_path_or_dict: Any, exact_match: bool = True, device: Any = "auto") -> None:
        """SB3's ``set_parameters``: the trained weights and the optimizer state from a file :meth:`save` wrote (or a
        checkpoint folder), or from a dict as :meth:`get_parameters` returns it; counters, RNGs and the EMA stay.
        With ``exact_match`` both entries and every weight must be given, else any subset. ``device`` is unused:
        the values go to the parameters' own device."""
        if isinstance(load_path_or_dict, dict):
            params = load_path_or_dict
        else:
            path = existing_save(load_path_or_dict)
            meta, state = read_payload(path)
            self.check_env_signature(meta["env"], path, ignore=("num_envs",))
            weights = {f"unet.{k}": v for k, v in state["weights"].items()}
            weights.update({f"value_net.{k}": v for k, v in (state.get("value_net") or {}).items()})
            params = {"policy": weights, "policy.optimizer": state["optimizer"]}
        expected = {"policy", "policy.optimizer"}
        if not set(params) <= expected or (exact_match and set(params) != expected):
            raise ValueError(f"set_parameters takes a dict with the keys {sorted(expected)} (as get_parameters() "
                             f"returns it; exact_match=False for some of them), got {sorted(params)}")
        policy = self.policy
        if "policy" in params:
            unet = {k.removeprefix("unet."): v for k, v in params["policy"].items() if k.startswith("unet.")}
            value = {k.removeprefix("value_net."): v for k, v in params["policy"].items() if k.startswith("value_net.")}
            other = sorted(set(params["policy"]) - {f"unet.{k}" for k in unet} - {f"value_net.{k}" for k in value})
            if other or (value and policy.value_net is None):
                raise ValueError(f"parameters {(other or sorted(value))[:3]} are not trained by this policy: pass the "
                                 "names get_parameters()['policy'] has")
            policy.load_trainable_state_dict(unet, strict=exact_match)
            if policy.value_net is not None and (value or exact_match):
                policy.value_net.load_state_dict(value, strict=exact_match)
        if "policy.optimizer" in params:
            policy.optimizer.load_state_dict(params["policy.optimizer"])


def _diffusion_env(env: Any) -> Any:
    """The DenoisingDiffusionVectorEnv under ``env`` (an SB3VecEnv, a wrapped vector or single env), or None."""
    inner = getattr(env, "venv", env)  # SB3VecEnv
    inner = getattr(getattr(inner, "unwrapped", inner), "vector", getattr(inner, "unwrapped", inner))
    return inner if all(hasattr(inner, a) for a in ("backend", "num_envs", "num_steps", "latent_shape")) else None


