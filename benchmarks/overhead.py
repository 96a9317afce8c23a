"""Overhead of the Gym + stable-baselines3 shape: ``python -m benchmarks.overhead``.

The env + DDPO-IS agent against :class:`benchmarks.bare_ddpo.BareDDPO`, a hand-written loop over the same model
and math, in one process: one warm-up epoch each, then epochs alternating between the two so drift in the machine
hits both alike. Same settings on both sides (the default model, 64 samples per epoch sampled 16 at a time, train
micro-batch 16, full fine-tune, JPEG compressibility, batch-normalised advantages), for each ``steps_per_pass``.

Reports the median epoch time of each, their ratio (target ≤ 1.05) and where the time goes (UNet, decode,
reward, buffer, optimizer, the rest) → ``benchmarks/results/overhead.{json,md}`` and summary.json's
``overhead_ratio`` (at the agent's default ``steps_per_pass``) and ``default_model_samples_per_s``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.logger import Logger

import ddpo_env  # noqa: F401  (registers the env)
from agents import DDPO_IS
from agents.config import AgentConfig
from benchmarks.bare_ddpo import BareConfig, BareDDPO, Timers
from benchmarks.record import RESULTS_DIR, command_line, environment, update_summary, write_json
from ddpo_env.backends import load_backend
from ddpo_env.ddim import DDIMSchedule
from rewards import JpegCompressibility, VectorTerminalReward

SETTINGS = {"samples_per_epoch": 64, "num_envs": 16, "batch_size": 16, "learning_rate": 2e-4, "clip_range": 1e-3}


def build_ours(model: str, device: str, steps_per_pass: int, timers: Timers) -> DDPO_IS:
    env = gym.make_vec("DenoisingDiffusion-v0", num_envs=SETTINGS["num_envs"], model=model, device=device)
    env = VectorTerminalReward(env, JpegCompressibility(upscale=4))
    agent = DDPO_IS(env, samples_per_epoch=SETTINGS["samples_per_epoch"], batch_size=SETTINGS["batch_size"],
                    learning_rate=SETTINGS["learning_rate"], clip_range=SETTINGS["clip_range"], lora_rank=0,
                    per_prompt_stat_tracking=False, steps_per_pass=steps_per_pass)
    agent.set_logger(Logger(folder=None, output_formats=[]))
    backend = env.unwrapped.backend
    timers.wrap(backend, "predict", "unet")
    timers.wrap(backend, "decode", "decode")
    timers.wrap(env, "scorer", "reward")
    timers.wrap(agent.buffer, "add_step", "buffer")
    timers.wrap(agent.buffer, "transitions", "buffer")
    timers.wrap(agent.policy.optimizer, "step", "optimizer")
    timers.wrap_phase(agent, "collect_rollouts", "sampling")
    timers.wrap_phase(agent, "train", "training")
    agent.learn(total_samples=SETTINGS["samples_per_epoch"])  # warm-up epoch (also resets the env)
    return agent


def build_bare(model: str, device: str, steps_per_pass: int, timers: Timers) -> BareDDPO:
    backend = load_backend(model, device)
    backend.unet.requires_grad_(True)
    schedule = DDIMSchedule.from_scheduler_config(backend.scheduler_config, backend.default_num_steps, 1.0)
    reward = SimpleNamespace(score=JpegCompressibility(upscale=4))  # the same scorer as ours, timed the same way
    timers.wrap(reward, "score", "reward")
    cfg = BareConfig(samples_per_epoch=SETTINGS["samples_per_epoch"], sample_batch=SETTINGS["num_envs"],
                     batch_size=SETTINGS["batch_size"], learning_rate=SETTINGS["learning_rate"],
                     clip_range=SETTINGS["clip_range"], steps_per_pass=steps_per_pass)
    bare = BareDDPO(backend, schedule, list(backend.default_prompts), backend.default_guidance_scale, reward.score,
                    cfg)
    timers.wrap(backend, "predict", "unet")
    timers.wrap(backend, "decode", "decode")
    timers.wrap(bare.optimizer, "step", "optimizer")
    bare.epoch()  # warm-up epoch
    return bare


def measure(model: str, device: str, steps_per_pass: int, epochs: int) -> dict[str, Any]:
    ours_timers, bare_timers = Timers(torch.device(device)), Timers(torch.device(device))
    ours = build_ours(model, device, steps_per_pass, ours_timers)
    bare = build_bare(model, device, steps_per_pass, bare_timers)
    ours_timers.reset()
    bare_timers.reset()
    seconds: dict[str, list[float]] = {"ours": [], "bare": []}
    for _ in range(epochs):
        start = time.perf_counter()
        ours.learn(total_samples=SETTINGS["samples_per_epoch"], reset_num_timesteps=False)
        seconds["ours"].append(time.perf_counter() - start)
        start = time.perf_counter()
        bare.epoch(bare_timers)
        seconds["bare"].append(time.perf_counter() - start)
    median = {k: float(np.median(v)) for k, v in seconds.items()}
    return {
        "steps_per_pass": steps_per_pass,
        "epoch_seconds": seconds,
        "median_epoch_seconds": median,
        "samples_per_s": {k: SETTINGS["samples_per_epoch"] / v for k, v in median.items()},
        "ratio": median["ours"] / median["bare"],
        "breakdown_per_epoch": {"ours": _per_epoch(ours_timers, epochs), "bare": _per_epoch(bare_timers, epochs)},
    }


def _per_epoch(timers: Timers, epochs: int) -> dict[str, float]:
    return {k: v / epochs for k, v in timers.breakdown().items()}


def markdown(rows: list[dict[str, Any]], env_info: dict[str, Any], model: str) -> str:
    lines = [
        "# Overhead of the Gym + SB3 shape\n",
        f"`{env_info['command']}` — {env_info['date']}, {env_info['machine']}, rev {env_info['git_revision']}\n",
        f"Env + DDPO-IS agent vs a hand-written DDPO-IS loop (benchmarks/bare_ddpo.py), {model} model, "
        + ", ".join(f"{k} {v}" for k, v in SETTINGS.items()) + "; median epoch, epochs alternating.\n",
        "| steps_per_pass | env + agent (s/epoch) | bare loop (s/epoch) | ratio | env + agent samples/s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["median_epoch_seconds"]
        lines.append(f"| {r['steps_per_pass']} | {m['ours']:.2f} | {m['bare']:.2f} | {r['ratio']:.3f} | "
                     f"{r['samples_per_s']['ours']:.1f} |")
    for r in rows:
        lines += [f"\nWhere an epoch's time goes (s), steps_per_pass={r['steps_per_pass']}:\n",
                  "| part | env + agent | bare loop |", "|---|---|---|"]
        ours, bare = r["breakdown_per_epoch"]["ours"], r["breakdown_per_epoch"]["bare"]
        for key in sorted(set(ours) | set(bare)):
            lines.append(f"| {key} | {ours.get(key, 0.0):.3f} | {bare.get(key, 0.0):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=6, help="timed epochs per loop (after one warm-up)")
    parser.add_argument("--steps-per-pass", default="1,0", help="comma-separated values to measure")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    env_info = environment(command_line("benchmarks.overhead", argv))
    rows = []
    for value in (int(v) for v in args.steps_per_pass.split(",")):
        torch.manual_seed(0)
        rows.append(measure(args.model, args.device, value, args.epochs))
        print(f"steps_per_pass={value}: ratio {rows[-1]['ratio']:.3f}, {rows[-1]['median_epoch_seconds']}",
              flush=True)
    results_dir = Path(args.results_dir)
    write_json(results_dir / "overhead.json", {"settings": SETTINGS, "model": args.model, "rows": rows,
                                               "environment": env_info})
    text = markdown(rows, env_info, args.model)
    (results_dir / "overhead.md").write_text(text, encoding="utf-8")
    default = AgentConfig().steps_per_pass
    headline = next((r for r in rows if r["steps_per_pass"] == default), rows[0])
    best = max(rows, key=lambda r: r["samples_per_s"]["ours"])
    figures = {
        "overhead_ratio": (headline["ratio"], f"env+agent / bare loop, steps_per_pass {headline['steps_per_pass']}"),
        f"{args.model}_model_samples_per_s": (
            best["samples_per_s"]["ours"], f"samples/s, DDPO-IS epoch, steps_per_pass {best['steps_per_pass']}"),
    }
    update_summary(figures, env_info, results_dir)
    print(text)
    return rows


if __name__ == "__main__":
    main()
