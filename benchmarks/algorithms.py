"""RL algorithms on diffusion (the paper's Fig. 4 on the embedded model): ``python -m benchmarks.algorithms``.

DDPO-IS, DDPO-SF, RWR and sparse RWR × rewards {JPEG compressibility, JPEG incompressibility, digit alignment}
× seeds, each run the training job of ``ddpo train`` (:func:`agents.train.train`) with the same settings and the
same sample budget. Reported per run: the training reward of every rollout (reward vs samples) and the fixed
evaluation set (100 prompts × seeds, the same for every run) before and after training.

Writes ``benchmarks/results/algorithms.{json,md,png}`` and summary.json's ``algorithms`` (final evaluation reward
per reward × agent, mean over seeds). Runs are independent processes (``--workers``, ``--threads`` each: two
one-thread workers give ~1.35× the samples/s of one two-thread process on 2 cores); finished runs are kept in the
JSON as they complete, so an interrupted benchmark continues where it stopped (``--resume``).

Presets: ``cpu`` (default; the embedded model, 12 epochs × 64 samples, under an hour on 2 cores) and ``gpu``
(``--model`` a Stable Diffusion folder, 50 DDIM steps, CFG 5, LoRA r4, 100 epochs × 256 samples; needs CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing as mp
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from agents.train import TrainConfig
from benchmarks.record import RESULTS_DIR, command_line, environment, update_summary, write_json

AGENTS = ("ddpo-is", "ddpo-sf", "rwr", "rwr-sparse")
REWARDS = ("jpeg_compressibility", "jpeg_incompressibility", "digit_alignment")
LABELS = {"ddpo-is": "DDPO-IS", "ddpo-sf": "DDPO-SF", "rwr": "RWR", "rwr-sparse": "RWR sparse"}

# The settings every run shares. cpu: full fine-tune of the default model, 8 optimizer steps per epoch; lr 5e-4
# (2e-4, make train's, had not climbed back from the first updates' dip by 1024 samples); 12 epochs so the 36
# default runs fit an hour on 2 cores (16 took 67 min: benchmarks/results/algorithms_quiet_rerun_progress.txt).
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"model": "default", "device": "cpu", "epochs": 12, "samples_per_epoch": 64, "num_envs": 16,
            "batch_size": 8, "learning_rate": 5e-4, "lora_rank": 0, "clip_range": 1e-3},
    "gpu": {"device": "cuda", "dtype": "bfloat16", "epochs": 100, "samples_per_epoch": 256, "num_envs": 32,
            "batch_size": 8, "learning_rate": 3e-4, "lora_rank": 4, "clip_range": 1e-4},
}


def run_key(agent: str, reward: str, seed: int) -> str:
    return f"{agent}|{reward}|{seed}"


def run_one(job: dict[str, Any], threads: int) -> dict[str, Any]:
    """One training run (in a worker process): its reward history, evaluations and time."""
    import torch

    from agents.train import train

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        cfg = TrainConfig(**{**job, "output_dir": out})
        result = train(cfg)
    m = result.metrics
    return {
        "agent": cfg.agent, "reward": cfg.reward, "seed": cfg.seed,
        "train_reward_mean": [h["reward_mean"] for h in m["epochs"]],
        "eval_before": result.before.rewards.tolist(), "eval_after": result.after.rewards.tolist(),
        "train_seconds": m["train_seconds"],
    }


def _run_star(args: tuple[dict[str, Any], int]) -> dict[str, Any]:
    return run_one(*args)


def aggregate(runs: list[dict[str, Any]], agents: list[str], rewards: list[str]) -> dict[str, dict[str, Any]]:
    """Per reward × agent: final evaluation reward (mean, std over seeds), initial one, and the curves."""
    table: dict[str, dict[str, Any]] = {}
    for reward in rewards:
        table[reward] = {}
        for agent in agents:
            mine = [r for r in runs if r["agent"] == agent and r["reward"] == reward]
            if not mine:
                continue
            after = np.array([np.mean(r["eval_after"]) for r in mine])
            before = np.array([np.mean(r["eval_before"]) for r in mine])
            initial_std = np.mean([np.std(r["eval_before"]) for r in mine])
            curves = np.array([r["train_reward_mean"] for r in mine])
            table[reward][agent] = {
                "seeds": len(mine),
                "eval_before": float(before.mean()),
                "eval_after_mean": float(after.mean()),
                "eval_after_std": float(after.std()),
                "gain_in_initial_std": float((after.mean() - before.mean()) / max(initial_std, 1e-12)),
                "curve_mean": curves.mean(0).tolist(),
                "curve_std": curves.std(0).tolist(),
                "minutes_per_run": float(np.mean([r["train_seconds"] for r in mine]) / 60),
            }
    return table


def plot(table: dict[str, dict[str, Any]], samples_per_epoch: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(4.2 * len(table), 3.4), dpi=120, squeeze=False)
    for ax, (reward, per_agent) in zip(axes[0], table.items(), strict=True):
        for agent, row in per_agent.items():
            mean, std = np.array(row["curve_mean"]), np.array(row["curve_std"])
            samples = samples_per_epoch * np.arange(1, len(mean) + 1)
            ax.plot(samples, mean, label=LABELS.get(agent, agent))
            ax.fill_between(samples, mean - std, mean + std, alpha=0.2)
        ax.set_title(reward, fontsize=9)
        ax.set_xlabel("samples")
        ax.set_ylabel("training reward (mean ± std over seeds)", fontsize=7)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(table: dict[str, dict[str, Any]], command: str, env_info: dict[str, Any], settings: dict[str, Any],
             png: str) -> str:
    agents = list(dict.fromkeys(a for per_agent in table.values() for a in per_agent))
    lines = [
        "# RL algorithms on diffusion\n",
        f"`{command}` — {env_info['date']}, {env_info['machine']}, rev {env_info['git_revision']}\n",
        "Final reward on the fixed evaluation set (100 prompts × seeds), mean ± std over seeds; in brackets the "
        "gain over the untrained model in units of its per-sample std. Same settings and sample budget for all: "
        + ", ".join(f"{k}={v}" for k, v in settings.items()) + ".\n",
        "| reward | before | " + " | ".join(LABELS.get(a, a) for a in agents) + " |",
        "|---|---|" + "---|" * len(agents),
    ]
    for reward, per_agent in table.items():
        before = next(iter(per_agent.values()))["eval_before"]
        cells = [f"{per_agent[a]['eval_after_mean']:.3f} ± {per_agent[a]['eval_after_std']:.3f} "
                 f"({per_agent[a]['gain_in_initial_std']:+.2f})" if a in per_agent else "–" for a in agents]
        lines.append(f"| {reward} | {before:.3f} | " + " | ".join(cells) + " |")
    if "wall_minutes" in env_info:
        lines.append(f"\nWall time: {env_info['wall_minutes']} min for the {env_info['runs_timed']} runs of this "
                     "invocation.")
    lines.append(f"\n![reward vs samples]({png})\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--model", default=None, help="override the preset's model (gpu: a Stable Diffusion folder)")
    parser.add_argument("--agents", default=",".join(AGENTS))
    parser.add_argument("--rewards", default=",".join(REWARDS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--samples-per-epoch", type=int, default=None)
    parser.add_argument("--num-steps", type=int, default=0, help="DDIM steps (0: the model's default)")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--resume", action="store_true", help="keep finished runs from the results JSON")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument("--name", default="algorithms", help="results file stem")
    args = parser.parse_args(argv)

    settings = dict(PRESETS[args.preset])
    if args.model:
        settings["model"] = args.model
    if "model" not in settings:
        parser.error("--preset gpu needs --model: a local Stable Diffusion folder (save_pretrained)")
    for key, value in (("epochs", args.epochs), ("samples_per_epoch", args.samples_per_epoch)):
        if value:
            settings[key] = value
    if args.num_steps:
        settings["num_steps"] = args.num_steps
    settings["num_envs"] = min(settings["num_envs"], settings["samples_per_epoch"])
    base = replace(TrainConfig(), **settings, tensorboard=False, image_every=0, save_every=0, keep_last=1)
    agents, rewards = args.agents.split(","), args.rewards.split(",")
    env_info = environment(command_line("benchmarks.algorithms", argv))
    env_info["machine"] += f"; {args.workers} workers × {args.threads} threads"

    results_dir = Path(args.results_dir)
    json_path = results_dir / f"{args.name}.json"
    done: dict[str, dict[str, Any]] = {}
    if args.resume and json_path.exists():
        done = {run_key(r["agent"], r["reward"], r["seed"]): r for r in json.loads(json_path.read_text())["runs"]}
    jobs = [asdict(replace(base, agent=a, reward=r, seed=s)) for r in rewards for s in range(args.seeds)
            for a in agents if run_key(a, r, s) not in done]
    jobs.sort(key=lambda job: job["agent"] == "rwr-sparse")  # the short runs last: less idle time at the end
    print(f"{len(jobs)} runs to do ({len(done)} kept), {args.workers} workers × {args.threads} threads", flush=True)

    def save() -> dict[str, Any]:
        runs = sorted(done.values(), key=lambda r: (r["reward"], r["agent"], r["seed"]))
        table = aggregate(runs, agents, rewards)
        data = {"settings": settings, "table": table, "runs": runs, "environment": env_info}
        write_json(json_path, data)
        return data

    start = time.perf_counter()
    ctx = mp.get_context("spawn")  # fresh interpreters: no torch thread pool or RNG state inherited
    with ctx.Pool(args.workers, maxtasksperchild=1) as pool:
        for run in pool.imap_unordered(_run_star, [(job, args.threads) for job in jobs]):
            done[run_key(run["agent"], run["reward"], run["seed"])] = run
            print(f"[{(time.perf_counter() - start) / 60:5.1f} min] {run['agent']:>10} {run['reward']:<22} "
                  f"seed {run['seed']}: eval {np.mean(run['eval_before']):.3f} → {np.mean(run['eval_after']):.3f}",
                  flush=True)
            data = save()
    env_info["wall_minutes"] = round((time.perf_counter() - start) / 60, 1)  # this invocation's runs
    env_info["runs_timed"] = len(jobs)
    data = save()
    table = data["table"]
    png = results_dir / f"{args.name}.png"
    plot(table, settings["samples_per_epoch"], png,
         f"{settings['model']} model, {args.seeds} seeds, {settings['epochs']} × {settings['samples_per_epoch']} "
         "samples per run")
    text = markdown(table, env_info["command"], env_info, settings, png.name)
    (results_dir / f"{args.name}.md").write_text(text, encoding="utf-8")
    figures = {reward: {agent: row["eval_after_mean"] for agent, row in per_agent.items()}
               for reward, per_agent in table.items()}
    update_summary({args.name: (figures, "final evaluation reward, mean over seeds")}, env_info, results_dir)
    print(text)
    return data


if __name__ == "__main__":
    main()
