"""RL on a compositional task with a verifiable reward: ``python -m benchmarks.compositional``.

The shapes model (GenEval-style score well short of perfect) fine-tuned with the ``geneval`` reward (the verifier's
partial credit) by DDPO-IS, GRPO-style groups (DDPO-IS's clipped objective with advantages normalised within groups
of 8 samples of one prompt, as Flow-GRPO), DDPO-SF and RWR, 3 seeds each, equal samples, on the 116 fixed training
prompts. Each run and the untrained model are then evaluated on the same prompts and seeds:

* the verifier's binary score per GenEval category on the training prompts and on the 72 held-out prompts, whose
  colour–shape pairs and counts neither the model nor RL ever saw (the held-out gain: after − before);
* over-optimisation: the feature distance of the samples to the generator's renders of the same prompts, their
  diversity (benchmarks.scene_metrics), the objects drawn beyond those the prompt asks for (which the verdict
  accepts outside counting, as GenEval's does) and the KL to the base model along the evaluation trajectories.

``--reward geneval_strict`` trains on the partial credit that charges those extra objects instead; ``--categories``
trains on the training prompts of some categories only (e.g. ``position``), still evaluated on all.

Settings (``cpu`` preset): the embedded algorithms benchmark's (10 DDIM steps, η = 1, LoRA rank 4, 64 samples per
epoch in micro-batches of 32, 3 steps per pass, matmul attention), 14 epochs, and per agent :data:`AGENT_SETTINGS`
(measured on this task: the policy-gradient agents train the first 4 of the 10 steps, at 3e-3). Runs are
independent one-thread processes run by :mod:`benchmarks.harness` (``--workers``; each job's log in
``runs/benchmarks/NAME/JOB/job.log``), kept in the JSON as they finish (``--resume``). ``--epochs`` makes it larger;
``--preset gpu`` runs on CUDA with bigger rollouts. The settings were chosen on the evaluation set this benchmark
reports (:data:`benchmarks.compositional_task.SETTINGS_FROM`; the JSON's ``settings_from``).

Writes benchmarks/results/compositional.{json,md}, compositional_curves.png, compositional_grid.png (before / after,
captioned with the verifier's verdict) and summary.json's ``compositional_base_score``,
``compositional_trained_score`` and ``compositional_heldout_gain``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.compositional_report import GRID_PROMPTS, aggregate, write_reports
from benchmarks.compositional_task import (
    AGENT_SETTINGS,
    BASE,
    PRESETS,
    QUIET,
    REWARD,
    REWARDS,
    SETTINGS_FROM,
    SPLITS,
    add_eval_arguments,
    agent_settings,
    eval_prompts,
    eval_signature,
    sample_args,
    sample_job,
    saved_eval_signature,
    split_scores,
    training_prompts,
)
from benchmarks.harness import Grid, GridRun, Job, SettingsSource, add_arguments, job_id, settings_with
from benchmarks.record import command_line
from benchmarks.samples_to_score import efficiency_ratio

AGENTS = ("ddpo-is", "grpo", "ddpo-sf", "rwr")
#: The validation sweep of the shapes agents (benchmarks.agents_sweep, reward geneval_strict).
VALIDATION_SWEEP = "benchmarks/results/agents_sweep.json"


def measure(run: dict[str, Any], features: Any, reference: dict[str, np.ndarray]) -> dict[str, Any]:
    """A run's record: scores per category, feature distance, diversity and KL per split (its images dropped)."""
    from benchmarks.scene_metrics import diversity, frechet_distance

    record = {k: v for k, v in run.items() if k != "samples"}
    for split, s in run["samples"].items():
        f = features.features(s["images"])
        record[split] = {**split_scores(s["images"], s["prompts"], s["kl"], full_categories=True),
                         "feature_distance": frechet_distance(f, reference[split]),
                         "diversity": diversity(f, s["prompts"])}
    return record


