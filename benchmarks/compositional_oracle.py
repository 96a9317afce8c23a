"""What perfect data teaches the policy at the RL budget: ``python -m benchmarks.compositional_oracle``.

The compositional benchmark's agents learn from their own samples and a verifier. This benchmark gives the same
policy (the shapes model with the same LoRA adapter, or the whole UNet) the best data there is instead: the
generator's renders of the 116 training prompts, each with a fresh layout (never a held-out combination), and fits it
with the denoising loss RWR uses (‖ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t, c) − ε‖², t uniform, every sample weighted alike;
the model itself was trained with min-SNR-5 weights on top), AdamW as the agents use it (weight decay 1e-4,
gradient norm clipped to 1). Each run takes 32 renders per update, as many as an RL update sees, and is scored
after 0, 28 (the RL runs' updates and samples: 14 epochs × 64 samples in micro-batches of 32), 84 and 280 updates
(10× the samples) exactly as that benchmark scores its runs (same evaluation prompts, seeds and env), so the untrained
row matches its base model.

It is the yardstick for the RL runs: what supervision on the right answers teaches the same policy from as many
samples and updates, and from more. ``--variants 3,4 --checkpoints 0,280,840,1400`` fits longer at lower rates.
Runs are one-thread processes run by :mod:`benchmarks.harness` (``--workers``, ``--resume``; each job's log in
``runs/benchmarks/NAME/JOB/job.log``).

Writes benchmarks/results/compositional_oracle.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.compositional_task import (
    PRESETS,
    add_eval_arguments,
    eval_signature,
    evaluate,
    saved_eval_signature,
    split_scores,
)
from benchmarks.harness import Grid, GridRun, Job, SettingsSource, add_arguments, job_id
from benchmarks.record import command_line
from benchmarks.reports import provenance, wall_time, write_report

#: (name, LoRA rank (0: the whole UNet), learning rate)
VARIANTS: tuple[tuple[str, int, float], ...] = (
    ("LoRA rank 4, lr 1e-3", 4, 1e-3),
    ("LoRA rank 4, lr 3e-3", 4, 3e-3),
    ("whole UNet, lr 1e-4", 0, 1e-4),
    ("LoRA rank 4, lr 3e-4", 4, 3e-4),
    ("LoRA rank 4, lr 1e-4", 4, 1e-4),
)
DEFAULT_VARIANTS = (0, 1, 2)  # the lower rates (3, 4) for long runs: --variants 3,4 --checkpoints 0,280,840,1400
BATCH = 32
RL_UPDATES = PRESETS["cpu"]["epochs"] * PRESETS["cpu"]["samples_per_epoch"] // PRESETS["cpu"]["batch_size"]
CHECKPOINTS = (0, RL_UPDATES, 3 * RL_UPDATES, 10 * RL_UPDATES)
SETTINGS_FROM = SettingsSource(
    "none", "fixed in advance: the RL runs' policy, batch and budget, at learning rates around theirs; every variant "
    "and checkpoint is reported (a best row read off the table is chosen on the evaluation set it reports).")


def render_batch(prompts: list[str], rng: np.random.Generator, size: int) -> tuple[list[str], list[Any]]:
    """``size`` of ``prompts`` drawn uniformly, each rendered with a fresh layout: (prompts, scenes). Colours and
    shapes a prompt leaves free are drawn away from the held-out pairs, as in the model's training."""
    from ddpo_env.scenes import make_scene, parse_prompt

    chosen = [prompts[i] for i in rng.integers(len(prompts), size=size)]
    return chosen, [make_scene(parse_prompt(p), rng) for p in chosen]


