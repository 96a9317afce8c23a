"""One timed TRL 0.23.1 ``DDPOTrainer`` run, executed by :mod:`benchmarks.peers_trl` inside TRL's own venv.

Standalone on purpose (TRL 0.23.1 needs transformers < 5, this project transformers 5): it imports nothing from
this repository. Prints one JSON line (rank 0): the seconds of each epoch (sampling + reward + training).

    .venv-trl/bin/python benchmarks/trl_ddpo_worker.py --model DIR --epochs 4 --threads 2
    # TRL's own multi-process mode (accelerate on CPU processes over gloo): the same global batch sizes, split
    .venv-trl/bin/python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/trl_ddpo_worker.py ...
"""

from __future__ import annotations

import argparse
import io
import json
import random
import time
import warnings


def jpeg_compressibility(images, prompts, metadata):
    """−kB of each image saved as JPEG at quality 95 (the same reward as rewards.JpegCompressibility)."""
    import numpy as np
    import torch
    from PIL import Image

    pixels = (images.float() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    sizes = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=95)
        sizes.append(-buffer.tell() / 1000.0)
    return torch.tensor(sizes), {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="a local StableDiffusionPipeline folder")
    parser.add_argument("--prompts", required=True, help="comma-separated prompts, drawn uniformly")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num-steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--sample-batch-size", type=int, default=8)
    parser.add_argument("--samples-per-epoch", type=int, default=32)
    parser.add_argument("--train-batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import os

    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))  # launched by torchrun: accelerate's MULTI_CPU (gloo)
    if args.samples_per_epoch % (args.sample_batch_size * world) or args.train_batch_size % world:
        raise SystemExit(f"{world} processes must split samples_per_epoch / sample_batch_size and train_batch_size")
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    from accelerate import PartialState
    from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    # accelerate's state must exist before DDPOConfig/Accelerator on a CPU-only machine; cpu=True makes several
    # processes one MULTI_CPU job
    state = PartialState(cpu=world > 1)
    prompts = args.prompts.split(",")
    rng = random.Random(args.seed)
    config = DDPOConfig(
        num_epochs=args.epochs,
        mixed_precision="no",
        log_with=None,
        save_freq=10**9,  # no checkpoints inside the timed epochs (this project's timing has none either)
        sample_num_steps=args.num_steps,
        sample_eta=1.0,
        sample_guidance_scale=args.guidance_scale,
        sample_batch_size=args.sample_batch_size,
        # TRL's sizes are per process: samples per epoch = sample_batch_size · batches · processes
        sample_num_batches_per_epoch=args.samples_per_epoch // (args.sample_batch_size * world),
        train_batch_size=args.train_batch_size // world,
        train_gradient_accumulation_steps=1,
        train_num_inner_epochs=1,
        train_timestep_fraction=1.0,
        train_learning_rate=3e-4,
        train_clip_range=1e-4,
        per_prompt_stat_tracking=False,
        seed=args.seed,
    )
    pipeline = DefaultDDPOStableDiffusionPipeline(args.model, use_lora=True)
    pipeline.set_progress_bar_config(disable=True)
    trainer = DDPOTrainer(config, jpeg_compressibility, lambda: (rng.choice(prompts), {}), pipeline)
    pipeline.set_progress_bar_config(disable=True)
    seconds, global_step = [], 0
    for epoch in range(args.epochs):
        start = time.perf_counter()
        global_step = trainer.step(epoch, global_step)
        seconds.append(time.perf_counter() - start)
    import trl

    if state.is_main_process:
        print(json.dumps({"epoch_seconds": seconds, "trl": trl.__version__, "optimizer_steps": global_step,
                          "processes": state.num_processes, "distributed_type": str(state.distributed_type)}))
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