def chosen_settings(path: str, agents: list[str], steps: int, reward: str = REWARD
                    ) -> tuple[dict[str, dict[str, Any]], SettingsSource]:
    """Each agent's settings with the learning rate a validation sweep chose (``benchmarks.agents_sweep``'s JSON at
    ``path``), and where they came from; an agent the sweep has no rate for, or a sweep trained on another reward
    than ``reward``, is refused."""
    saved = json.loads(Path(path).read_text(encoding="utf-8"))
    if saved.get("reward", REWARD) != reward:
        raise ValueError(f"--settings-from {path} chose its rates training on {saved.get('reward', REWARD)!r}, not "
                         f"{reward!r}: give --reward {saved.get('reward', REWARD)}, or sweep this reward first "
                         f"(python -m benchmarks.agents_sweep --reward {reward} --name agents_sweep_{reward})")
    missing = [a for a in agents if saved.get("chosen", {}).get(a) is None]
    if missing:
        raise ValueError(f"--settings-from {path} chose no learning rate for {missing}: sweep them first "
                         f"(python -m benchmarks.agents_sweep --agents {','.join(missing)} --resume)")
    env = saved["environment"]
    how = (f"benchmarks.agents_sweep ({Path(path).name}, rev {env['git_revision']}, {env['date']}): each agent's "
           f"learning rate is the one of its sweep with the best mean accuracy on the validation set ("
           f"{saved['eval_set']}: the training prompts at other seeds, and unseen prompts), seeds "
           f"{sorted({r['seed'] for r in saved['runs']})}, reward {saved['reward']}")
    return ({a: {**agent_settings(a, steps), "learning_rate": saved["chosen"][a]} for a in agents},
            SettingsSource("validation", how))