def fit(variant: int, seed: int, checkpoints: tuple[int, ...], eval_seeds: int, limit: int) -> dict[str, Any]:
    """One fine-tuning run on renders, scored at each checkpoint."""
    import torch

    from agents.job.config import TrainConfig
    from agents.job.train import build_agent, build_env
    from agents.rwr import denoising_mse
    from ddpo_env.scenes import prompt_set

    name, rank, lr = VARIANTS[variant]
    # the job's policy, env and optimizer settings only: nothing is written to its output_dir
    cfg = TrainConfig.from_flat({**PRESETS["cpu"], "agent": "rwr", "lora_rank": rank, "learning_rate": lr,
                                 "seed": seed, "reward": "geneval", "evaluate": False})
    agent = build_agent(cfg, build_env(cfg))
    policy, diffusion = agent.policy, agent.diffusion_env
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.algorithm.adam_weight_decay)
    rng, noise = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    prompts, scores, losses, start = prompt_set("train"), [], [], time.perf_counter()
    for update in range(max(checkpoints) + 1):
        if update in checkpoints:
            samples = evaluate(policy, diffusion.backend, cfg, eval_seeds, limit)
            scores.append({"updates": update, "renders": update * BATCH,
                           **{split: split_scores(s["images"], s["prompts"]) for split, s in samples.items()}})
        if update == max(checkpoints):
            break
        chosen, scenes = render_batch(prompts, rng, BATCH)
        x0 = torch.from_numpy(np.stack([scene.image for scene in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
        policy.set_training_mode(True)
        loss = denoising_mse(diffusion, x0, diffusion.backend.encode_prompts(chosen), noise).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.algorithm.max_grad_norm)
        optimizer.step()
        losses.append(float(loss.detach()))
    return {"variant": name, "lora_rank": rank, "learning_rate": lr, "seed": seed, "scores": scores,
            "loss_first_last": [float(np.mean(losses[:RL_UPDATES])), float(np.mean(losses[-RL_UPDATES:]))]
            if losses else None,
            "seconds": time.perf_counter() - start}


def fit_job(args: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """:func:`fit` as a harness job (in a worker process)."""
    return fit(**args)


def table(runs: list[dict[str, Any]], checkpoints: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per variant and checkpoint: the mean over seeds of the training and held-out scores and extra objects."""
    rows = []
    for name, _, _ in VARIANTS:
        mine = [r for r in runs if r["variant"] == name]
        for i, updates in enumerate(checkpoints):
            if not mine or i >= len(mine[0]["scores"]):
                continue
            at = [r["scores"][i] for r in mine]
            rows.append({"variant": name, "updates": updates, "renders": updates * BATCH, "seeds": len(at),
                         **{f"{split}_{key}": float(np.mean([a[split][key] for a in at]))
                            for split in ("train", "heldout") for key in ("overall", "extra_objects")},
                         "train_each": [a["train"]["overall"] for a in at]})
    return rows


def markdown(data: dict[str, Any]) -> str:
    lines = [
        "# Supervised fine-tuning on the generator's renders, at the RL budget and beyond",
        "",
        *provenance(data["environment"], data["settings_from"]),
        f"The shapes model's policy fit "
        f"by RWR's denoising loss (uniform weights) on renders of the {data['train_prompts']} training prompts, "
        f"{BATCH} per update; "
        f"{RL_UPDATES} updates = the compositional benchmark's RL budget ({RL_UPDATES * BATCH} samples). Scored as "
        f"that benchmark scores its runs (GenEval-style binary accuracy, mean over categories; "
        f"{data['eval_seeds']} samples per prompt, the same seeds), mean over {data['seeds']} seeds.",
        "",
        "| policy, optimiser | updates | renders seen | training prompts | each seed | held-out | extra objects |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in data["table"]:
        each = " / ".join(f"{v:.1%}" for v in row["train_each"])
        lines.append(f"| {row['variant']} | {row['updates']} | {row['renders']} | {row['train_overall']:.1%} | "
                     f"{each} | {row['heldout_overall']:.1%} | {row['train_extra_objects']:.2f} |")
    lines += wall_time(data["environment"])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from ddpo_env.scenes import prompt_set

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(str(i) for i in DEFAULT_VARIANTS),
                        help="indices into VARIANTS: " + "; ".join(f"{i} {v[0]}" for i, v in enumerate(VARIANTS)))
    parser.add_argument("--checkpoints", default=",".join(str(c) for c in CHECKPOINTS),
                        help="updates after which each run is scored")
    add_eval_arguments(parser)
    add_arguments(parser, "compositional_oracle")
    args = parser.parse_args(argv)
    variants = [int(v) for v in args.variants.split(",")]
    if any(v not in range(len(VARIANTS)) for v in variants):
        parser.error(f"--variants: indices in 0..{len(VARIANTS) - 1}, got {args.variants}")
    try:
        checkpoints = tuple(sorted({int(c) for c in args.checkpoints.split(",")}))
    except ValueError:
        parser.error(f"--checkpoints: comma-separated update counts, e.g. 0,28,280, got {args.checkpoints!r}")
    if checkpoints[0] < 0:
        parser.error(f"--checkpoints must be >= 0, got {args.checkpoints}")
    jobs = [Job(job_id(VARIANTS[v][0], s), {"variant": v, "seed": s, "checkpoints": checkpoints,
                                            "eval_seeds": args.eval_seeds, "limit": args.eval_prompts})
            for v in variants for s in range(args.seeds)]
    evaluation = eval_signature(args.eval_seeds, args.eval_prompts)
    runner = GridRun.from_args(
        Grid(args.name, fit_job, jobs, ("variant", "seed"), SETTINGS_FROM,
             {"batch": BATCH, "checkpoints": list(checkpoints), **evaluation},
             lambda saved: {"batch": saved.get("batch"), "checkpoints": saved.get("checkpoints"),
                            **saved_eval_signature(saved)}),
        args, parser, command_line("benchmarks.compositional_oracle", argv))

    def document(records: list[dict[str, Any]]) -> dict[str, Any]:
        runs = sorted(records, key=lambda r: (r["variant"], r["seed"]))
        return {"batch": BATCH, "rl_updates": RL_UPDATES, "checkpoints": list(checkpoints), "seeds": args.seeds,
                **evaluation, "train_prompts": len(prompt_set("train")), "table": table(runs, checkpoints),
                "runs": runs}

    def describe(run: dict[str, Any]) -> str:
        trail = ", ".join(f"{s['updates']}: {s['train']['overall']:.1%}" for s in run["scores"])
        return f"{run['variant']} seed {run['seed']}: {trail}"

    data = runner.run(document, describe=describe)
    write_report(Path(args.results_dir), args.name, markdown(data))
    return data


if __name__ == "__main__":
    main()
