"""The shipped shapes model before any RL: ``python -m benchmarks.shapes_model``.

GenEval-style scores of the base model per category, from the geneval verifier, on the fixed training prompts
(116) and the held-out prompts (72, each with a combination the model never saw), ``--seeds`` samples per prompt,
at 10 and 20 DDIM steps (η = 1) and with classifier-free guidance 2 at 10 steps; the verifier's accuracy on the
generator's own renders of the same prompts (the ceiling); the feature-space distance of the samples to those renders
and their diversity (benchmarks.scene_metrics); and a captioned sample grid.

Writes benchmarks/results/shapes_model.{json,md}, shapes_model_grid.png and summary.json's
``shapes_model_score`` / ``shapes_model_heldout_score`` (10 steps, guidance 1). ``--model DIR`` scores a model
trained by ``python -m ddpo_env.models.train_shapes --out DIR`` instead, ``--categories`` the prompts of some
categories only; either writes under ``--name`` and leaves summary.json alone.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.default_model_quality import generate
from benchmarks.record import RESULTS_DIR, command_line, environment, update_summary, write_json
from benchmarks.scene_metrics import (
    RELATIONS_NOTE,
    categories_arg,
    category_scores,
    diversity,
    frechet_distance,
    renders,
    scene_features,
)
from ddpo_env import DenoisingDiffusionVectorEnv
from ddpo_env.images import captioned_grid
from ddpo_env.models.embedded import read_model_index
from ddpo_env.models.shapes import SHAPES_DIR
from ddpo_env.scenes import CATEGORIES, parse_prompt, prompt_set
from rewards.geneval import verify

SETTINGS = {"10 steps": {"num_steps": 10}, "20 steps": {"num_steps": 20},
            "10 steps, guidance 2": {"num_steps": 10, "guidance_scale": 2.0}}


def score_table(results: dict, split: str) -> list[str]:
    lines = ["| setting | overall | " + " | ".join(CATEGORIES) + " |", "|---|---|" + "---|" * len(CATEGORIES)]
    for name, by_split in results.items():
        s = by_split[split]
        cells = [f"{s['categories'][c]['accuracy']:.0%}" if c in s["categories"] else "–" for c in CATEGORIES]
        lines.append(f"| {name} | **{s['overall']:.1%}** | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4, help="samples per prompt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="shapes", help="the shipped model, or a folder trained by "
                        "python -m ddpo_env.models.train_shapes --out DIR")
    parser.add_argument("--categories", default="", help="score the prompts of these GenEval categories only, "
                        f"comma-separated ({', '.join(CATEGORIES)}); default: all")
    parser.add_argument("--name", default="shapes_model", help="result files' name in benchmarks/results/")
    args = parser.parse_args(argv)
    categories = categories_arg(parser, args.categories) or list(CATEGORIES)
    shipped = args.model == "shapes" and not args.categories
    if args.name == "shapes_model" and not shipped:
        parser.error("--model / --categories: give the results a --name of their own (shapes_model is the shipped "
                     "model on every category)")
    torch.set_num_threads(args.threads)
    env_info = environment(command_line("benchmarks.shapes_model", argv))
    sets = {split: [p for p in prompt_set(split) if parse_prompt(p).category in categories for _ in range(args.seeds)]
            for split in ("train", "heldout")}
    if not sets["heldout"]:
        parser.error(f"--categories {args.categories}: single_object and two_object name no colour or count, so none "
                     "of their prompts is held out; add a category that has held-out prompts")
    features = scene_features()
    results: dict = {}
    ceiling = {split: category_scores(renders(prompts, seed=1), prompts) for split, prompts in sets.items()}
    reference = {split: features.features(renders(prompts, seed=2)) for split, prompts in sets.items()}
    floor = {split: frechet_distance(features.features(renders(prompts, seed=3)), reference[split])
             for split, prompts in sets.items()}
    render_diversity = diversity(features.features(renders(sets["train"], seed=3)), sets["train"])
    grid_images = None
    for name, setting in SETTINGS.items():
        env = DenoisingDiffusionVectorEnv(model=args.model, num_envs=58, device="cpu", attention="matmul", **setting)
        results[name] = {}
        for split, prompts in sets.items():
            start = time.perf_counter()
            images = generate(env, prompts, seed=0)
            seconds = time.perf_counter() - start
            scores = category_scores(images, prompts)
            f = features.features(images)
            results[name][split] = {**{k: v for k, v in scores.items() if k != "correct"},
                                    "feature_distance": frechet_distance(f, reference[split]),
                                    "diversity": diversity(f, prompts), "images_per_s": len(prompts) / seconds}
            if name == "10 steps" and split == "train":
                grid_images, grid_prompts = images[:: args.seeds][:30], sets["train"][:: args.seeds][:30]
            print(f"{name:>22} {split:>8}: {scores['overall']:.1%}", flush=True)
    verdicts = verify(grid_images, grid_prompts)
    captions = [f"{p}\n{v.caption}" for p, v in zip(grid_prompts, verdicts, strict=True)]
    from PIL import Image

    Image.fromarray(captioned_grid(grid_images, captions, cols=6)).save(RESULTS_DIR / f"{args.name}_grid.png")
    training = read_model_index(SHAPES_DIR if args.model == "shapes" else args.model)["training"]
    data = {"results": results, "renders": {s: {k: v for k, v in c.items() if k != "correct"} for s, c in
                                            ceiling.items()},
            "render_feature_distance": floor, "render_diversity": render_diversity,
            "feature_net_final_loss": features.final_loss, "samples_per_prompt": args.seeds,
            "model_training": training, "environment": env_info}
    write_json(RESULTS_DIR / f"{args.name}.json", data)
    base = results["10 steps"]
    lines = [
        "# The shapes model before RL" + ("" if args.model == "shapes" else f": {args.model}")
        + (f", {args.categories} prompts" if args.categories else "") + "\n",
        f"`{env_info['command']}` — {env_info['date']}, {env_info['machine']}, rev {env_info['git_revision']}\n",
        f"Trained by `python -m ddpo_env.models.train_shapes` in {training['seconds'] / 60:.1f} min "
        f"({training['steps']} steps × {training['batch_size']} scenes"
        + (f", going on from {training['init']}" if training.get("init") else "")
        + (f", categories weighted {training['category_weights']}" if training.get("category_weights") else "")
        + "). Binary GenEval-style accuracy from the "
        f"geneval verifier, {args.seeds} samples per prompt; *overall* is the mean of the category accuracies, as "
        "GenEval reports it.\n",
        f"## Training prompts ({len(sets['train']) // args.seeds} prompts × {args.seeds})\n",
        *score_table(results, "train"),
        f"| generator renders (the verifier's ceiling) | {ceiling['train']['overall']:.1%} | "
        + " | ".join(f"{ceiling['train']['categories'][c]['accuracy']:.0%}" if c in ceiling["train"]["categories"]
                     else "–" for c in CATEGORIES) + " |",
        f"\n## Held-out combinations ({len(sets['heldout']) // args.seeds} prompts × {args.seeds})\n",
        *score_table(results, "heldout"),
        "\n## What fails in the position category\n", RELATIONS_NOTE,
        "| setting | split | both found | relation holds | opposite holds |", "|---|---|---|---|---|",
        *[f"| {n} | {split} | {rel['both_found']:.0%} | {rel['relation_given_both']:.0%} | "
          f"{rel['opposite_given_both']:.0%} |" for n, r in results.items() for split in ("train", "heldout")
          if (rel := r[split]["relations"])],
        "\n## Image statistics\n",
        "Fréchet distance in the features of a small CNN trained to count shapes on renders (benchmarks.scene_metrics)"
        ", between the samples and renders of the same prompts; diversity is the mean feature distance between two "
        "samples of one prompt.\n",
        "| setting | feature distance (train / held-out) | diversity | images/s |", "|---|---|---|---|",
        *[f"| {n} | {r['train']['feature_distance']:.2f} / {r['heldout']['feature_distance']:.2f} | "
          f"{r['train']['diversity']:.2f} | {r['train']['images_per_s']:.1f} |" for n, r in results.items()],
        f"| renders vs renders (the floor) | {floor['train']:.2f} / {floor['heldout']:.2f} | {render_diversity:.2f} "
        "| – |",
        f"\n![samples]({args.name}_grid.png)\n",
    ]
    (RESULTS_DIR / f"{args.name}.md").write_text("\n".join(lines), encoding="utf-8")
    if args.name == "shapes_model":
        update_summary({"shapes_model_score": (base["train"]["overall"], "GenEval-style accuracy, training prompts"),
                        "shapes_model_heldout_score": (base["heldout"]["overall"], "held-out combinations")},
                       env_info)
    print("\n".join(lines))
    return data


if __name__ == "__main__":
    main()
