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
independent one-thread processes (``--workers``), kept in the JSON as they finish (``--resume``). ``--epochs``
makes it larger; ``--preset gpu`` runs on CUDA with bigger rollouts.

Writes benchmarks/results/compositional.{json,md}, compositional_curves.png, compositional_grid.png (before / after,
captioned with the verifier's verdict) and summary.json's ``compositional_base_score``,
``compositional_trained_score`` and ``compositional_heldout_gain``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.record import RESULTS_DIR, command_line, environment, write_json

AGENTS = ("ddpo-is", "grpo", "ddpo-sf", "rwr")
#: Each benchmark agent as the training job's settings, measured on this task (benchmarks.compositional_sweep;
#: docs/shapes.md). The policy-gradient agents train only the first 4 of the 10 steps: training more of the later
#: steps learns less, although those steps decide much of the reward (benchmarks.reward_decided): their gradients
#: are larger and do not agree between samples (benchmarks.step_gradients). 3e-3 is the best of 1e-3, 3e-3 and 1e-2.
#: RWR regresses onto the model's own samples and degrades it at 1e-3; at 1e-4 it holds the base model's score.
SKIP_LAST_STEPS = 6
AGENT_SETTINGS: dict[str, dict[str, Any]] = {
    "ddpo-is": {"agent": "ddpo-is", "clip_range": 1e-3, "learning_rate": 3e-3, "skip_last_steps": SKIP_LAST_STEPS},
    "grpo": {"agent": "ddpo-is", "clip_range": 1e-3, "learning_rate": 3e-3, "skip_last_steps": SKIP_LAST_STEPS,
             "group_advantages": True, "group_size": 8},
    "ddpo-sf": {"agent": "ddpo-sf", "learning_rate": 3e-3, "skip_last_steps": SKIP_LAST_STEPS},
    "rwr": {"agent": "rwr", "temperature": 1.0, "learning_rate": 1e-4},
}
PRESET_STEPS = 10  # the episode length the skip above was measured for


def agent_settings(agent: str, num_steps: int) -> dict[str, Any]:
    """:data:`AGENT_SETTINGS` of ``agent`` for ``num_steps``-step episodes: the skip scaled from 10 steps, so the same
    early part of the noise schedule is trained (at least one step). The untrained model's job takes DDPO-IS's."""
    settings = dict(AGENT_SETTINGS.get(agent, AGENT_SETTINGS["ddpo-is"]))
    if "skip_last_steps" in settings and num_steps != PRESET_STEPS:
        settings["skip_last_steps"] = min(num_steps - 1, round(SKIP_LAST_STEPS * num_steps / PRESET_STEPS))
    return settings


PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"model": "shapes", "device": "cpu", "epochs": 14, "samples_per_epoch": 64, "num_envs": 16,
            "batch_size": 32, "lora_rank": 4, "num_steps": 10, "steps_per_pass": 3, "attention": "matmul"},
    "gpu": {"model": "shapes", "device": "cuda", "epochs": 60, "samples_per_epoch": 256, "num_envs": 64,
            "batch_size": 128, "lora_rank": 4, "num_steps": 10},
}
REWARD = "geneval"
#: The training rewards the benchmark offers (``--reward``), with what each is, for the report.
REWARDS = {"geneval": "the verifier's partial credit",
           "geneval_strict": "the verifier's partial credit × asked / max(asked, found): extra objects cost reward"}
EVAL_SEED = 10_000  # x_T and noise of the evaluation samples: the same for the base model and every run
BASE = "base"  # the untrained model's evaluation job


def eval_prompts(split: str, eval_seeds: int, limit: int = 0) -> list[str]:
    """The evaluation prompts of a split (its first ``limit`` when > 0), each ``eval_seeds`` times in a row."""
    from ddpo_env.scenes import prompt_set

    prompts = prompt_set(split)[:limit] if limit > 0 else prompt_set(split)
    return [p for p in prompts for _ in range(eval_seeds)]


def evaluate(policy: Any, backend: Any, cfg: Any, eval_seeds: int, limit: int) -> dict[str, Any]:
    """Samples of ``policy`` for the evaluation prompts of both splits: images and per-sample KL to the base model."""
    from agents.job.evaluation import evaluate_policy
    from agents.job.train import build_env

    env = build_env(cfg, num_envs=min(29, cfg.num_envs * 2), model=backend)
    out = {}
    for split in ("train", "heldout"):
        prompts = eval_prompts(split, eval_seeds, limit)
        result = evaluate_policy(policy, env, prompts, seed=EVAL_SEED, kl=policy.lora_rank > 0)
        out[split] = {"images": result.images, "kl": result.kl, "prompts": prompts}
    return out


