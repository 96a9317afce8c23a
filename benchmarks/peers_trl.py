"""Throughput against TRL's ``DDPOTrainer``: ``python -m benchmarks.peers_trl``.

TRL 0.23.1 is the last release with ``DDPOTrainer``; it needs transformers < 5, so it runs in its own venv
(``.venv-trl``, created on first use with pip: ``trl[diffusers,peft]==0.23.1 "transformers<5"`` and this
venv's torch). Both sides train DDPO-IS on the same tiny Stable Diffusion pipeline (saved once, in a layout both
transformers 4 and 5 read, so text encoder and tokenizer are bit-identical), with the same config: 20 DDIM
steps, η 1, CFG 5, LoRA r4 on the attention projections, 32 samples per epoch sampled 8 at a time, train batch 4,
one optimizer step per train batch, fp32, JPEG compressibility, batch-normalised advantages, 2 torch threads.

The 2 threads are used either inside one process (torch's intra-op threads) or as 2 one-thread processes, data
parallel over gloo (``torch.distributed.run``): TRL through accelerate's multi-CPU mode, this project through its
own ``agents/distributed.py``; the global sizes stay the same (each process samples and trains half). Both sides
get both layouts.

Runs alternate (each TRL variant, then each variant of this project, repeated), each a fresh job of ``--epochs``
epochs whose first is a warm-up; throughput = samples per epoch / median epoch time over the rest. Writes
``benchmarks/results/peers_trl.{json,md}`` and summary.json's ``trl_speedup``: this project's best variant / TRL's
best variant.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.record import RESULTS_DIR, command_line, environment, update_summary, write_json

ROOT = Path(__file__).resolve().parent.parent
TRL_VENV = ROOT / ".venv-trl"
TRL_REQUIREMENTS = ["trl[diffusers,peft]==0.23.1", "transformers<5"]
CONFIG = {"num_steps": 20, "guidance_scale": 5.0, "samples_per_epoch": 32, "sample_batch_size": 8,
          "train_batch_size": 4, "lora_rank": 4, "learning_rate": 3e-4, "clip_range": 1e-4}
# Each side's variants: (processes, this project's agent settings over the shared CONFIG), each a change measured
# on its own.
TRL_VARIANTS = {
    "TRL 0.23.1 DDPOTrainer": (1, {}),
    "TRL 0.23.1 DDPOTrainer (2 processes)": (2, {}),
}
VARIANTS = {
    "ddpo-env (one step per pass)": (1, {"steps_per_pass": 1}),
    "ddpo-env (all steps in one pass)": (1, {"steps_per_pass": 0}),
    "ddpo-env (2 gradient threads)": (1, {"grad_workers": 2}),
    "ddpo-env (2 processes; all steps in one pass)": (2, {"steps_per_pass": 0}),
    "ddpo-env (2 processes; all steps in one pass; compiled sampling)": (2, {"steps_per_pass": 0,
                                                                          "compile_sampling": True}),
    "ddpo-env (2 processes; all steps in one pass; compiled sampling; matmul attention)": (
        2, {"steps_per_pass": 0, "compile_sampling": True, "attention": "matmul"}),
}
ENV_SETTINGS = ("attention",)  # variant settings that configure the env, not the agent


def launch(python: str, processes: int, script: list[str]) -> list[str]:
    """The command running ``script`` (a file, or ``-m`` and a module) in ``processes`` processes."""
    if processes == 1:
        return [python, *script]
    return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *script]


def threads_per_process(threads: int, processes: int) -> int:
    """The torch threads of each process when ``processes`` share ``threads``."""
    return max(1, threads // processes)


def ensure_trl_venv(venv: Path = TRL_VENV) -> Path:
    """TRL's venv (created when missing): its python."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import trl, sys; sys.exit(trl.__version__ != '0.23.1')"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"creating {venv} with {' '.join(TRL_REQUIREMENTS)} (once; a few minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    torch = f"torch=={metadata.version('torch').split('+')[0]}"
    subprocess.run([str(python), "-m", "pip", "install", "-q", torch, *TRL_REQUIREMENTS], check=True)
    return python


