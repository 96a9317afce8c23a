"""Measures of generated shapes-world images for the benchmarks: GenEval-style scores per category, and the two
over-optimisation measures the geneval reward cannot see.

* :func:`category_scores`: the verifier's binary accuracy (and mean partial credit) per GenEval category, and overall
  as GenEval reports it: the mean of the category accuracies; :func:`relation_scores`: whether a position failure
  is a missing object or the relation itself.
* :class:`SceneFeatures`: a small CNN trained (seeded, ~20 s on a CPU) on the generator's renders to count each
  colour × shape; its 64-d penultimate activations are the features of
  - :func:`frechet_distance` between generated images and renders of the same prompts (FID's formula on these
    features: how far the images' statistics drift from the real renders), and
  - :func:`diversity`: the mean feature distance between two samples of the same prompt.
"""

from __future__ import annotations

import argparse
import functools
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from ddpo_env.scenes import CATEGORIES, COLOURS, SHAPES, make_scene, parse_prompt
from rewards.geneval import Verdict, objects_asked, relation_found, verify


def categories_arg(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """The GenEval categories a ``--categories`` flag names (comma-separated; empty: none), or a parser error that
    lists the valid ones."""
    categories = text.split(",") if text else []
    if set(categories) - set(CATEGORIES):
        parser.error(f"unknown categories {sorted(set(categories) - set(CATEGORIES))}: use {', '.join(CATEGORIES)}")
    return categories


def category_scores(images: np.ndarray, prompts: list[str]) -> dict[str, Any]:
    """{"overall": mean of the category accuracies, "categories": {category: {"accuracy", "partial", "extra_objects",
    "samples"}}, "correct": per-image 0/1 list, "partial": mean partial credit, "extra_objects": mean objects found
    beyond those the prompt asks for, "relations": :func:`relation_scores`} from the verifier."""
    verdicts = verify(images, prompts)
    rows = np.array([(v.correct, v.score, extra_objects(v)) for v in verdicts], dtype=np.float64).reshape(-1, 3)
    per: dict[str, list[int]] = defaultdict(list)
    for i, v in enumerate(verdicts):
        per[v.spec.category].append(i)
    categories = {c: {"accuracy": float(rows[per[c], 0].mean()), "partial": float(rows[per[c], 1].mean()),
                      "extra_objects": float(rows[per[c], 2].mean()), "samples": len(per[c])}
                  for c in CATEGORIES if c in per}
    return {"overall": float(np.mean([c["accuracy"] for c in categories.values()])), "categories": categories,
            "correct": [int(v.correct) for v in verdicts], "partial": float(rows[:, 1].mean()),
            "extra_objects": float(rows[:, 2].mean()), "relations": relation_scores(verdicts)}


#: What the reports' position tables show (benchmarks.compositional, benchmarks.shapes_model).
RELATIONS_NOTE = ("Share of position samples with both groups found; among those, the share where the stated relation "
                  "holds and where the opposite one does (equal shares: the pair is drawn, the relation ignored).\n")


def relation_scores(verdicts: list[Verdict]) -> dict[str, float] | None:
    """What goes wrong in the position category (None without position prompts): the share of its images with both
    groups found, and among those the share where the stated relation holds and where the opposite one does. Equal
    shares for the two sides mean the model draws the pair but ignores the relation."""
    found = np.array([r for r in map(relation_found, verdicts) if r is not None], dtype=bool).reshape(-1, 3)
    if not len(found):
        return None
    both = found[found[:, 0]]
    return {"samples": len(found), "both_found": float(found[:, 0].mean()),
            "relation_given_both": float(both[:, 1].mean()) if len(both) else 0.0,
            "opposite_given_both": float(both[:, 2].mean()) if len(both) else 0.0}


def extra_objects(verdict: Verdict) -> int:
    """Objects detected beyond the number the prompt names (0 when no more): what a verifier that accepts extra
    objects outside counting lets a policy add."""
    return max(0, len(verdict.detections) - objects_asked(verdict.spec))


def renders(prompts: list[str], seed: int) -> np.ndarray:
    """One generator render per prompt (uint8 (N, 32, 32, 3)), held-out pairs allowed where the prompt names them."""
    rng = np.random.default_rng(seed)
    return np.stack([make_scene(parse_prompt(p), rng, avoid_heldout=False).image for p in prompts])


class SceneFeatures:
    """A CNN trained to count every colour × shape in renders; ``features(images)`` gives its 64-d embedding."""

    def __init__(self, seed: int = 0, steps: int = 600, batch_size: int = 64) -> None:
        from ddpo_env.scenes import sample_spec

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                torch.nn.Conv2d(32, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
                torch.nn.Conv2d(64, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
            )  # fmt: skip
            head = torch.nn.Linear(64, len(COLOURS) * len(SHAPES))
        rng = np.random.default_rng(seed)
        optimizer = torch.optim.Adam([*self.body.parameters(), *head.parameters()], lr=3e-3)
        for _ in range(steps):
            scenes = [make_scene(sample_spec(CATEGORIES[int(rng.integers(len(CATEGORIES)))], rng), rng)
                      for _ in range(batch_size)]
            counts = torch.zeros(batch_size, len(COLOURS) * len(SHAPES))
            for i, scene in enumerate(scenes):
                for o in scene.objects:
                    counts[i, COLOURS.index(o.colour) * len(SHAPES) + SHAPES.index(o.shape)] += 1
            loss = torch.nn.functional.mse_loss(head(self.body(_as_input(np.stack([s.image for s in scenes])))), counts)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        self.final_loss = loss.item()
        self.body.eval().requires_grad_(False)

    @torch.no_grad()
    def features(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate([self.body(_as_input(images[i : i + 256])).numpy() for i in range(0, len(images), 256)])


@functools.lru_cache(maxsize=2)
def scene_features(seed: int = 0, steps: int = 600) -> SceneFeatures:
    """:class:`SceneFeatures` trained once per process for each (seed, steps)."""
    return SceneFeatures(seed=seed, steps=steps)


def _as_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½) between two feature sets (N, D). Tr (Σ_a Σ_b)^½ is computed as
    Σ √λ of the symmetric Σ_a^½ Σ_b Σ_a^½ (same eigenvalues), which stays real for singular covariances."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def diversity(features: np.ndarray, prompts: list[str]) -> float:
    """Mean feature distance between the samples of the same prompt (all pairs, averaged over prompts)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        groups[p].append(i)
    distances = [float(np.linalg.norm(features[i] - features[j]))
                 for members in groups.values() for k, i in enumerate(members) for j in members[k + 1:]]
    if not distances:
        raise ValueError("diversity needs at least two samples of some prompt")
    return float(np.mean(distances))
