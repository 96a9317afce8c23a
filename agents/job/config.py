"""The training job's configuration: one tree, one default per field.

    TrainConfig            the job (agent name, reward, epochs, output, checkpoints, evaluation, ...)
    ├── env: EnvConfig     the DenoisingDiffusion-v0 task (ddpo_env.config: model, num_steps, eta, guidance, ...)
    └── algorithm          the agent's config (agents.config: AgentConfig and its per-algorithm subclasses)

Every field of the three has exactly one default, in its own dataclass. The command line, config files and
checkpoints use the *flat* view (``{"learning_rate": 3e-4, "eta": 1.0, "epochs": 56}``): field names are unique across
the tree, so :meth:`TrainConfig.from_flat` routes each key to its place, and a key that belongs to another agent
than the chosen one, or to nothing, is an error that says so. Every value is checked against its field's type
(:func:`ddpo_env.fields.check_fields`) when its dataclass is built. Imports no torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from agents.config import AGENT_CONFIGS, AgentConfig
from ddpo_env.config import EnvConfig
from ddpo_env.fields import check_fields

#: Job settings that must be at least 1; the other int settings of the job must be at least 0.
_AT_LEAST_ONE = ("epochs", "num_envs", "collective_timeout_s")
_AT_LEAST_ZERO = ("save_every", "keep_last", "image_every", "threads", "monitor_every")


@dataclass
class TrainConfig:
    """One training job: the job's own settings, the env's (``env``) and the agent's (``algorithm``)."""

    agent: str = "ddpo-is"
    """ddpo-is | ddpo-sf | rwr | rwr-sparse | awm | diffusion-nft (agents.AGENT_CONFIGS)."""
    reward: str = "jpeg_compressibility"
    """A reward: a built-in name, your own as package.module:function (fn(images, prompts) -> rewards, or a
    rewards.Scorer subclass), or a weighted sum such as 'jpeg_compressibility=1,mypkg.rewards:sharp=2'."""
    reward_options: dict = field(default_factory=dict)
    """Per-reward scorer options, e.g. {"aesthetic": {"clip_model": "...", "mlp_weights": "..."}} (JSON)."""
    jpeg_upscale: int = 4
    """JPEG rewards: enlarge images ×k before encoding (small images need it)."""
    epochs: int = 56
    """Rollouts of samples_per_epoch samples each (the whole job, also when resuming)."""
    num_envs: int = 16
    """Episodes sampled in parallel (samples_per_epoch must be a multiple)."""
    monitor_every: int = 0
    """Optimizer updates between held-out monitor evaluations (train vs held-out prompts: reward, KL to the base
    model, diversity; monitor.png); 0: off."""
    held_out_prompts: str = ""
    """The monitor's held-out prompt file (one per line, never trained on); empty: the default model's held-out
    phrasings."""
    output_dir: str = "runs/train"
    """Where the PNGs, metrics, logs, checkpoints and exported weights go."""
    save_every: int = 10
    """Checkpoint every N epochs (0: only at the end; the last epoch is always saved)."""
    keep_last: int = 3
    """Checkpoints kept (0: all)."""
    resume: str = ""
    """'auto' (the newest checkpoint in output_dir/checkpoints), a checkpoint folder, or empty to start afresh."""
    overwrite: bool = False
    """Starting afresh in an output_dir that holds files deletes them first; without it such a folder is refused."""
    tensorboard: bool = True
    """Write TensorBoard events (scalars; sample grids every image_every epochs) to output_dir/logs."""
    image_every: int = 14
    """Epochs between captioned sample grids in TensorBoard (0: none)."""
    evaluate: bool = True
    """Evaluate 100 fixed prompts and seeds before and after training (the PNGs need it)."""
    eval_seed: int = 10_000
    """Seed of the fixed evaluation set's initial noise and sampling noise. Choose settings on another seed (a
    validation set) than the one you report, so the reported numbers are not the ones the settings were tuned on."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""
    collective_timeout_s: int = 3600
    """Data parallel: seconds a rank waits for the others in one collective before the run is aborted. Rank 0
    evaluates, monitors and writes checkpoints while the others wait, so it must outlast the longest of those
    (NCCL's own default, 10 minutes, does not outlast an evaluation of Stable Diffusion)."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """The task: DenoisingDiffusion-v0's settings (ddpo_env.config.EnvConfig)."""
    algorithm: AgentConfig | None = None
    """The agent's settings: an instance of the chosen agent's config class (None: its defaults)."""

    def __post_init__(self) -> None:
        if isinstance(self.env, Mapping):
            self.env = EnvConfig(**self.env)
        check_fields(self)
        if self.agent not in AGENT_CONFIGS:
            raise ValueError(f"unknown agent {self.agent!r}: use one of {sorted(AGENT_CONFIGS)}")
        config_class = AGENT_CONFIGS[self.agent]
        if self.algorithm is None:
            self.algorithm = config_class()
        elif type(self.algorithm) is not config_class:
            raise ValueError(f"agent {self.agent!r} takes a {config_class.__name__}, got a "
                             f"{type(self.algorithm).__name__}: pass algorithm={config_class.__name__}(...)")
        for names, least in ((_AT_LEAST_ONE, 1), (_AT_LEAST_ZERO, 0)):
            for name in names:
                if getattr(self, name) < least:
                    raise ValueError(f"{name} must be >= {least}, got {getattr(self, name)}")

    # ------------------------------------------------------------------------------------------------ flat view

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build the tree from flat keys (job, env and agent fields mixed); unknown keys and keys of another agent
        are errors naming them."""
        values = dict(values)
        agent = values.get("agent", cls.agent)
        if agent not in AGENT_CONFIGS:
            raise ValueError(f"unknown agent {agent!r}: use one of {sorted(AGENT_CONFIGS)}")
        config_class = AGENT_CONFIGS[agent]
        job_names, env_names = _names(cls) - {"env", "algorithm"}, _names(EnvConfig)
        agent_names = _names(config_class)
        unknown = sorted(set(values) - job_names - env_names - agent_names)
        if unknown:
            other = {name: sorted(a for a, c in AGENT_CONFIGS.items() if name in _names(c)) for name in unknown}
            foreign = {name: owners for name, owners in other.items() if owners}
            if foreign:
                name, owners = next(iter(foreign.items()))
                raise ValueError(f"{name} is a setting of {', '.join(owners)}, not of agent {agent!r}: drop it or "
                                 f"use --agent {owners[0]}")
            raise ValueError(f"unknown settings {unknown}: see ddpo train --help for the known ones")
        return cls(
            **{k: v for k, v in values.items() if k in job_names},
            env=EnvConfig(**{k: v for k, v in values.items() if k in env_names}),
            algorithm=config_class(**{k: v for k, v in values.items() if k in agent_names}),
        )

    def to_flat(self) -> dict[str, Any]:
        """Every field of the tree under its own name (what config files, checkpoints and metrics.json hold)."""
        job = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("env", "algorithm")}
        env = {f.name: getattr(self.env, f.name) for f in fields(self.env)}
        env["autoreset_mode"] = getattr(env["autoreset_mode"], "value", env["autoreset_mode"])
        algorithm = {f.name: getattr(self.algorithm, f.name) for f in fields(self.algorithm)}
        return _plain({**job, **env, **algorithm})

    def replace(self, **flat: Any) -> TrainConfig:
        """A copy with some flat keys changed (e.g. ``cfg.replace(seed=1, eta=0.5)``)."""
        return TrainConfig.from_flat({**self.to_flat(), **flat})

    # ------------------------------------------------------------------------------------------------ shortcuts

    @property
    def samples_per_epoch(self) -> int:
        return self.algorithm.samples_per_epoch

    @property
    def seed(self) -> int:
        return self.algorithm.seed


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _plain(value: Any) -> Any:
    """JSON-friendly: tuples as lists, nested the same way."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def flag_fields() -> list[tuple[str, str, dataclasses.Field, type]]:
    """(group title, flat name, field, owning class) of every settable field, in help order: the job, the env, the
    settings every agent shares, then each agent's own."""
    shared = _names(AgentConfig)
    groups: list[tuple[str, type, set[str] | None]] = [
        ("job", TrainConfig, None), ("environment (DenoisingDiffusion-v0)", EnvConfig, None),
        ("agent (every algorithm)", AgentConfig, None)]
    seen = {"env", "algorithm"}
    out = []
    for title, cls, _ in groups:
        for f in fields(cls):
            if f.name not in seen:
                seen.add(f.name)
                out.append((title, f.name, f, cls))
    for config_class in AGENT_CONFIGS.values():
        for f in fields(config_class):
            if f.name not in shared and f.name not in seen:
                seen.add(f.name)
                owners = [a for a, c in AGENT_CONFIGS.items() if f.name in _names(c)]
                out.append((f"{' / '.join(owners)} only", f.name, f, config_class))
    return out