def save_portable_tiny_pipeline(folder: Path, seed: int = 0, sample_size: int = 16) -> list[str]:
    """The tiny SD pipeline (latents 4×16×16, images 32×32) saved so transformers 4 and 5 load the same weights and
    tokenizer: text-encoder keys under ``text_model.`` and a slow-tokenizer vocab.json + merges.txt. Returns the
    prompts both sides sample from."""
    from safetensors.torch import load_file, save_file

    from ddpo_env.backends import StableDiffusionBackend
    from ddpo_env.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed, sample_size=sample_size)
    pipe.save_pretrained(folder)
    weights = folder / "text_encoder" / "model.safetensors"
    state = load_file(weights)
    save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}, weights,
              metadata={"format": "pt"})
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps(pipe.tokenizer.get_vocab()), encoding="utf-8")
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return list(StableDiffusionBackend.default_prompts)


def run_ours(model: str, prompts: list[str], epochs: int, threads: int, overrides: dict[str, Any],
             config: dict[str, Any] = CONFIG) -> dict:
    """One timed run of this project (in a fresh process, or one rank of a torchrun job: ``--worker``)."""
    os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")  # compile_sampling: every run compiles afresh
    import gymnasium as gym
    import torch
    from stable_baselines3.common.logger import Logger

    import ddpo_env  # noqa: F401
    from agents import DDPO_IS
    from agents.distributed import init_from_environment
    from rewards import JpegCompressibility, VectorTerminalReward

    torch.set_num_threads(threads)
    init_from_environment("cpu")  # launched by torchrun: one rank of a data-parallel job
    c = config
    env_settings = {k: overrides[k] for k in ENV_SETTINGS if k in overrides}
    overrides = {k: v for k, v in overrides.items() if k not in ENV_SETTINGS}
    env = gym.make_vec("DenoisingDiffusion-v0", num_envs=c["sample_batch_size"], model=model, prompts=prompts,
                       num_steps=c["num_steps"], guidance_scale=c["guidance_scale"], device="cpu", **env_settings)
    env = VectorTerminalReward(env, JpegCompressibility())
    agent = DDPO_IS(env, samples_per_epoch=c["samples_per_epoch"], batch_size=c["train_batch_size"],
                    lora_rank=c["lora_rank"], learning_rate=c["learning_rate"], clip_range=c["clip_range"],
                    per_prompt_stat_tracking=False, **overrides)
    agent.set_logger(Logger(folder=None, output_formats=[]))
    seconds = []
    for epoch in range(epochs):
        start = time.perf_counter()
        agent.learn(total_samples=c["samples_per_epoch"], reset_num_timesteps=epoch == 0)
        seconds.append(time.perf_counter() - start)
    world = agent.ranks.world_size if agent.ranks else 1
    if agent.ranks:
        torch.distributed.destroy_process_group()
    return {"epoch_seconds": seconds, "optimizer_steps": agent.num_updates, "processes": world}


