"""DiffusionPolicy: the denoising network as a stable-baselines3 policy π_θ(x_{t-1} | x_t, t, c).

The policy owns the trainable UNet (the env's, with an optional peft LoRA adapter) and evaluates the exact DDIM
Gaussian of ``ddpo_env.ddim`` — one implementation shared with the env's sampler. What it does not have, on
purpose: orthogonal re-initialisation (it would destroy a pretrained UNet), a learned log-std (σ_t is fixed by the
scheduler and η), a features extractor. The value is 0 unless ``value_head=True`` (DDPO needs no critic; stock PPO
runs either way, its value loss being a constant without the head).

Observations are SB3 tensors: {"latent": (B, C, h, w), "timestep": (B, 1), "prompt_id": (B, 1)} (floats after
SB3's preprocessing; ids and timesteps are exact integers in float32 up to 2**24). Actions may come flat
(B, C·h·w), as SB3's rollout buffer stores them.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import Schedule

from agents.config import LORA_TARGETS
from ddpo_env.ddim import DDIMStepOutput
from ddpo_env.sampler import guided_model_output

ADAPTER_NAME = "ddpo"
#: The UNet attribute naming the policy that trains it: {"token": the policy's, "full_fine_tune": whether a full
#: fine-tune has trained that UNet in place (its base weights are gone)}.
OWNER_ATTR = "_ddpo_policy_owner"


def add_lora(
    unet: torch.nn.Module, rank: int, alpha: float | None = None, targets: tuple[str, ...] = LORA_TARGETS,
    seed: int = 0,
) -> None:
    """Freeze ``unet`` and add the trainable peft LoRA adapter ``ADAPTER_NAME`` (Gaussian init seeded by ``seed``,
    scale alpha/rank, alpha defaulting to the rank) on ``targets``; its weights stay float32 under mixed precision."""
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian",
                        target_modules=list(targets))
    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(config, adapter_name=ADAPTER_NAME)
    for name, param in unet.named_parameters():
        if "lora_" in name:
            param.requires_grad_(True)
            param.data = param.data.float()


class DiffusionPolicy(BasePolicy):
    """stable-baselines3 policy over a DenoisingDiffusion-v0 env's model.

    Args:
        observation_space, action_space, lr_schedule: as SB3 passes them.
        diffusion_env: the DenoisingDiffusion env (vector or single, wrapped or not): model, schedule, prompts.
        lora_rank: rank of the LoRA adapter on ``lora_targets``; 0 or None fine-tunes the whole UNet. The trained
            weights are float32 in every dtype (half precision computes under autocast): the adapter's, or the whole
            UNet's as master weights, so that Adam's state, the EMA and small updates keep full precision.
        lora_alpha: LoRA scale numerator (default, or 0: equal to the rank, so the scale is 1).
        lora_targets: attention projections that get the adapter.
        seed: seeds the LoRA initialisation, the value head and the policy's noise generator.
        value_head: add a small critic V(x_t, t, c) (:class:`ValueHead`) for algorithms that use one.
        gradient_checkpointing: recompute the UNet's activations in the backward pass (less memory).
        optimizer_class, optimizer_kwargs: the optimizer over the trainable parameters only.

    One UNet, one policy: the policy trains the env's UNet itself, so a later policy built on the same env (a second
    ``make_agent``, or ``Class.load(path, env=env)`` onto the env an agent trained on) takes it over: it removes the
    earlier policy's LoRA adapter and adds its own (freshly initialised, as on a fresh env, before ``load`` copies
    the saved weights in), or, as a full fine-tune, trains the UNet from the weights it holds now. The earlier
    policy then raises RuntimeError on any use instead of silently sharing weights with the new one. A full
    fine-tune trains the UNet in place, so after one the env's base weights are gone: a later full fine-tune on that
    env cannot keep them as its reference model (:meth:`keep_reference` says to build a fresh env).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        use_sde: bool = False,
        *,
        diffusion_env: Any,
        lora_rank: int | None = 4,
        lora_alpha: float | None = None,
        lora_targets: tuple[str, ...] = LORA_TARGETS,
        seed: int = 0,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.AdamW,
        optimizer_kwargs: dict[str, Any] | None = None,
        value_head: bool = False,
        gradient_checkpointing: bool = False,
    ) -> None:
        if use_sde:
            raise ValueError("use_sde=True is not supported: the DDIM policy's noise is fixed by the scheduler")
        super().__init__(
            observation_space,
            action_space,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs or {},
            squash_output=False,
            normalize_images=False,
        )
        env = diffusion_env.unwrapped
        if not hasattr(env, "schedule") or not hasattr(env, "backend"):
            raise TypeError(f"diffusion_env must be a DenoisingDiffusion-v0 env, got {type(env).__name__}")
        self._env = env  # not a submodule: the frozen parts live in the env
        self.schedule = env.schedule
        self.guidance_scale = float(env.guidance_scale)
        self.latent_shape = tuple(action_space.shape)
        self.unet = env.backend.unet
        self.lora_rank = int(lora_rank or 0)
        self._setup_trainable(lora_alpha, lora_targets, seed)
        if gradient_checkpointing:
            if not hasattr(self.unet, "enable_gradient_checkpointing"):
                raise ValueError(f"gradient_checkpointing needs a diffusers UNet; {type(self.unet).__name__} has none")
            self.unet.enable_gradient_checkpointing()
        self.noise_generator = torch.Generator(device=env.backend.device).manual_seed(seed)
        self._reference_unet: torch.nn.Module | None = None  # a full fine-tune's frozen π_ref (keep_reference)
        self.value_net: ValueHead | None = None
        if value_head:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                embed_dim = env.prompt_embeds([0]).shape[-1]
                self.value_net = ValueHead(self.latent_shape[0], embed_dim)
            self.value_net.to(env.backend.device)
        self.optimizer = self.optimizer_class(
            self.trainable_parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    # ------------------------------------------------------------------------------------- parameters

    def _setup_trainable(self, lora_alpha: float | None, lora_targets: tuple[str, ...], seed: int) -> None:
        """Take the env's UNet over (see :class:`DiffusionPolicy`): remove an earlier policy's adapter, then add
        this policy's (or make the whole UNet trainable without LoRA), and mark the UNet as this policy's."""
        earlier = self.unet.__dict__.get(OWNER_ATTR)
        self._unet_trained_in_place = bool(earlier and earlier["full_fine_tune"])  # the base weights are gone
        if ADAPTER_NAME in (getattr(self.unet, "peft_config", None) or {}):
            self.unet.delete_adapters(ADAPTER_NAME)  # an earlier policy's: it stops being used (and trained)
        self._owner_token = object()
        self.unet.__dict__[OWNER_ATTR] = {"token": self._owner_token,
                                          "full_fine_tune": self.lora_rank <= 0 or self._unet_trained_in_place}
        if self.lora_rank <= 0:
            self.unet.requires_grad_(True)
            for param in self.unet.parameters():  # float32 master weights: the backend still computes in its half
                param.data = param.data.float()  # dtype under autocast, and no update is lost to rounding
            return
        add_lora(self.unet, self.lora_rank, lora_alpha, lora_targets, seed)

    def check_owner(self) -> None:
        """Raise RuntimeError when a later policy (a later agent on the same env) has taken the UNet over."""
        owner = self.unet.__dict__.get(OWNER_ATTR)
        if owner is None or owner["token"] is not self._owner_token:
            raise RuntimeError(
                "this agent's policy no longer owns its env's UNet: a later agent was built on the same env "
                "(make_agent or load), which took the UNet over with its own weights; use that newer agent, or "
                "build each agent that should stay usable on its own env"
            )

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the optimizer trains: the LoRA adapter (or the whole UNet), then the value head's."""
        self.check_owner()
        params = [p for p in self.unet.parameters() if p.requires_grad]
        return params + (list(self.value_net.parameters()) if self.value_net is not None else [])

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained weights only (the LoRA adapter, or the whole UNet without LoRA), by UNet parameter name."""
        self.check_owner()
        return {n: p.detach() for n, p in self.unet.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Copy saved trained weights (:meth:`trainable_state_dict`) into this policy; the names must match (all of
        them; with ``strict=False`` a subset)."""
        self.check_owner()
        params = dict(self.unet.named_parameters())
        expected = {n for n, p in params.items() if p.requires_grad}
        if (set(state) != expected) if strict else not set(state) <= expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(
                f"the saved weights do not fit this policy (missing {missing[:3]}, unexpected {unexpected[:3]}): "
                "build the policy with the saved run's model and lora_rank"
            )
        with torch.no_grad():
            for name, value in state.items():
                if params[name].shape != value.shape:
                    raise ValueError(
                        f"saved weight {name} has shape {tuple(value.shape)}, the policy's has "
                        f"{tuple(params[name].shape)}: build the policy with the saved run's model and lora_rank"
                    )
                params[name].copy_(value)

    # ------------------------------------------------------------------------------------ reference π_ref

    def keep_reference(self) -> None:
        """Make the base model π_ref available to :meth:`reference`: nothing to keep with LoRA (the adapter is
        switched off instead); a full fine-tune keeps a frozen copy of the UNet as it is now."""
        if self.lora_rank <= 0 and self._reference_unet is None:
            if self._unet_trained_in_place:
                raise ValueError(
                    "a full fine-tune's reference model is its UNet before training, but an earlier full fine-tune "
                    "on this env trained that UNet in place: build this agent on a fresh env (same settings) to "
                    "keep the base model as reference (kl_coef > 0, the held-out monitor)"
                )
            self._reference_unet = copy.deepcopy(self.unet).requires_grad_(False).eval()
            for param in self._reference_unet.parameters():  # the base weights, exactly, in the dtype they came in
                param.data = param.data.to(self._env.backend.dtype)

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Inside the block the network is the base model: the LoRA adapter disabled, or the frozen copy of
        :meth:`keep_reference` in the backend's place. Not thread-safe: call it from one thread, outside the
        ``grad_workers`` passes."""
        if self.lora_rank > 0:
            self.unet.disable_adapters()
            try:
                yield
            finally:
                self.unet.enable_adapters()
            return
        if self._reference_unet is None:
            raise RuntimeError("a full fine-tune has no reference model: call policy.keep_reference() first")
        backend = self._env.backend
        backend.unet = self._reference_unet
        try:
            yield
        finally:
            backend.unet = self.unet

    @torch.no_grad()
    def reference_step(self, obs: dict[str, torch.Tensor], actions: torch.Tensor | None = None) -> DDIMStepOutput:
        """The base model's step at ``obs`` (its mean μ_ref and the shared std), scoring ``actions`` if given, or
        its deterministic mean."""
        with self.reference():
            return self.step(obs, actions=actions, deterministic=actions is None)

    # ------------------------------------------------------------------------------------------- math

    @property
    def has_reference(self) -> bool:
        """Whether the base model π_ref is at hand: the LoRA adapter switched off, or a kept frozen copy."""
        return self.lora_rank > 0 or self._reference_unet is not None

    def unpack(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latents = obs["latent"].to(torch.float32)
        timesteps = obs["timestep"].reshape(-1).round().to(torch.int64)
        prompt_ids = obs["prompt_id"].reshape(-1).round().to(torch.int64)
        return latents, timesteps, prompt_ids

    def model_output(self, latents: torch.Tensor, timesteps: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Guided network output for x_t (B, C, h, w), τ (B,), prompt ids (B,)."""
        self.check_owner()
        backend = self._env.backend
        embeds = self._env.prompt_embeds(prompt_ids.cpu().numpy())
        network_timesteps = self.schedule.model_timesteps(timesteps).to(latents.device)
        out = guided_model_output(
            backend, latents, network_timesteps, embeds, self._env.negative_prompt_embeds(), self.guidance_scale,
        )
        return out.float()

    def step(
        self, obs: dict[str, torch.Tensor], actions: torch.Tensor | None = None, deterministic: bool = False,
        ode: bool = False,
    ) -> DDIMStepOutput:
        """The DDIM step at ``obs``: sample x_{t-1} (or take the mean if deterministic), or score ``actions``; with
        ``ode``, take the deterministic ODE step (DDIM with η = 0, a flow model's Euler step) and score it."""
        latents, timesteps, prompt_ids = self.unpack(obs)
        model_output = self.model_output(latents, timesteps, prompt_ids)
        if ode:
            out = self.schedule.step(model_output, timesteps, latents, noise=torch.zeros_like(latents))
            actions = self.schedule.ode_step(out, timesteps, latents)
        if actions is not None:
            taken = actions.reshape(latents.shape).float()
            return self.schedule.step(model_output, timesteps, latents, prev_sample=taken)
        if deterministic:
            return self.schedule.step(model_output, timesteps, latents, noise=torch.zeros_like(latents))
        return self.schedule.step(model_output, timesteps, latents, generator=self.noise_generator)

    def entropy(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Per-dimension Gaussian entropy ½·log(2πe) + log(ησ_t), (B,): fixed by the schedule, no gradient."""
        std = self.schedule.std(timesteps, 1, timesteps.device, torch.float32)
        return std.reshape(-1).log() + 0.5 * math.log(2 * math.pi * math.e)

    # ----------------------------------------------------------------------------------- SB3 interface

    def forward(
        self, obs: dict[str, torch.Tensor], deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(actions (B, C, h, w), values (B, 1), log_prob (B,)) as SB3's collect_rollouts expects."""
        out = self.step(obs, deterministic=deterministic)
        return out.prev_sample, self.predict_values(obs), out.log_prob

    def evaluate_actions(
        self, obs: dict[str, torch.Tensor], actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values (B, 1) = 0, log_prob (B,), entropy (B,)) of ``actions`` (B, C, h, w) or flat (B, C·h·w)."""
        out = self.step(obs, actions=actions)
        _, timesteps, _ = self.unpack(obs)
        return self.predict_values(obs), out.log_prob, self.entropy(timesteps).to(out.log_prob.device)

    def predict_values(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """V(s) (B, 1): the value head's estimate, or 0 without one."""
        latents, timesteps, prompt_ids = self.unpack(obs)
        if self.value_net is None:
            return torch.zeros(latents.shape[0], 1, device=latents.device)
        embeds = self._env.prompt_embeds(prompt_ids.cpu().numpy()).float()
        return self.value_net(latents, timesteps.to(latents.device), embeds)

    def _predict(self, observation: dict[str, torch.Tensor], deterministic: bool = False) -> torch.Tensor:
        return self.step(observation, deterministic=deterministic).prev_sample

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(lora_rank=self.lora_rank, value_head=self.value_net is not None)
        return data


class ValueHead(torch.nn.Module):
    """A small critic V(x_t, t, c): conv features of x_t pooled, a sinusoidal embedding of t, the mean prompt
    embedding, then an MLP → (B, 1). Independent of the UNet, so the policy's weights are untouched by its loss."""

    def __init__(self, channels: int, embed_dim: int, width: int = 64) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(channels, width, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(width, width, 3, stride=2, padding=1), torch.nn.SiLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        )  # fmt: skip
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(width + 32 + embed_dim, width), torch.nn.SiLU(), torch.nn.Linear(width, 1)
        )

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-math.log(10_000) * torch.arange(16, device=latents.device) / 16)
        angles = timesteps.float()[:, None] * freqs[None]
        t_embed = torch.cat([angles.sin(), angles.cos()], dim=1)
        return self.mlp(torch.cat([self.features(latents), t_embed, prompt_embeds.mean(dim=1)], dim=1))
