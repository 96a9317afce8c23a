"""DenoisingDiffusion-v0 as a native batched Gymnasium ``VectorEnv`` (the ``CartPoleVectorEnv`` template).

The MDP of DDPO (Black et al. 2024, §4), all envs advancing in one call:

    state   s_k = (c, τ_k, x_{τ_k})      obs {"latent": x (C,h,w) float32, "timestep": [τ_k], "prompt_id": [id]}
    action  a_k = x_{τ_{k+1}}           the next latent, a Box (C,h,w) float32 with finite bounds
    reward  0 on steps 1..T−1; at step T the env decodes x_0 and puts ``info["image"]`` (B,H,W,3 uint8) and
            ``info["prompt"]`` (B,) for reward wrappers, which add the score. The bare env's reward is 0.
    end     exactly T = num_steps steps; step T has terminated=True, truncated=False. The terminal obs holds x_0
            with timestep 0.

Every env of the batch is at the same step (episodes are all T long), so resets are whole-batch.
Randomness: env i owns a numpy generator (prompt draws) and a torch generator (x_T), both seeded seed+i, so
env i's trajectory does not depend on num_envs. With ``group_size`` k, envs g·k … g·k+k−1 share the prompt drawn
by env g·k's generator (k samples per prompt, for group-relative advantages).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.error import ResetNeeded
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from ddpo_env.backends import DiffusionBackend, load_backend
from ddpo_env.conditioning import warn_if_ill_conditioned
from ddpo_env.config import EnvConfig
from ddpo_env.prompts import MAX_PROMPT_IDS, PromptSource
from ddpo_env.schedule import make_schedule
from ddpo_env.tasks import task_of


class DenoisingDiffusionVectorEnv(VectorEnv):
    """``gym.make_vec("DenoisingDiffusion-v0", num_envs=B, **EnvConfig fields)``.

    Useful attributes for policies: ``backend`` (frozen parts + trainable UNet), ``task`` (the model's prompt sets
    and judge, :class:`ddpo_env.tasks.Task`), ``schedule``
    (:class:`~ddpo_env.ddim.DDIMSchedule`), ``guidance_scale``, :meth:`prompt_embeds`,
    :meth:`negative_prompt_embeds`, :meth:`prompt_strings`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, config: EnvConfig | None = None, **kwargs: Any) -> None:
        if config is not None and kwargs:
            raise ValueError(f"pass either config= or keyword arguments, not both (got {sorted(kwargs)})")
        self.config = config if config is not None else EnvConfig(**kwargs)
        if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        cfg = self.config
        self.num_envs = int(num_envs)
        if self.num_envs % cfg.group_size:
            raise ValueError(
                f"num_envs={self.num_envs} must be a multiple of group_size={cfg.group_size}: each group of "
                f"{cfg.group_size} envs shares a prompt"
            )
        self.render_mode = cfg.render_mode
        self.metadata = {**self.metadata, "autoreset_mode": cfg.autoreset_mode}

        self.backend: DiffusionBackend = load_backend(cfg.model, cfg.device, cfg.dtype)
        if cfg.attention == "matmul":
            self.backend.use_matmul_attention()
        self.device = self.backend.device
        self.task = task_of(cfg.model, self.backend)  # its prompt sets and judge (ddpo_env.tasks)
        self.prompt_source = PromptSource(cfg.prompts if cfg.prompts is not None else
                                          self.task.training_prompts(self.backend))
        self.conditioning = self.backend.conditioning  # prompt ids are shared by every env on this model
        for prompt in self.prompt_source.prompts or ():
            self.conditioning.id_of(prompt)
        self.guidance_scale = float(
            cfg.guidance_scale if cfg.guidance_scale is not None else self.backend.default_guidance_scale
        )
        num_steps = cfg.num_steps if cfg.num_steps is not None else self.backend.default_num_steps
        self.scheduler_config = {**self.backend.scheduler_config, **cfg.scheduler_overrides}
        self.schedule = make_schedule(self.scheduler_config, num_steps, cfg.eta)
        self.num_steps = self.schedule.num_steps
        warn_if_ill_conditioned(self.schedule, f"DenoisingDiffusion-v0 on {self.backend.name!r} with {num_steps} steps")
        self.latent_shape = self.backend.latent_shape(cfg.image_size)

        bound = np.float32(cfg.latent_bound)
        latent_space = spaces.Box(-bound, bound, self.latent_shape, np.float32)
        self.single_action_space = latent_space
        self.single_observation_space = spaces.Dict(
            {
                "latent": latent_space,
                "timestep": spaces.Box(0, self.schedule.max_timestep, (1,), np.int64),
                "prompt_id": spaces.Box(0, MAX_PROMPT_IDS - 1, (1,), np.int64),
            }
        )
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)

        self._latents: torch.Tensor | None = None  # x at the current step, (B, C, h, w) float32 on device
        self._prompt_ids = np.zeros(self.num_envs, dtype=np.int64)
        self._step: int | None = None  # k in 0..T; None before the first reset
        self._episode_over = False
        self._prompt_rngs: list[np.random.Generator] = []
        self._noise_generators: list[torch.Generator] = []

    # ----------------------------------------------------------------------------------------------- API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start a new episode in every env: draw c and x_T ~ N(0, I) from env i's generators.

        Args:
            seed: env i's generators restart from seed + i; None continues them (or seeds from entropy once).
            options: {"prompts": [str] * num_envs} fixes the prompts of this episode (e.g. for evaluation).
        """
        super().reset(seed=seed)
        prompts = self._parse_reset_options(options)
        if seed is not None or not self._prompt_rngs:
            base = int(seed) if seed is not None else int(self.np_random.integers(2**62))
            self._seed_generators(base)
        self._start_episode(prompts)
        return self._observation(), {}

    def step(
        self, actions: np.ndarray | torch.Tensor
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Take x_{t-1} = ``actions`` (num_envs, C, h, w) as the next latents; see the module docstring."""
        if self._step is None:
            raise ResetNeeded("step() was called before reset(): call env.reset(seed=...) first")
        x_prev = self._check_actions(actions)
        zeros = np.zeros(self.num_envs, dtype=np.bool_)
        if self._episode_over:
            if self.config.autoreset_mode == AutoresetMode.DISABLED:
                raise ResetNeeded(
                    f"the episode ended after {self.num_steps} steps and autoreset_mode is 'disabled': "
                    "call env.reset() before stepping again"
                )
            self._start_episode(None)  # NEXT_STEP: this step only resets; the action is ignored
            return self._observation(), np.zeros(self.num_envs), zeros, zeros.copy(), {}

        self._latents = x_prev
        self._step += 1
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminated = np.full(self.num_envs, self._step == self.num_steps)
        obs = self._observation()
        if not terminated[0]:
            return obs, rewards, terminated, zeros, {}

        everywhere = np.ones(self.num_envs, dtype=np.bool_)
        info: dict[str, Any] = {
            "image": self.decode_images(self._latents),
            "_image": everywhere,
            "prompt": np.array(self.prompt_strings(self._prompt_ids), dtype=object),
            "_prompt": everywhere.copy(),
        }
        if self.config.autoreset_mode == AutoresetMode.SAME_STEP:
            info["final_obs"], info["_final_obs"] = obs, everywhere.copy()
            self._start_episode(None)
            obs = self._observation()
        else:
            self._episode_over = True
        return obs, rewards, terminated, zeros, info

    def render(self) -> tuple[np.ndarray, ...] | None:
        """'rgb_array': the current latents decoded, one (H, W, 3) uint8 image per env."""
        if self.render_mode is None:
            gym.logger.warn("render() needs render_mode='rgb_array' at construction")
            return None
        if self._latents is None:
            raise ResetNeeded("render() was called before reset(): call env.reset() first")
        return tuple(self.decode_images(self._latents))

    def close(self, **kwargs: Any) -> None:
        super().close(**kwargs)

    # --------------------------------------------------------------------------- for policies and rewards

    def prompt_embeds(self, prompt_ids: np.ndarray | torch.Tensor | list[int]) -> torch.Tensor:
        """Conditioning (B, L, D) for prompt ids (B,) or (B, 1), on the env's device (cached per id)."""
        return self.conditioning.embeds(prompt_ids)

    def negative_prompt_embeds(self, batch_size: int = 1) -> torch.Tensor:
        """Conditioning of the empty prompt (id 0), the unconditional branch of CFG: (batch_size, L, D)."""
        return self.prompt_embeds(np.zeros(batch_size, dtype=np.int64))

    def prompt_strings(self, prompt_ids: np.ndarray | list[int]) -> list[str]:
        """The prompt text of each id."""
        return self.conditioning.strings(prompt_ids)

    def decode_images(self, latents: torch.Tensor) -> np.ndarray:
        """Decode latents (B, C, h, w) to uint8 images (B, H, W, 3) with the model's frozen decoder, in chunks of
        ``decode_batch_size`` latents when set."""
        chunk = self.config.decode_batch_size or len(latents)
        images = torch.cat([self.backend.decode(part) for part in latents.split(chunk)])
        return (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue this env exactly: the current latents, prompts and step,
        every generator's state and the prompt-id table (tensors on the CPU; plain Python otherwise)."""
        return {
            "latents": None if self._latents is None else self._latents.cpu().clone(),
            "prompt_ids": torch.from_numpy(self._prompt_ids.copy()),
            "step": self._step,
            "episode_over": self._episode_over,
            "prompt_rngs": [rng.bit_generator.state for rng in self._prompt_rngs],
            "noise_generators": [g.get_state() for g in self._noise_generators],
            "np_random": None if self._np_random is None else self._np_random.bit_generator.state,
            "prompts": self.conditioning.prompt_list(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (from an env with the same model, num_envs and latent shape)."""
        if len(state["prompt_rngs"]) != self.num_envs:
            raise ValueError(
                f"the saved env state has {len(state['prompt_rngs'])} envs but this env has {self.num_envs}: "
                "build the env with the num_envs of the saved run"
            )
        latents = state["latents"]
        if latents is not None and tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"the saved latents have shape {tuple(latents.shape[1:])} but this env's latent shape is "
                f"{self.latent_shape}: build the env with the saved run's model"
            )
        self.conditioning.restore_prompt_list(state["prompts"])
        self._latents = None if latents is None else latents.to(self.device)
        self._prompt_ids = state["prompt_ids"].numpy().astype(np.int64)
        self._step, self._episode_over = state["step"], state["episode_over"]
        self._prompt_rngs = []
        for saved in state["prompt_rngs"]:
            rng = np.random.default_rng()
            rng.bit_generator.state = saved
            self._prompt_rngs.append(rng)
        self._noise_generators = [torch.Generator(device=self.device) for _ in state["noise_generators"]]
        for generator, saved in zip(self._noise_generators, state["noise_generators"], strict=True):
            generator.set_state(saved)
        if state["np_random"] is not None:
            self._np_random = np.random.default_rng()
            self._np_random.bit_generator.state = state["np_random"]

    @property
    def step_index(self) -> int | None:
        """k, the number of steps taken in the current episode (None before reset)."""
        return self._step

    # ----------------------------------------------------------------------------------------- internals

    def _seed_generators(self, base: int) -> None:
        self._prompt_rngs = [np.random.default_rng(base + i) for i in range(self.num_envs)]
        self._noise_generators = [
            torch.Generator(device=self.device).manual_seed(base + i) for i in range(self.num_envs)
        ]

    def _start_episode(self, prompts: list[str] | None) -> None:
        if prompts is None:  # a group's prompt is drawn by its first env's generator
            k = self.config.group_size
            drawn = [self.prompt_source.sample(rng) for rng in self._prompt_rngs[::k]]
            prompts = [prompt for prompt in drawn for _ in range(k)]
        self._prompt_ids = np.array([self.conditioning.id_of(p) for p in prompts], dtype=np.int64)
        self._latents = torch.stack(
            [torch.randn(self.latent_shape, generator=g, device=self.device) for g in self._noise_generators]
        )
        self._step = 0
        self._episode_over = False

    def _observation(self) -> dict[str, np.ndarray]:
        assert self._latents is not None and self._step is not None
        t = int(self.schedule.timesteps[self._step]) if self._step < self.num_steps else 0
        return {
            "latent": self._latents.cpu().numpy().copy(),
            "timestep": np.full((self.num_envs, 1), t, dtype=np.int64),
            "prompt_id": self._prompt_ids.reshape(-1, 1).copy(),
        }

    def _parse_reset_options(self, options: dict[str, Any] | None) -> list[str] | None:
        if not options:
            return None
        unknown = set(options) - {"prompts"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}: the only option is 'prompts'")
        prompts = options["prompts"]
        if (
            isinstance(prompts, str)
            or len(prompts) != self.num_envs
            or not all(isinstance(p, str) for p in prompts)
        ):
            raise ValueError(
                f"options['prompts'] must be a list of {self.num_envs} strings (one per env), got {prompts!r}"
            )
        return list(prompts)

    def _check_actions(self, actions: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Validate a batch of x_{t-1} and return it as a float32 tensor on the env's device."""
        if isinstance(actions, torch.Tensor):
            if actions.device != self.device:
                raise ValueError(
                    f"actions are on device {actions.device} but the env runs on {self.device}: "
                    f"move them with actions.to('{self.device}') or pass a numpy array"
                )
            x = actions.detach().to(torch.float32).clone()
        else:
            array = np.asarray(actions)
            if not np.issubdtype(array.dtype, np.number):
                raise TypeError(f"actions must be a float array or tensor, got dtype {array.dtype}")
            x = torch.from_numpy(array.astype(np.float32, copy=True)).to(self.device)
        expected = (self.num_envs, *self.latent_shape)
        if x.ndim != len(expected) or x.shape[0] != self.num_envs:
            raise ValueError(
                f"actions have shape {tuple(x.shape)} but the env expects {expected}: one x_(t-1) latent per env "
                f"(num_envs={self.num_envs})"
            )
        if tuple(x.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"actions have per-env shape {tuple(x.shape[1:])} but the latent shape is {self.latent_shape} "
                f"(full batch {expected})"
            )
        flat = x.reshape(self.num_envs, -1)
        finite = torch.isfinite(flat).all(dim=1)
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten().tolist()
            raise ValueError(
                f"actions contain NaN or Inf in env(s) {bad}: the policy produced a non-finite latent "
                "(look at the learning rate and the log-probabilities)"
            )
        bound = self.config.latent_bound
        if bool((flat.abs() > bound).any()):
            bad = (flat.abs() > bound).any(dim=1).nonzero().flatten().tolist()
            raise ValueError(
                f"actions exceed the latent bound ±{bound} in env(s) {bad}: no real latent is that large; "
                "raise latent_bound if your model's latents are"
            )
        return x

    def __repr__(self) -> str:
        return (
            f"DenoisingDiffusionVectorEnv(num_envs={self.num_envs}, model={self.backend!r}, "
            f"num_steps={self.num_steps}, eta={self.schedule.eta}, guidance_scale={self.guidance_scale})"
        )