def run_one(job: dict[str, Any], threads: int, eval_seeds: int, limit: int) -> dict[str, Any]:
    """One training run, or (agent ``base``, or ``benchmark_untrained``) the untrained model, evaluated (in a worker
    process)."""
    import torch

    from agents.job.config import TrainConfig
    from agents.job.train import build_agent, build_env, train

    torch.set_num_threads(threads)
    name = job.pop("benchmark_agent")
    untrained = job.pop("benchmark_untrained", name == BASE)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        cfg = TrainConfig.from_flat({**job, "output_dir": out, "evaluate": False})
        if untrained:
            agent, curve = build_agent(cfg, build_env(cfg)), []
        else:
            result = train(cfg)
            agent, curve = result.agent, [e["reward_mean"] for e in result.metrics["epochs"]]
        train_seconds = time.perf_counter() - start
        samples = evaluate(agent.policy, agent.diffusion_env.backend, cfg, eval_seeds, limit)
    return {"agent": name, "seed": cfg.seed, "learning_rate": cfg.algorithm.learning_rate, "curve": curve,
            "train_seconds": train_seconds, "seconds": time.perf_counter() - start, "samples": samples}


def _run_star(args: tuple[dict[str, Any], int, int, int]) -> dict[str, Any]:
    return run_one(*args)


def measure(run: dict[str, Any], features: Any, reference: dict[str, np.ndarray]) -> dict[str, Any]:
    """A run's record: scores per category, feature distance, diversity and KL per split (its images dropped)."""
    from benchmarks.scene_metrics import category_scores, diversity, frechet_distance

    record = {k: v for k, v in run.items() if k != "samples"}
    for split, s in run["samples"].items():
        f = features.features(s["images"])
        scores = category_scores(s["images"], s["prompts"])
        record[split] = {"overall": scores["overall"], "partial": scores["partial"],
                         "extra_objects": scores["extra_objects"], "categories": scores["categories"],
                         "relations": scores["relations"],
                         "correct": scores["correct"],
                         "feature_distance": frechet_distance(f, reference[split]),
                         "diversity": diversity(f, s["prompts"]),
                         "kl_to_base": None if s["kl"] is None else float(np.mean(s["kl"]))}
    return record


def training_prompts(categories: list[str]) -> list[str]:
    """The training prompts of these GenEval categories (``--categories``)."""
    from ddpo_env.scenes import parse_prompt, prompt_set

    return [p for p in prompt_set("train") if parse_prompt(p).category in categories]


