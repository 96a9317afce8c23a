"""The backend interface every model implements, and device/dtype resolution."""

from __future__ import annotations

import abc
import contextlib
import importlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ddpo_env.prompts import PromptConditioning

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class DiffusionBackend(abc.ABC):
    """What the env and the policy need from a diffusion model.

    Attributes:
        name: a short description for reprs and checkpoints.
        unet: the trainable network ``unet(x_t, t, encoder_hidden_states=...)``.
        scheduler_config: the diffusers scheduler config the DDIM schedule is built from.
        default_num_steps: DDIM steps per episode when the user gives none.
        default_guidance_scale: classifier-free guidance weight when the user gives none.
        default_prompts: prompts used when the user gives none.
        device, dtype: where and in which precision the model runs.
    """

    name: str
    unet: torch.nn.Module
    scheduler_config: dict
    default_num_steps: int
    default_guidance_scale: float
    default_prompts: tuple[str, ...]
    device: torch.device
    dtype: torch.dtype

    @abc.abstractmethod
    def latent_shape(self, image_size: tuple[int, int] | None) -> tuple[int, int, int]:
        """(C, h, w) of x_t for an image of ``image_size`` = (height, width), or the model's native size if None.
        Raises ValueError for a size the model cannot produce."""

    @abc.abstractmethod
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompt conditioning (B, L, D) on ``device`` in ``dtype``; no gradient."""

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images as float32 in [0, 1], (B, 3, H, W), from final latents x_0 (B, C, h, w); no gradient."""

    def use_matmul_attention(self) -> None:
        """Every attention layer of a diffusers UNet2DConditionModel through diffusers' AttnProcessor (matmul,
        softmax, matmul: on a CPU faster than torch's fused kernel for heads of a few channels)."""
        from diffusers import UNet2DConditionModel
        from diffusers.models.attention_processor import AttnProcessor

        if not isinstance(self.unet, UNet2DConditionModel):
            raise ValueError(f"attention='matmul' needs a diffusers UNet2DConditionModel, this model's network is a "
                             f"{type(self.unet).__name__}: use attention='sdpa'")
        self.unet.set_attn_processor(AttnProcessor())

    def compile_inference(self, **options: Any) -> None:
        """Run the network through ``torch.compile(unet, **options)`` in every call that records no gradient
        (sampling, evaluation, the KL reference); calls that need a gradient keep the eager module. The weights are
        shared, so training updates are seen at once. Each new batch shape (or LoRA adapter switched off) compiles
        on its first call: tens of seconds on a CPU, needing a C++ compiler there."""
        with warnings.catch_warnings():  # inductor imports torch.utils.mkldnn, whose class body trips torch's own
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit deprecation warning: import it quietly
            importlib.import_module("torch.fx.experimental.optimization")
        compiled = torch.compile(self.unet, **options)

        def quiet(*args: Any, **kwargs: Any) -> Any:  # dynamo warns, tracing in half precision, that it traces
            with warnings.catch_warnings():  # through diffusers' lru_cache'd version check: harmless, not ours
                warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
                return compiled(*args, **kwargs)

        self._compiled = (self.unet, quiet)

    @property
    def network(self) -> Callable[..., Any]:
        """The module :meth:`predict` calls now: the compiled one (:meth:`compile_inference`) without gradient
        recording outside :meth:`eager`, else ``unet`` (which a caller may have swapped for another module: that one
        runs eager)."""
        source, compiled = getattr(self, "_compiled", (None, None))
        if source is self.unet and not torch.is_grad_enabled() and not getattr(self, "_eager", 0):
            return compiled
        return self.unet

    @contextlib.contextmanager
    def eager(self) -> Iterator[None]:
        """Inside the block every call runs the eager ``unet``, also without gradient recording: the kernels the
        training passes use (compiled kernels round differently, enough to move PPO's ratio in half precision)."""
        self._eager = getattr(self, "_eager", 0) + 1
        try:
            yield
        finally:
            self._eager -= 1

    def autocast(self) -> contextlib.AbstractContextManager:
        """The block the network runs in: autocast to ``dtype`` in half precision (the trained weights may be float32
        master weights, the frozen ones are ``dtype``), nothing in float32 (or float64)."""
        if self.dtype not in (torch.float16, torch.bfloat16):
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def predict(
        self, latents: torch.Tensor, timesteps: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """The network output (ε̂, v̂ or x̂₀) for x_t (B, C, h, w), τ (B,), conditioning (B, L, D), under
        :meth:`autocast`; out in the latents' dtype."""
        with self.autocast():
            out = self.network(
                latents.to(self.dtype), timesteps, encoder_hidden_states=encoder_hidden_states.to(self.dtype)
            ).sample
        return out.to(latents.dtype)

    @property
    def conditioning(self) -> PromptConditioning:
        """Prompt ids, strings and cached embeddings shared by every env on this model."""
        if getattr(self, "_conditioning", None) is None:
            self._conditioning = PromptConditioning(self.encode_prompts)
        return self._conditioning

    def _moved(self) -> None:
        """Drop cached embeddings after a device/dtype change (ids stay valid)."""
        if getattr(self, "_conditioning", None) is not None:
            self._conditioning.clear_cache()

    @abc.abstractmethod
    def to(self, device: torch.device | str, dtype: torch.dtype) -> DiffusionBackend:
        """Move every part to ``device``/``dtype`` in place; returns self."""


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """torch dtype from "float32" | "float16" | "bfloat16" or a torch.dtype; ValueError otherwise."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"unknown dtype {dtype!r}: use one of {sorted(DTYPES)}")


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" → cuda if available else cpu; anything else must be a device torch can use here."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but torch sees no CUDA GPU here: use device='cpu'")
        if resolved.index is None:  # modules report cuda:N; compare like with like
            resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved
