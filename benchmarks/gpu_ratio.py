"""DDPO-IS's first-update probability ratios per precision and sampling compile: ``python -m benchmarks.gpu_ratio``.

Before its first optimizer step the policy has not moved, so every ratio π_θ/π_old of that step should be exactly 1:
the training pass recomputes log π_θ of each stored transition, and log π_old was recorded while sampling. Reduced
precision or a compiled sampling network (``compile_sampling``: sampling runs ``torch.compile``'d, training eager)
can make the two passes disagree; with the clip range of 1e-4 a log ratio of that size already clips. The agents
recompute log π_old eagerly after a compiled rollout (``recompute_log_probs``), so the compiled rows check that fix
on the device; the eager rows (sampling batch ≠ training batch) show whether kernels picked per batch shape move the
ratio there, i.e. whether a GPU run needs ``recompute_log_probs=True`` without compile. For dtype in
float32 / bfloat16 / float16 × compile_sampling off / on, on Stable Diffusion 1.5's architecture with random weights
(:func:`benchmarks.gpu.random_sd_pipeline`, built once and deep-copied per combination) at 512 px: one rollout
(``agent.collect_rollout``), each denoising step's largest |log ratio| as the first update computes it
(:func:`agents.step_stats.first_update_log_ratios`), then one ``agent.train()``: did the LoRA weights move, are they
finite (or was the update skipped for a non-finite gradient).

The eager rows measure the raw disagreement (``recompute_log_probs=False``; the agents' default recomputes on CUDA
because of it). Order: the eager rows (bfloat16, float16, float32), then the compiled ones (``--modes``; compiling SD
1.5's UNet took over 100 s for the first dtype on an H200). With ``--budget-s`` a combination is skipped (recorded
so) when the seconds spent plus what the last one of its kind (compiled or eager) took would pass the budget. A
failing combination is recorded with its error and the next one runs; the exit status is then 1. ``--out`` (default
benchmarks/results/gpu_ratio.json) is rewritten before and after each combination, so a timeout keeps what finished
and shows the one it stopped ("running"). ``--tiny``:
the tiny architecture, for a CPU dry run.

``--compile-options backend=eager``: the agent's ``compile_sampling`` takes no options, so with options the agent is
built with ``compile_sampling=False``, ``recompute_log_probs=True``, and the backend's ``compile_inference(**options)``
(what ``compile_sampling`` calls, without options) is called right after.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from stable_baselines3.common.logger import Logger

import ddpo_env  # noqa: F401  (registers the env)
from agents import DDPO_IS
from agents.step_stats import first_update_log_ratios
from benchmarks.gpu import ARCHITECTURES, free_memory, random_sd_pipeline
from benchmarks.record import RESULTS_DIR, command_line, environment, write_json
from rewards import JpegCompressibility, VectorTerminalReward

DTYPES = ("bfloat16", "float16", "float32")
MODES = ("eager", "compiled")


def parse_options(text: str) -> dict[str, Any]:
    """'backend=eager,fullgraph=true' → {"backend": "eager", "fullgraph": True} (values as JSON, else strings)."""
    options = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value.strip()
    return options


def combinations(dtypes: list[str], modes: tuple[str, ...] = MODES) -> list[tuple[str, bool]]:
    """(dtype, compiled): eager rows first (quick, and what a default GPU run does), then compiled ones; each in the
    order of :data:`DTYPES` (the most informative first)."""
    return [(dtype, mode == "compiled") for mode in MODES if mode in modes
            for dtype in sorted(dtypes, key=DTYPES.index)]


def run_combination(base: Any, dtype: str, compiled: bool, args: argparse.Namespace,
                    options: dict[str, Any]) -> dict[str, Any]:
    """One rollout, its first-update log ratios per step, one update; the row's numbers."""
    torch.manual_seed(0)
    env = gym.make_vec("DenoisingDiffusion-v0", num_envs=args.sample_batch, model=copy.deepcopy(base),
                       device=args.device, dtype=dtype, num_steps=args.num_steps, guidance_scale=5.0)
    env = VectorTerminalReward(env, JpegCompressibility())
    agent = DDPO_IS(env, samples_per_epoch=args.sample_batch, batch_size=args.batch_size, lora_rank=4,
                    compile_sampling=compiled and not options, recompute_log_probs=compiled,
                    per_prompt_stat_tracking=False, learning_rate=3e-4)
    if compiled and options:
        env.unwrapped.backend.compile_inference(**options)
    agent.set_logger(Logger(folder=None, output_formats=[]))
    agent.collect_rollout()
    ratios = first_update_log_ratios(agent)
    before = [p.detach().clone() for p in agent.policy.trainable_parameters()]
    agent.train()
    after = [p.detach() for p in agent.policy.trainable_parameters()]
    change = max(float((a.float() - b.float()).abs().max()) for a, b in zip(after, before, strict=True))
    return {"max_abs_log_ratio": {str(k): v for k, v in ratios.items()},
            "zero_fraction": sum(v == 0.0 for v in ratios.values()) / max(len(ratios), 1),
            "weights_changed": change > 0, "max_abs_weight_change": change,
            "skipped_updates": agent.num_skipped_updates,  # float16: the loss scaler's first steps may overflow
            "finite": all(bool(torch.isfinite(p).all()) for p in after)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the tiny architecture (CPU dry runs)")
    parser.add_argument("--num-steps", type=int, default=10)
    parser.add_argument("--sample-batch", type=int, default=4, help="envs = samples per rollout")
    parser.add_argument("--batch-size", type=int, default=4, help="training micro-batch")
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--modes", default=",".join(MODES),
                        help="eager, compiled or both: sampling's network (compiling SD 1.5 takes minutes per dtype)")
    parser.add_argument("--compile-options", default="", help="torch.compile options, e.g. backend=eager")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="skip combinations that would end after this many seconds (by the last of their kind)")
    parser.add_argument("--out", default=str(RESULTS_DIR / "gpu_ratio.json"))
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.exit(0, "benchmarks.gpu_ratio: no CUDA device here; skipped (use --tiny --device cpu to try the code)\n")
    start = time.perf_counter()
    options = parse_options(args.compile_options)
    label = "tiny" if args.tiny else "sd15"
    base = random_sd_pipeline(ARCHITECTURES[label])
    report = {"architecture": label, "settings": {k: v for k, v in vars(args).items() if k != "out"},
              "build_seconds": time.perf_counter() - start,
              "environment": environment(command_line("benchmarks.gpu_ratio", argv)),
              "combinations": [{"dtype": d, "compile": c, "status": "pending"}
                               for d, c in combinations(args.dtypes.split(","), tuple(args.modes.split(",")))]}
    took: dict[bool, float] = {}  # compiled → seconds of the last combination of that kind
    for row in report["combinations"]:
        dtype, compiled = row["dtype"], row["compile"]
        row["status"] = "running"  # what a timeout leaves in the file
        write_json(Path(args.out), report)
        began = time.perf_counter()
        if args.budget_s is not None and began - start + took.get(compiled, 0.0) > args.budget_s:
            last = f", the last {'compiled' if compiled else 'eager'} one took {took[compiled]:.0f} s" if (
                compiled in took) else ""
            row.update(status="skipped", error=f"budget: {began - start:.0f} of {args.budget_s:g} s spent{last}")
        else:
            try:
                row.update(status="ok", **run_combination(base, dtype, compiled, args, options))
            except Exception as e:  # recorded, and the next combination runs
                row.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
            free_memory(torch.device(args.device))
            took[compiled] = time.perf_counter() - began
        row["seconds"] = time.perf_counter() - began
        write_json(Path(args.out), report)
        print(json.dumps({k: v for k, v in row.items() if k != "traceback"}), flush=True)
    return report


if __name__ == "__main__":
    sys.exit(any(row["status"] == "error" for row in main()["combinations"]))