def run_key(agent: str, seed: int) -> str:
    return f"{agent}|{seed}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from agents.job.config import TrainConfig
    from benchmarks.compositional_report import GRID_PROMPTS, aggregate, write_reports
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
    parser.add_argument("--eval-seeds", type=int, default=2, help="evaluation samples per prompt")
    parser.add_argument("--eval-prompts", type=int, default=0,
                        help="evaluate on the first N prompts of each split only (0: all; for smoke tests)")
    parser.add_argument("--feature-steps", type=int, default=600,
                        help="training steps of the feature CNN (benchmarks.scene_metrics; fewer for smoke tests)")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--resume", action="store_true", help="keep finished runs from the results JSON")
    parser.add_argument("--report-only", action="store_true", help="run nothing: rewrite the reports from the JSON")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument("--name", default="compositional", help="results file stem")
    args = parser.parse_args(argv)
    agents = args.agents.split(",")
    unknown = [a for a in agents if a not in AGENT_SETTINGS]
    if unknown:
        parser.error(f"unknown agent(s) {unknown}: use {', '.join(AGENT_SETTINGS)}")
    categories = categories_arg(parser, args.categories)
    settings = dict(PRESETS[args.preset])
    for key in ("epochs", "samples_per_epoch", "num_steps", "model"):
        if getattr(args, key):
            settings[key] = getattr(args, key)
    if args.model not in (None, "shapes") and args.name == "compositional":
        parser.error("--model: give the results a --name of their own (compositional is the shipped model's)")
    for key in ("num_envs", "batch_size"):  # a smaller --samples-per-epoch takes them down with it
        settings[key] = min(settings[key], settings["samples_per_epoch"])
    results_dir = Path(args.results_dir)
    json_path = results_dir / f"{args.name}.json"
    env_info = environment(command_line("benchmarks.compositional", argv))
    env_info["machine"] += f"; {args.workers} workers × {args.threads} threads"

    done: dict[str, dict[str, Any]] = {}
    if (args.resume or args.report_only) and json_path.exists():
        saved = json.loads(json_path.read_text())
        done = {run_key(r["agent"], r["seed"]): r for r in saved["runs"]}
        mine = {"settings": settings, "agent_settings": {a: agent_settings(a, settings["num_steps"]) for a in agents},
                "reward": args.reward, "categories": categories}
        theirs = {"settings": saved["settings"], "agent_settings": {a: saved["agent_settings"].get(a) for a in agents},
                  "reward": saved.get("reward", REWARD), "categories": saved.get("categories", [])}
        if args.resume and json.loads(json.dumps(mine)) != theirs:
            parser.error(f"--resume: {json_path} was run with other settings ({theirs}, now {mine}): give this run "
                         "another --name, or drop --resume to start over")
        if args.report_only:
            env_info = {**saved["environment"], "report_command": env_info["command"]}
    grid = [(BASE, 0)] + [(a, s) for a in agents for s in range(args.seeds)]
    base = {**settings, "reward": args.reward, "tensorboard": False, "image_every": 0, "save_every": 0, "keep_last": 1}
    if categories:
        base["prompts"] = training_prompts(categories)
    jobs = [] if args.report_only else [
        {**TrainConfig.from_flat({**base, **agent_settings(a, settings["num_steps"]), "seed": s}).to_flat(),
         "benchmark_agent": a}
        for a, s in grid if run_key(a, s) not in done]
    print(f"{len(jobs)} runs to do ({len(done)} kept), {args.workers} workers × {args.threads} threads", flush=True)

    features = scene_features(steps=args.feature_steps)  # trained on renders, seeded: the same in every invocation
    sets = {split: eval_prompts(split, args.eval_seeds, args.eval_prompts) for split in ("train", "heldout")}
    reference = {split: features.features(renders(prompts, seed=2)) for split, prompts in sets.items()}
    floor = {split: _floor(features, prompts, reference[split]) for split, prompts in sets.items()}
    columns = [(split, i) for split, i in GRID_PROMPTS if i < len(sets[split]) // args.eval_seeds]
    samples_path = results_dir / f"{args.name}_grid.npz"
    grid_images = dict(np.load(samples_path)) if samples_path.exists() and done else {}

    def save() -> dict[str, Any]:
        runs = sorted(done.values(), key=lambda r: (r["agent"] != BASE, r["agent"], r["seed"]))
        data = {"settings": settings, "agent_settings": {a: agent_settings(a, settings["num_steps"]) for a in agents},
                "reward": args.reward, "categories": categories,
                "eval_seeds": args.eval_seeds, "eval_prompts": {k: len(p) // args.eval_seeds for k, p in sets.items()},
                "grid_columns": columns, "renders": floor, "table": aggregate(runs, agents), "runs": runs,
                "environment": env_info}
        write_json(json_path, data)
        return data

    start = time.perf_counter()
    with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
        tasks = [(job, args.threads, args.eval_seeds, args.eval_prompts) for job in jobs]
        for run in pool.imap_unordered(_run_star, tasks):
            if run["seed"] == 0:  # the grid: seed 0's first sample of the grid's prompts
                grid_images[run["agent"]] = np.stack([run["samples"][split]["images"][i * args.eval_seeds]
                                                      for split, i in columns])
                np.savez_compressed(samples_path, **grid_images)
            record = measure(run, features, reference)
            done[run_key(record["agent"], record["seed"])] = record
            print(f"[{(time.perf_counter() - start) / 60:5.1f} min] {record['agent']:>8} seed {record['seed']}: "
                  f"train {record['train']['overall']:.1%}, held-out {record['heldout']['overall']:.1%}", flush=True)
            save()
    if jobs:
        env_info["wall_minutes"] = round((time.perf_counter() - start) / 60, 1)
        env_info["runs_timed"] = len(jobs)
    data = save()
    text = write_reports(data, grid_images, results_dir, args.name)
    print(text)
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