def make_grid(args: argparse.Namespace, settings: dict[str, Any], agents: list[str], categories: list[str]) -> Grid:
    """The base model's evaluation and every agent × seed, each a training job of ``settings``."""
    from agents.job.config import TrainConfig

    steps = settings["num_steps"]
    per_agent = {a: agent_settings(a, steps) for a in [BASE, *agents]}
    source = SETTINGS_FROM
    if args.settings_from:
        chosen, source = chosen_settings(args.settings_from, agents, steps, args.reward)
        per_agent.update(chosen)
    else:
        print(f"benchmarks.compositional: the built-in settings, chosen on the prompts and seeds this benchmark "
              f"reports (split {source.split!r}, recorded in the results); for settings chosen on a validation set "
              f"give --settings-from {VALIDATION_SWEEP} (python -m benchmarks.agents_sweep)", file=sys.stderr)

    base = {**settings, "reward": args.reward, **QUIET}
    if categories:
        base["prompts"] = training_prompts(categories)
    jobs = [Job(job_id(a, s), sample_args(a, TrainConfig.from_flat({**base, **per_agent[a], "seed": s})
                                          .to_flat(), args.eval_seeds, args.eval_prompts, untrained=a == BASE,
                                          curve_every=args.curve_every, word_use=args.word_use and s == 0))
            for a, s in [(BASE, 0)] + [(a, s) for a in agents for s in range(args.seeds)]]
    signature = {"settings": settings, "agent_settings": {a: per_agent[a] for a in agents},
                 "reward": args.reward, "categories": categories, "curve_every": args.curve_every,
                 **eval_signature(args.eval_seeds, args.eval_prompts)}

    def saved_signature(saved: dict[str, Any]) -> dict[str, Any]:  # files from before a field existed: its default
        # an agent without saved runs may join (its settings are this invocation's); one with runs must match
        ran = {r["agent"] for r in saved["runs"]}
        return {"settings": saved["settings"],
                "agent_settings": {a: saved["agent_settings"].get(a) if a in ran else signature["agent_settings"][a]
                                   for a in agents},
                "reward": saved.get("reward", REWARD), "categories": saved.get("categories", []),
                "curve_every": saved.get("curve_every", 0), **saved_eval_signature(saved)}

    return Grid(args.name, sample_job, jobs, ("agent", "seed"), source, signature, saved_signature)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from benchmarks.scene_metrics import categories_arg, renders, scene_features

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--agents", default=",".join(AGENTS), help=f"from {', '.join(AGENT_SETTINGS)}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--samples-per-epoch", type=int, default=None, help="override the preset's")
    parser.add_argument("--num-steps", type=int, default=None, help="override the preset's DDIM steps")
    parser.add_argument("--model", default=None, help="override the preset's model: a folder trained by "
                        "python -m ddpo_env.models.train_shapes --out DIR")
    parser.add_argument("--reward", choices=REWARDS, default=REWARD,
                        help="training reward: the partial credit, or the one that charges extra objects")
    parser.add_argument("--categories", default="",
                        help="train on the training prompts of these GenEval categories only, comma-separated "
                        "(default: all); the evaluation still covers every category")
    add_eval_arguments(parser)
    parser.add_argument("--curve-every", type=int, default=0,
                        help="score each run on one sample per training prompt every N epochs and after the last "
                        "(the evaluation curves and samples-to-score; 0: off)")
    parser.add_argument("--word-use", action="store_true",
                        help="also check how much the base model and each agent's seed-0 policy use the relation "
                        "word left and the colour word red (benchmarks.compositional_task.policy_word_use)")
    parser.add_argument("--settings-from", default="", metavar="JSON",
                        help="take each agent's learning rate from a validation sweep (benchmarks.agents_sweep's "
                        "JSON, e.g. benchmarks/results/agents_sweep.json) instead of the built-in settings")
    parser.add_argument("--feature-steps", type=int, default=600,
                        help="training steps of the feature CNN (benchmarks.scene_metrics; fewer for smoke tests)")
    add_arguments(parser, "compositional")
    args = parser.parse_args(argv)
    agents = args.agents.split(",")
    unknown = [a for a in agents if a not in AGENT_SETTINGS]
    if unknown:
        parser.error(f"unknown agent(s) {unknown}: use {', '.join(AGENT_SETTINGS)}")
    categories = categories_arg(parser, args.categories)
    settings = settings_with(PRESETS[args.preset], epochs=args.epochs, samples_per_epoch=args.samples_per_epoch,
                             num_steps=args.num_steps, model=args.model)
    if args.model not in (None, "shapes") and args.name == "compositional":
        parser.error("--model: give the results a --name of their own (compositional is the shipped model's)")
    try:
        grid = make_grid(args, settings, agents, categories)
    except (OSError, ValueError) as e:
        parser.error(str(e))
    runner = GridRun.from_args(grid, args, parser, command_line("benchmarks.compositional", argv))

    features = scene_features(steps=args.feature_steps)  # trained on renders, seeded: the same in every invocation
    sets = {split: eval_prompts(split, args.eval_seeds, args.eval_prompts) for split in SPLITS}
    reference = {split: features.features(renders(prompts, seed=2)) for split, prompts in sets.items()}
    floor = {split: _floor(features, prompts, reference[split]) for split, prompts in sets.items()}
    columns = [(split, i) for split, i in GRID_PROMPTS if i < len(sets[split]) // args.eval_seeds]
    results_dir = Path(args.results_dir)
    samples_path = results_dir / f"{args.name}_grid.npz"
    grid_images = dict(np.load(samples_path)) if samples_path.exists() and runner.finished else {}

    def document(records: list[dict[str, Any]]) -> dict[str, Any]:
        runs = sorted(records, key=lambda r: (r["agent"] != BASE, r["agent"], r["seed"]))
        table = aggregate(runs, agents)
        curves = {a: [r["eval_curve"] for r in runs if r["agent"] == a] for a in agents}
        efficiency = ({a: efficiency_ratio(curves["grpo"], curves[a]) for a in agents if a != "grpo" and all(curves[a])}
                      if curves.get("grpo") and all(curves["grpo"]) else {})
        return {"settings": settings, "agent_settings": runner.grid.signature["agent_settings"],
                "reward": args.reward, "categories": categories, "curve_every": args.curve_every,
                "efficiency": efficiency,
                "eval_seeds": args.eval_seeds, "eval_prompts": {k: len(p) // args.eval_seeds for k, p in sets.items()},
                "grid_columns": columns, "renders": floor, "table": table, "runs": runs}

    def collect(job: Job, run: dict[str, Any]) -> dict[str, Any]:
        if run["seed"] == 0:  # the grid: seed 0's first sample of the grid's prompts
            grid_images[run["agent"]] = np.stack([run["samples"][split]["images"][i * args.eval_seeds]
                                                  for split, i in columns])
            np.savez_compressed(samples_path, **grid_images)
        return measure(run, features, reference)

    data = runner.run(document, collect, lambda r: f"{r['agent']:>8} seed {r['seed']}: train "
                      f"{r['train']['overall']:.1%}, held-out {r['heldout']['overall']:.1%}")
    write_reports(data, grid_images, results_dir, args.name)
    return data


def _floor(features: Any, prompts: list[str], reference: np.ndarray) -> dict[str, float]:
    """A second, independent set of renders: its feature distance to the reference (what no model can beat), its
    diversity (the generator's own) and the extra objects the verifier finds in it."""
    from benchmarks.scene_metrics import category_scores, diversity, frechet_distance, renders

    images = renders(prompts, seed=3)
    f = features.features(images)
    return {"feature_distance": frechet_distance(f, reference), "diversity": diversity(f, prompts),
            "extra_objects": category_scores(images, prompts)["extra_objects"]}


if __name__ == "__main__":
    main()
