"""RL algorithms on diffusion (the paper's Fig. 4 on the embedded model): ``python -m benchmarks.algorithms``.

DDPO-IS, DDPO-SF and RWR (sparse RWR with ``--agents``) × rewards {JPEG compressibility, JPEG incompressibility}
(``--rewards all`` adds the digit margin) × 3 seeds, each the training job of ``ddpo train``
(:func:`agents.job.train.train`) with the same settings and the same number of samples; only the learning rate is each
algorithm's own, chosen by a sweep run first on a separate seed (``--sweep``: JPEG compressibility, rates 1e-3, 3e-3,
1e-2, refined per agent with ``--rates agent=rate``; writes algorithms_sweep.{json,md}, NAME_sweep with ``--name``).
The main run takes per agent the rate with the best gain among those that keep ≥ 80 % of the digits readable
(``algorithms_sweep.MIN_AGREEMENT``).
Reported per run: the training reward of every rollout, the fixed evaluation set (100 prompts × seeds, the same for
every run) before and after training, the optimizer steps taken, the mean clip fraction, the KL to the base model
along the evaluation trajectories, RWR's effective sample size and the share of digits the classifier still reads
as prompted (what a run destroys).

Settings (``cpu`` preset): the embedded model with 10-step episodes (``--num-steps 20``: its own 20), LoRA rank 4
(the paper's method), 64 samples per rollout in micro-batches of 32 (≥ 32 samples per optimizer step) trained on
every step, 3 steps per pass, matmul attention, DDPO-IS clip 1e-3, RWR at τ = 1 (effective sample size ≈ 37 % of a
rollout). Runs are independent one-thread processes (``--workers``); finished runs are kept in the JSON as they
complete, so an interrupted benchmark continues (``--resume``).
``--epochs`` makes it larger; ``--preset gpu`` runs a Stable Diffusion folder (``--model``) with the paper's settings.

Writes ``benchmarks/results/algorithms.{json,md,png}`` and summary.json's ``algorithms`` (final evaluation reward
per reward × agent, mean over seeds) and ``algorithms_optimizer_steps``.
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

from agents.job.train import TrainConfig
from benchmarks.algorithms_sweep import (
    LABELS,
    SWEEP_RATES,
    SWEEP_REWARD,
    SWEEP_SEED,
    best_rates,
    cell,
    parse_rates,
    provenance,
    sweep_markdown,
    sweep_table,
)
from benchmarks.record import RESULTS_DIR, command_line, environment, update_summary, write_json

AGENTS = ("ddpo-is", "ddpo-sf", "rwr")
REWARDS = ("jpeg_compressibility", "jpeg_incompressibility")  # the paper's Fig. 4 pair: the default invocation
ALL_REWARDS = (*REWARDS, "digit_margin")  # --rewards all: with the prompt-dependent digit margin

# The settings every run shares (per-agent learning rates come from the sweep).
PRESETS: dict[str, dict[str, Any]] = {
    # 10-step episodes (Flow-GRPO's "denoising reduction": the embedded model reads 99 % of its digits as prompted at
    # 10 steps as at 20) halve every pass; `--num-steps 20` is the model's own episode, twice as long to run.
    # Micro-passes of 3 steps × 32 samples: on one CPU thread a pass over all 10 steps at once is slower (cache).
    "cpu": {"model": "default", "device": "cpu", "epochs": 16, "samples_per_epoch": 64, "num_envs": 16,
            "batch_size": 32, "lora_rank": 4, "num_steps": 10, "steps_per_pass": 3, "attention": "matmul"},
    "gpu": {"device": "cuda", "dtype": "bfloat16", "epochs": 100, "samples_per_epoch": 256, "num_envs": 32,
            "batch_size": 64, "lora_rank": 4},
}
#: Settings of one algorithm only.
#: DDPO-IS's clip range 1e-3: the ratio of a mean-reduced log-prob over 256 pixels varies ~8× more per update than
#: over Stable Diffusion's 16,384 latent values, so 1e-3 here plays the role of the paper's 1e-4 (with 1e-4 and
#: LoRA, make train's job moved +0.2 std in 12 epochs; configs/make_train.toml).
AGENT_SETTINGS: dict[str, dict[str, Any]] = {"ddpo-is": {"clip_range": 1e-3}, "rwr": {"temperature": 1.0}}
DEFAULT_RATES = {"ddpo-is": 3e-3, "ddpo-sf": 3e-3, "rwr": 3e-3, "rwr-sparse": 3e-3}  # until a sweep says better


def run_key(agent: str, reward: str, seed: int, learning_rate: float) -> str:
    return f"{agent}|{reward}|{seed}|{learning_rate:g}"


def run_one(job: dict[str, Any], threads: int) -> dict[str, Any]:
    """One training run (in a worker process): its reward history, evaluations, diagnostics and time."""
    import torch

    from agents.job.train import train

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        cfg = TrainConfig.from_flat({**job, "output_dir": out})
        result = train(cfg)
    m = result.metrics
    epochs = m["epochs"]

    def mean_of(key: str) -> float | None:
        values = [e[key] for e in epochs if key in e]
        return float(np.mean(values)) if values else None

    return {
        "agent": cfg.agent, "reward": cfg.reward, "seed": cfg.seed, "learning_rate": cfg.algorithm.learning_rate,
        "train_reward_mean": [e["reward_mean"] for e in epochs],
        "eval_before": result.before.rewards.tolist(), "eval_after": result.after.rewards.tolist(),
        "optimizer_steps": int(epochs[-1].get("optimizer_steps", 0)),
        "clip_fraction": mean_of("clip_fraction"), "effective_sample_size": mean_of("effective_sample_size"),
        "kl_to_base": m.get("eval_kl_to_base_after"),
        "agreement_before": m.get("digit_agreement_before"), "agreement_after": m.get("digit_agreement_after"),
        "train_seconds": m["train_seconds"],
    }


def _run_star(args: tuple[dict[str, Any], int]) -> dict[str, Any]:
    return run_one(*args)


def aggregate(runs: list[dict[str, Any]], agents: list[str], rewards: list[str]) -> dict[str, dict[str, Any]]:
    """Per reward × agent: final evaluation reward (mean, std over seeds), the gain in initial stds, the curves and
    the diagnostics (means over seeds)."""
    table: dict[str, dict[str, Any]] = {}
    for reward in rewards:
        for agent in agents:
            mine = [r for r in runs if r["agent"] == agent and r["reward"] == reward]
            if not mine:  # (an unfinished benchmark: not run yet)
                continue
            table.setdefault(reward, {})
            after = np.array([np.mean(r["eval_after"]) for r in mine])
            before = np.array([np.mean(r["eval_before"]) for r in mine])
            initial_std = np.mean([np.std(r["eval_before"]) for r in mine])
            gains = (after - before) / max(initial_std, 1e-12)
            curves = np.array([r["train_reward_mean"] for r in mine])
            table[reward][agent] = {
                "seeds": len(mine),
                "learning_rate": mine[0]["learning_rate"],
                "eval_before": float(before.mean()),
                "eval_after_mean": float(after.mean()),
                "eval_after_std": float(after.std()),
                "gain_in_initial_std": float(gains.mean()),
                "gain_in_initial_std_per_seed": gains.tolist(),
                "curve_mean": curves.mean(0).tolist(),
                "curve_std": curves.std(0).tolist(),
                "minutes_per_run": float(np.mean([r["train_seconds"] for r in mine]) / 60),
                **{key: _mean([r.get(key) for r in mine]) for key in (
                    "optimizer_steps", "clip_fraction", "kl_to_base", "effective_sample_size", "agreement_before",
                    "agreement_after")},
            }
    return table


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


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
             png: str, title: str = "RL algorithms on diffusion") -> str:
    agents = list(dict.fromkeys(a for per_agent in table.values() for a in per_agent))
    lines = [
        f"# {title}\n",
        *provenance(env_info, command),
        "Final reward on the fixed evaluation set (100 prompts × seeds), mean ± std over seeds; in brackets the "
        "gain over the untrained model in units of its per-sample std. Same settings and samples for all: "
        + ", ".join(f"{k}={v}" for k, v in settings.items()) + "; learning rates per algorithm below.\n",
        "| reward | before | " + " | ".join(LABELS.get(a, a) for a in agents) + " |",
        "|---|---|" + "---|" * len(agents),
    ]
    for reward, per_agent in table.items():
        before = next(iter(per_agent.values()))["eval_before"]
        cells = [f"{per_agent[a]['eval_after_mean']:.3f} ± {per_agent[a]['eval_after_std']:.3f} "
                 f"({per_agent[a]['gain_in_initial_std']:+.2f})" if a in per_agent else "–" for a in agents]
        lines.append(f"| {reward} | {before:.3f} | " + " | ".join(cells) + " |")
    lines += ["\nPer run (means over seeds): learning rate, optimizer steps, mean clip fraction (DDPO-IS), KL to the "
              "base model along the evaluation trajectories, effective sample size of a rollout (RWR), digits the "
              "classifier reads as prompted after training (before: "
              + cell(_mean([r.get("agreement_before") for p in table.values() for r in p.values()]), ".0%") + ").\n",
              "| reward | agent | lr | optimizer steps | clip fraction | KL to base | ESS | digits read | "
              "gain per seed (std) | min/run |", "|---|---|---|---|---|---|---|---|---|---|"]
    for reward, per_agent in table.items():
        for agent, r in per_agent.items():
            lines.append(
                f"| {reward} | {LABELS.get(agent, agent)} | {r['learning_rate']:g} "
                f"| {cell(r['optimizer_steps'], '.0f')} | {cell(r['clip_fraction'], '.3f')} "
                f"| {cell(r['kl_to_base'], '.3g')} "
                f"| {cell(r['effective_sample_size'], '.1f')} | {cell(r['agreement_after'], '.0%')} | "
                + ", ".join(f"{g:+.2f}" for g in r["gain_in_initial_std_per_seed"])
                + f" | {r['minutes_per_run']:.1f} |")
    if env_info.get("runs_missing"):
        lines.insert(2, f"**Partial: {env_info['runs_planned'] - env_info['runs_missing']} of "
                        f"{env_info['runs_planned']} runs finished** (`--resume` runs the rest; a cell's seeds are "
                        "counted in its row below).\n")
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
    parser.add_argument("--rewards", default=None,
                        help=f"default: {','.join(REWARDS)}; 'all': {','.join(ALL_REWARDS)}; "
                             f"with --sweep: {SWEEP_REWARD}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--samples-per-epoch", type=int, default=None)
    parser.add_argument("--num-steps", type=int, default=None,
                        help="DDIM steps per episode (default: the preset's; cpu: 10, gpu: the model's 50)")
    parser.add_argument("--lora-rank", type=int, default=None,
                        help="override the preset's LoRA rank 4; 0 fine-tunes the whole UNet (give it its own --name "
                             "and --sweep: its learning rates differ)")
    parser.add_argument("--sweep", action="store_true",
                        help=f"the learning-rate sweep: rates {SWEEP_RATES} on seed {SWEEP_SEED} (--rates to change)")
    parser.add_argument("--rates", default=",".join(str(r) for r in SWEEP_RATES),
                        help="the sweep's rates: 1e-3,3e-3 for every agent, or ddpo-is=5e-3,rwr=2e-3 per agent "
                             "(with --resume, added to the runs already there)")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--resume", action="store_true", help="keep finished runs from the results JSON")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: write the table, plot and summary from the runs in the results JSON (e.g. "
                             "of an unfinished benchmark; --resume later runs the rest)")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument("--name", default="algorithms",
                        help="results file stem: NAME.{json,md,png}; the sweep writes (and the main run reads) "
                             "NAME_sweep.{json,md}")
    args = parser.parse_args(argv)
    name = f"{args.name}_sweep" if args.sweep else args.name

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
    if args.lora_rank is not None:
        settings["lora_rank"] = args.lora_rank
    for key in ("num_envs", "batch_size"):  # a smaller --samples-per-epoch takes them down with it
        settings[key] = min(settings[key], settings["samples_per_epoch"])
    base = {**settings, "tensorboard": False, "image_every": 0, "save_every": 0, "keep_last": 1}
    agents = args.agents.split(",")
    rewards = (args.rewards or (SWEEP_REWARD if args.sweep else ",".join(REWARDS))).replace(
        "all", ",".join(ALL_REWARDS)).split(",")
    results_dir = Path(args.results_dir)
    rates = {**DEFAULT_RATES, **best_rates(results_dir / f"{args.name}_sweep.json")}
    env_info = environment(command_line("benchmarks.algorithms", argv))
    env_info["machine"] += f"; {args.workers} workers × {args.threads} threads"

    json_path = results_dir / f"{name}.json"
    done: dict[str, dict[str, Any]] = {}
    saved_env = None
    if (args.resume or args.report_only) and json_path.exists():
        saved_env = json.loads(json_path.read_text())["environment"]
        done = {run_key(r["agent"], r["reward"], r["seed"], r["learning_rate"]): r
                for r in json.loads(json_path.read_text())["runs"]}
    if args.sweep:
        per_agent = parse_rates(args.rates, agents)
        grid = [(a, r, SWEEP_SEED, lr) for r in rewards for a in agents for lr in per_agent.get(a, [])]
    else:
        grid = [(a, r, s, rates[a]) for r in rewards for s in range(args.seeds) for a in agents]
    jobs = [TrainConfig.from_flat({**base, **AGENT_SETTINGS.get(a, {}), "agent": a, "reward": r, "seed": s,
                                   "learning_rate": lr}).to_flat()
            for a, r, s, lr in grid if run_key(a, r, s, lr) not in done]
    env_info["runs_missing"], env_info["runs_planned"] = len(jobs), len(grid)
    if args.report_only:
        env_info = {**(saved_env or env_info), "runs_missing": len(jobs), "runs_planned": len(grid),
                    "report_command": env_info["command"]}
        jobs = []
    print(f"{len(jobs)} runs to do ({len(done)} kept), {args.workers} workers × {args.threads} threads", flush=True)

    def save() -> dict[str, Any]:
        runs = sorted(done.values(), key=lambda r: (r["reward"], r["agent"], r["seed"], r["learning_rate"]))
        table = aggregate(runs, agents, rewards) if not args.sweep else sweep_table(runs)
        data = {"settings": settings, "agent_settings": AGENT_SETTINGS, "table": table, "runs": runs,
                "environment": env_info}
        write_json(json_path, data)
        return data

    start = time.perf_counter()
    ctx = mp.get_context("spawn")  # fresh interpreters: no torch thread pool or RNG state inherited
    with ctx.Pool(args.workers, maxtasksperchild=1) as pool:
        for run in pool.imap_unordered(_run_star, [(job, args.threads) for job in jobs]):
            done[run_key(run["agent"], run["reward"], run["seed"], run["learning_rate"])] = run
            print(f"[{(time.perf_counter() - start) / 60:5.1f} min] {run['agent']:>10} {run['reward']:<22} "
                  f"seed {run['seed']} lr {run['learning_rate']:g}: eval {np.mean(run['eval_before']):.3f} → "
                  f"{np.mean(run['eval_after']):.3f}", flush=True)
            data = save()
    if jobs:
        env_info["wall_minutes"] = round((time.perf_counter() - start) / 60, 1)  # this invocation's runs
        env_info["runs_timed"] = len(jobs)
        env_info["runs_missing"] = 0
    data = save()
    if args.sweep:
        text = sweep_markdown(data["table"], env_info, settings, best_rates(json_path))
        (results_dir / f"{name}.md").write_text(text, encoding="utf-8")
        print(text)
        return data
    table = data["table"]
    png = results_dir / f"{name}.png"
    plot(table, settings["samples_per_epoch"], png,
         f"{settings['model']} model, {settings.get('num_steps', 'default')} steps, "
         f"LoRA r{settings.get('lora_rank', 0)}, {args.seeds} seeds, "
         f"{settings['epochs']} × {settings['samples_per_epoch']} samples per run")
    text = markdown(table, env_info["command"], env_info, settings, png.name)
    (results_dir / f"{name}.md").write_text(text, encoding="utf-8")
    figures = {reward: {agent: row["eval_after_mean"] for agent, row in per_agent.items()}
               for reward, per_agent in table.items()}
    steps = {agent: row["optimizer_steps"] for per_agent in table.values() for agent, row in per_agent.items()}
    update_summary({name: (figures, "final evaluation reward, mean over seeds"),
                    f"{name}_optimizer_steps": (steps, "optimizer steps per run (equal samples per run)")},
                   {**env_info, "command": env_info.get("report_command", env_info["command"])}, results_dir)
    print(text)
    return data




if __name__ == "__main__":
    main()
