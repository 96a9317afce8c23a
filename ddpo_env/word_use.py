"""Does a model use a word? The word-use check, for any model, prompts and word swap.

For each prompt c holding the whole word a, c' is c with a replaced by b. The model draws clean samples x₀ for c
itself (its deterministic sampler from fixed seeds, the env's guidance), and each is noised as in the model's own
training loss: (x_t, t, target) at t drawn over the training schedule with fixed noise (``schedule.training_pair``).
With f the network's conditional prediction (ε̂, v̂ or x̂₀, no guidance):

    prediction change   Δ_pred = √E‖f(x_t, c') − f(x_t, c)‖² / √E‖f(x_t, c)‖²
    error increase      Δ_err  = (E‖f(x_t, c') − target‖² − E‖f(x_t, c) − target‖²) / E‖f(x_t, c) − target‖²

Δ_pred ≈ 0 means the network's output does not depend on the word: no policy built on this network can be steered
by it (RL can only reweight what the conditioning already separates). Δ_err > 0 means the model's own samples for c
fit c better than c', i.e. they carry what the word says. Compare with a word the model surely uses (a colour) as a
control: the shapes model's relation words ("left" ↔ "right") change its prediction by a small fraction of what a
colour swap does (``ddpo diagnose words``, docs/shapes.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ddpo_env.sampler import guided_model_output


def swap_word(prompt: str, word: str, replacement: str) -> str | None:
    """``prompt`` with every whole-word ``word`` replaced by ``replacement``; None when the word is not in it."""
    pattern = rf"\b{re.escape(word)}\b"
    return re.sub(pattern, replacement, prompt) if re.search(pattern, prompt) else None


@dataclass
class WordUse:
    """The check's result for one swap ``word`` → ``replacement`` over ``prompts`` (the pairs (c, c'))."""

    word: str
    replacement: str
    prompts: list[tuple[str, str]]
    prediction_change: float
    error_increase: float
    per_prompt: list[dict[str, Any]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {"swap": f"{self.word} → {self.replacement}", "prompts": len(self.prompts),
                "prediction_change": self.prediction_change, "error_increase": self.error_increase}


@torch.no_grad()
def sample_clean(backend: Any, schedule: Any, embeds: torch.Tensor, negative: torch.Tensor, guidance_scale: float,
                 seed: int) -> torch.Tensor:
    """x₀ (B, C, h, w) for conditioning ``embeds`` (B, L, D): the schedule's deterministic (ODE) steps from x_T drawn
    with ``seed``, guided with ``negative`` (1, L, D) at ``guidance_scale``."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    shape = (embeds.shape[0], *backend.latent_shape(None))
    x = torch.randn(shape, generator=generator, device="cpu").to(backend.device)
    for tau in schedule.timesteps.tolist():
        t = torch.full((x.shape[0],), tau, dtype=torch.int64, device=backend.device)
        output = guided_model_output(backend, x, schedule.model_timesteps(t), embeds, negative, guidance_scale)
        x = schedule.ode_step(schedule.step(output, t, x, noise=torch.zeros_like(x)), t, x)
    return x


@torch.no_grad()
def word_use(backend: Any, schedule: Any, prompts: Sequence[str], word: str, replacement: str, *,
             guidance_scale: float = 1.0, samples: int = 4, draws: int = 8, seed: int = 0) -> WordUse:
    """The check for one swap over the ``prompts`` that hold ``word`` (``samples`` clean samples each, ``draws``
    noisings of each); ValueError when none of them holds it."""
    pairs = [(p, swapped) for p in dict.fromkeys(prompts) if (swapped := swap_word(p, word, replacement)) is not None]
    if not pairs:
        raise ValueError(f"no prompt holds the word {word!r}: give prompts that do (--prompts or --prompt-file)")
    negative = backend.encode_prompts([""])
    per_prompt = []
    totals = torch.zeros(4, dtype=torch.float64)  # Σ‖Δf‖², Σ‖f‖², Σ err(c), Σ err(c')
    for i, (prompt, swapped) in enumerate(pairs):
        true, other = (backend.encode_prompts([text]).expand(samples, -1, -1) for text in (prompt, swapped))
        x0 = sample_clean(backend, schedule, true, negative, guidance_scale, seed + i)
        generator = torch.Generator(device="cpu").manual_seed(seed + 1_000_003 * (i + 1))
        sums = torch.zeros(4, dtype=torch.float64)
        for _ in range(draws):
            x_t, t, target = schedule.training_pair(x0, generator)
            f_true, f_other = backend.predict(x_t, t, true).float(), backend.predict(x_t, t, other).float()
            sums += torch.stack([(f_other - f_true).square().sum(), f_true.square().sum(),
                                 (f_true - target).square().sum(), (f_other - target).square().sum()]).double().cpu()
        totals += sums
        per_prompt.append({"prompt": prompt, "swapped": swapped, **_changes(sums)})
    return WordUse(word, replacement, pairs, **_changes(totals), per_prompt=per_prompt)


def _changes(sums: torch.Tensor) -> dict[str, float]:
    delta, norm, err_true, err_other = (float(v) for v in sums)
    return {"prediction_change": (delta / norm) ** 0.5, "error_increase": (err_other - err_true) / err_true}


def markdown(results: Sequence[WordUse]) -> str:
    """A table of the swaps: prompts, prediction change and error increase (in %)."""
    lines = ["| swap | prompts | prediction change | error increase |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.word} → {r.replacement} | {len(r.prompts)} | {100 * r.prediction_change:.2f} % | "
                     f"{100 * r.error_increase:+.2f} % |")
    return "\n".join(lines)
