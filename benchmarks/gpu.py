"""Stable Diffusion 1.5 at full size on one GPU: ``python -m benchmarks.gpu`` (needs CUDA).

Stable Diffusion 1.5's published architecture (UNet 860M, VAE, CLIP ViT-L/14 text encoder) with random weights —
the same FLOPs and memory as the real model, nothing to download. 512 px, 50 DDIM steps, η 1, CFG 5, bf16;
DDPO-IS with sample batch 8 and train batch 4 (``--batch-size``). For each gradient checkpointing setting (off and
on; ``--checkpointing``) and LoRA rank (4; ``--lora-ranks 4,0``, 0 = full fine-tune): end-to-end samples/s
(sampling + training, epochs after a warm-up) and peak GPU memory, for the env + agent and (unless ``--no-bare``)
for the bare ddpo-pytorch-style loop of :mod:`benchmarks.bare_ddpo` on the same model.

Targets: ≥ 1 sample/s on an H100, ≥ 1.5× the bare loop, ≤ 10 GB peak. Writes ``gpu_sd15.json`` and
``gpu_sd15.md`` (``gpu_tiny.*`` with ``--tiny``) in ``--results-dir`` (default benchmarks/results) and, for sd15
unless ``--no-summary``, summary.json's ``gpu_samples_per_s`` and ``gpu_peak_memory_gb`` there. ``--tiny`` runs the
same code on a miniature of the architecture (any device; the test suite runs it on CPU).
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.logger import Logger

import ddpo_env  # noqa: F401  (registers the env)
from agents import DDPO_IS
from agents.policy import add_lora
from benchmarks.bare_ddpo import BareConfig, BareDDPO, synchronize
from benchmarks.record import RESULTS_DIR, command_line, environment, update_summary, write_json
from ddpo_env.backends import load_backend
from ddpo_env.ddim import DDIMSchedule
from rewards import JpegCompressibility, VectorTerminalReward
from rewards.jpeg import jpeg_size_kb

# SD 1.5's unet/vae/text_encoder config.json values; "tiny" keeps the block structure at a fraction of the width.
ARCHITECTURES = {
    "sd15": {"unet_channels": (320, 640, 1280, 1280), "layers": 2, "heads": 8, "sample_size": 64,
             "vae_channels": (128, 256, 512, 512), "text_hidden": 768, "text_layers": 12, "text_heads": 12,
             "text_ffn": 3072, "max_length": 77},
    "tiny": {"unet_channels": (32, 32, 64, 64), "layers": 1, "heads": 8, "sample_size": 8,
             "vae_channels": (32, 32, 32, 32), "text_hidden": 32, "text_layers": 2, "text_heads": 4,
             "text_ffn": 37, "max_length": 16},
}
SETTINGS = {"num_steps": 50, "guidance_scale": 5.0, "sample_batch": 8, "batch_size": 4, "samples_per_epoch": 16,
            "dtype": "bfloat16"}
CHECKPOINTING = {"off": (False,), "on": (True,), "both": (False, True)}


def random_sd_pipeline(arch: dict[str, Any], seed: int = 0):
    """A StableDiffusionPipeline with the given architecture and random weights (DDIM, SD 1.x schedule)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ddpo_env.models.tiny import SD_SCHEDULER_CONFIG, tiny_tokenizer

    tokenizer = tiny_tokenizer(model_max_length=arch["max_length"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=arch["sample_size"], in_channels=4, out_channels=4, layers_per_block=arch["layers"],
            block_out_channels=arch["unet_channels"], attention_head_dim=arch["heads"],
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=arch["text_hidden"],
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
            block_out_channels=arch["vae_channels"], down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, sample_size=arch["sample_size"] * 8,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=arch["text_hidden"], intermediate_size=arch["text_ffn"],
            num_hidden_layers=arch["text_layers"], num_attention_heads=arch["text_heads"],
            max_position_embeddings=arch["max_length"], bos_token_id=0, eos_token_id=1, pad_token_id=1,
        ))
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**SD_SCHEDULER_CONFIG), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def free_memory(device: torch.device) -> None:
    """Collect what earlier rows left (the agent's reference cycles hold its model) and return cached blocks."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def run_ours(pipeline: Any, device: str, checkpointing: bool, epochs: int, s: dict[str, Any]) -> dict[str, Any]:
    env = gym.make_vec("DenoisingDiffusion-v0", num_envs=s["sample_batch"], model=pipeline, device=device,
                       dtype=s["dtype"], num_steps=s["num_steps"], guidance_scale=s["guidance_scale"])
    env = VectorTerminalReward(env, JpegCompressibility())
    agent = DDPO_IS(env, samples_per_epoch=s["samples_per_epoch"], batch_size=s["batch_size"],
                    lora_rank=s["lora_rank"], per_prompt_stat_tracking=False)
    agent.set_logger(Logger(folder=None, output_formats=[]))
    unet = env.unwrapped.backend.unet
    if checkpointing:
        unet.enable_gradient_checkpointing()
    dev = env.unwrapped.device
    return _timed(lambda first: agent.learn(total_samples=s["samples_per_epoch"], reset_num_timesteps=first), dev,
                  epochs, s)


def run_bare(pipeline: Any, device: str, checkpointing: bool, epochs: int, s: dict[str, Any]) -> dict[str, Any]:
    backend = load_backend(pipeline, device, s["dtype"])
    if s["lora_rank"] > 0:  # as the agent's policy trains it
        add_lora(backend.unet, s["lora_rank"])
    else:
        backend.unet.requires_grad_(True)
    if checkpointing:
        backend.unet.enable_gradient_checkpointing()
    schedule = DDIMSchedule.from_scheduler_config(backend.scheduler_config, s["num_steps"], 1.0)
    bare = BareDDPO(backend, schedule, list(backend.default_prompts), s["guidance_scale"],
                    lambda images, prompts: np.array([-jpeg_size_kb(im) for im in images]),
                    BareConfig(samples_per_epoch=s["samples_per_epoch"], sample_batch=s["sample_batch"],
                               batch_size=s["batch_size"], learning_rate=3e-4, clip_range=1e-4))
    bare.backend.unet.train()
    return _timed(lambda first: bare.epoch(), backend.device, epochs, s)


def _timed(epoch_fn: Any, device: torch.device, epochs: int, s: dict[str, Any]) -> dict[str, Any]:
    epoch_fn(True)  # warm-up (kernels, allocator)
    reset_peak(device)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(epochs):
        epoch_fn(False)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"samples_per_s": epochs * s["samples_per_epoch"] / seconds, "seconds": seconds,
            "peak_gb": peak_gb(device)}


def write_rows(results_dir: Path, label: str, arch: dict[str, Any], settings: dict[str, Any],
               rows: list[dict[str, Any]], env_info: dict[str, Any], epochs: int) -> str:
    """gpu_<label>.json and .md with the rows so far (each against the bare loop's row of its settings, if run);
    returns the table."""
    by = {(r["trainer"], r["gradient_checkpointing"], r["lora_rank"]): r for r in rows}
    for r in rows:
        bare = by.get(("bare loop", r["gradient_checkpointing"], r["lora_rank"]))
        r["vs_bare"] = r["samples_per_s"] / bare["samples_per_s"] if bare else None
    write_json(results_dir / f"gpu_{label}.json", {"architecture": arch, "settings": settings, "rows": rows,
                                                  "environment": env_info})
    lines = [f"# Stable Diffusion ({label} architecture, random weights) on {env_info['machine']}\n",
             f"`{env_info['command']}` — {env_info['date']}, rev {env_info['git_revision']}\n",
             ", ".join(f"{k} {v}" for k, v in settings.items()) + f"; {epochs} timed epochs after a warm-up.\n",
             "| trainer | gradient checkpointing | LoRA rank | samples/s | vs bare loop | peak GPU memory (GB) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        mem = "–" if r["peak_gb"] is None else f"{r['peak_gb']:.2f}"
        vs = "–" if r["vs_bare"] is None else f"{r['vs_bare']:.2f}×"
        lines.append(f"| {r['trainer']} | {r['gradient_checkpointing']} | {r['lora_rank']} | "
                     f"{r['samples_per_s']:.3f} | {vs} | {mem} |")
    text = "\n".join(lines) + "\n"
    (results_dir / f"gpu_{label}.md").write_text(text, encoding="utf-8")
    return text


def summary_figures(rows: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """summary.json's ``gpu_samples_per_s`` (the fastest ddpo-env row) and ``gpu_peak_memory_gb`` (the smallest;
    left out when no row measured CUDA memory)."""
    ours = [r for r in rows if r["trainer"] == "ddpo-env"]
    if not ours:
        return {}
    fastest = max(ours, key=lambda r: r["samples_per_s"])
    figures = {"gpu_samples_per_s": (fastest["samples_per_s"], f"samples/s, SD1.5 512px {settings['num_steps']} "
                                     f"steps, LoRA rank {fastest['lora_rank']}")}
    measured = [r for r in ours if r["peak_gb"] is not None]  # None: no CUDA memory to measure (a CPU run)
    if measured:
        smallest = min(measured, key=lambda r: r["peak_gb"])
        figures["gpu_peak_memory_gb"] = (smallest["peak_gb"], f"GB, sample batch {settings['sample_batch']} / "
                                         f"train batch {settings['batch_size']}, LoRA rank {smallest['lora_rank']}")
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a miniature of the architecture (tests, CPU)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up")
    parser.add_argument("--num-steps", type=int, default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--batch-size", type=int, default=SETTINGS["batch_size"], help="training micro-batch")
    parser.add_argument("--lora-ranks", default="4", help="comma-separated LoRA ranks, 0: full fine-tune")
    parser.add_argument("--checkpointing", choices=sorted(CHECKPOINTING), default="both",
                        help="gradient checkpointing rows")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare-loop rows")
    parser.add_argument("--no-summary", action="store_true", help="leave summary.json alone")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    ranks = [int(r) for r in args.lora_ranks.split(",")]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.exit(0, "benchmarks.gpu: no CUDA device here; skipped (use --tiny --device cpu to try the code)\n")
    settings = dict(SETTINGS)
    settings.update({k: v for k, v in (("num_steps", args.num_steps), ("dtype", args.dtype)) if v is not None},
                    batch_size=args.batch_size)
    arch = ARCHITECTURES["tiny" if args.tiny else "sd15"]
    env_info = environment(command_line("benchmarks.gpu", argv))
    trainers = [("ddpo-env", run_ours)] + ([] if args.no_bare else [("bare loop", run_bare)])
    label = "tiny" if args.tiny else "sd15"
    results_dir = Path(args.results_dir)
    rows: list[dict[str, Any]] = []
    for checkpointing in CHECKPOINTING[args.checkpointing]:
        for rank in ranks:
            for name, run in trainers:
                free_memory(torch.device(args.device))  # the previous row's model, before this one's is built
                torch.manual_seed(0)
                result = run(random_sd_pipeline(arch), args.device, checkpointing, args.epochs,
                             {**settings, "lora_rank": rank})
                rows.append({"trainer": name, "gradient_checkpointing": checkpointing, "lora_rank": rank, **result})
                print(f"{name}, checkpointing {checkpointing}, LoRA rank {rank}: {result}", flush=True)
                # written after every row: a run stopped by a timeout keeps the rows that finished
                text = write_rows(results_dir, label, arch, settings, rows, env_info, args.epochs)
    if not (args.tiny or args.no_summary):
        update_summary(summary_figures(rows, settings), env_info, results_dir)
    print(text)
    return {"rows": rows}


if __name__ == "__main__":
    main()