def run_process(command: list[str]) -> dict:
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        raise RuntimeError(f"{' '.join(command[:3])} … failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def summarise(runs: list[dict]) -> dict[str, Any]:
    """Per side: the median epoch time over every run's epochs after its first, and samples/s."""
    out = {}
    for name in dict.fromkeys(r["name"] for r in runs):
        timed = [s for r in runs if r["name"] == name for s in r["epoch_seconds"][1:]]
        first = [r["epoch_seconds"][0] for r in runs if r["name"] == name]
        median = float(np.median(timed))
        out[name] = {"median_epoch_seconds": median, "samples_per_s": CONFIG["samples_per_epoch"] / median,
                     "epochs_timed": len(timed), "spread": [float(min(timed)), float(max(timed))],
                     "first_epoch_seconds": float(np.median(first))}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is a warm-up")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="this project's variants to run")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one timed run of ours
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prompts", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", default="{}", help=argparse.SUPPRESS)  # worker: JSON overrides of CONFIG (tests)
    args = parser.parse_args(argv)
    if args.worker:
        out = run_ours(args.model, args.prompts.split(","), args.epochs, args.threads, VARIANTS[args.worker][1],
                       CONFIG | json.loads(args.config))
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(out))
        return {}

    env_info = environment(command_line("benchmarks.peers_trl", argv))
    trl_python = ensure_trl_venv()
    variants = args.variants.split(",")
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        prompts = save_portable_tiny_pipeline(Path(folder))
        def common(processes: int) -> list[str]:
            return ["--epochs", str(args.epochs), "--threads", str(threads_per_process(args.threads, processes)),
                    "--model", folder, "--prompts", ",".join(prompts)]

        trl_options = ["--num-steps", str(CONFIG["num_steps"]), "--guidance-scale", str(CONFIG["guidance_scale"]),
                       "--sample-batch-size", str(CONFIG["sample_batch_size"]),
                       "--samples-per-epoch", str(CONFIG["samples_per_epoch"]),
                       "--train-batch-size", str(CONFIG["train_batch_size"])]
        commands = [(name, launch(str(trl_python), n, [str(ROOT / "benchmarks" / "trl_ddpo_worker.py"), *common(n),
                                                       *trl_options])) for name, (n, _) in TRL_VARIANTS.items()]
        commands += [(v, launch(sys.executable, VARIANTS[v][0], ["-m", "benchmarks.peers_trl", "--worker", v,
                                                                 *common(VARIANTS[v][0])])) for v in variants]
        for repeat in range(args.repeats):
            for name, command in commands:
                run = {"name": name, "repeat": repeat, **run_process(command)}
                runs.append(run)
                print(f"{name}: epochs {', '.join(f'{s:.2f}' for s in run['epoch_seconds'])} s", flush=True)
    table = summarise(runs)
    best_trl = max(TRL_VARIANTS, key=lambda v: table[v]["samples_per_s"])
    trl = table[best_trl]["samples_per_s"]
    for name, row in table.items():
        row["processes"] = (TRL_VARIANTS | VARIANTS)[name][0]
        row["vs_trl"] = row["samples_per_s"] / trl
    best = max(variants, key=lambda v: table[v]["samples_per_s"])
    results_dir = Path(args.results_dir)
    write_json(results_dir / "peers_trl.json", {"config": CONFIG, "table": table, "runs": runs,
                                                "environment": env_info})
    lines = [
        "# Throughput against TRL's DDPOTrainer\n",
        f"`{env_info['command']}` — {env_info['date']}, {env_info['machine']}, rev {env_info['git_revision']}\n",
        "Same tiny SD pipeline and DDPO-IS config on both sides: " + ", ".join(f"{k} {v}" for k, v in CONFIG.items())
        + f", fp32, {args.threads} threads (in one process, or one each in {args.threads} processes); {args.repeats} "
        f"alternating runs of {args.epochs} epochs per variant, the first epoch of each run a warm-up. \"vs TRL\" "
        f"is against TRL's fastest variant ({best_trl}).\n",
        "| trainer | processes × threads | median s/epoch | min–max | first epoch (s) | samples/s | vs TRL |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        n = row["processes"]
        lines.append(f"| {name} | {n} × {threads_per_process(args.threads, n)} | {row['median_epoch_seconds']:.2f} "
                     f"| {row['spread'][0]:.2f}–{row['spread'][1]:.2f} | {row['first_epoch_seconds']:.1f} "
                     f"| {row['samples_per_s']:.2f} | {row['vs_trl']:.2f}× |")
    text = "\n".join(lines) + "\n"
    (results_dir / "peers_trl.md").write_text(text, encoding="utf-8")
    update_summary({"trl_speedup": (table[best]["vs_trl"], f"× TRL 0.23.1 samples/s ({best} vs {best_trl})")},
                   env_info, results_dir)
    print(text)
    return table


if __name__ == "__main__":
    main()
