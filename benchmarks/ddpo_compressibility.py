"""DDPO-IS raises JPEG compressibility: ``python -m benchmarks.ddpo_compressibility [--model default|tiny]``.

Runs a long, aggressive DDPO-IS job (``agents.job.train``: JPEG compressibility with images enlarged ×4;
:data:`SETTINGS`, the former ``make train``) to show the reward over-optimised, and reports the fixed evaluation
set (100 prompts × seeds) before and after: reward mean ± std, the gain in units
of the initial per-sample std, and (default model) how often the digit classifier still recognises the prompted
digit — the over-optimisation the paper describes. Writes benchmarks/results/ddpo_compressibility_<model>.{json,md,png}
and, for the default model, summary.json's ``compressibility_gain_std``.

Settings: a full fine-tune at lr 2e-4 with clip 1e-3 and micro-batches of 16 for 56 epochs — twice make train's
learning rate, 3.5× its samples: the reward climbs far and the digits wash out.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile

import numpy as np
import torch

from agents.job.train import TrainConfig, train
from benchmarks.record import RESULTS_DIR, environment, update_summary, write_json

EPOCHS = {"default": 56, "tiny": 100}
SETTINGS = {"lora_rank": 0, "learning_rate": 2e-4, "clip_range": 1e-3, "batch_size": 16, "samples_per_epoch": 64}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(EPOCHS), default="default")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    epochs = args.epochs or EPOCHS[args.model]
    command = f"python -m benchmarks.ddpo_compressibility --model {args.model}"
    if args.epochs:
        command += f" --epochs {args.epochs}"
    env_info = environment(command)
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(TrainConfig.from_flat(dict(**SETTINGS, model=args.model, epochs=epochs, device="cpu",
                                                  output_dir=run_dir)))
        png = RESULTS_DIR / f"ddpo_compressibility_{args.model}.png"
        shutil.copyfile(f"{run_dir}/before_after.png", png)
    before, after, m = result.before.rewards, result.after.rewards, result.metrics
    results = {
        **m,
        "reward": "jpeg_compressibility (-kB at quality 95, image enlarged x4)",
        "gain_in_initial_std": float((after.mean() - before.mean()) / before.std()),
        "environment": env_info,
    }
    lines = [
        f"# DDPO-IS on JPEG compressibility ({args.model} model)\n",
        f"`{command}` — {env_info['date']}, {env_info['machine']}, rev {env_info['git_revision']}\n",
        "| measure | value |", "|---|---|",
        f"| training | {m['samples']} samples ({epochs} epochs of 64) in {m['train_seconds'] / 60:.1f} min |",
        f"| reward before (100 fixed prompts × seeds) | {before.mean():.3f} ± {before.std():.3f} |",
        f"| reward after | {after.mean():.3f} ± {after.std():.3f} |",
        f"| gain in initial per-sample std | {results['gain_in_initial_std']:.2f} |",
    ]
    if args.model == "default":
        from ddpo_env.models.digit_classifier import load_classifier

        classifier, digits = load_classifier(), np.repeat(np.arange(10), 10)
        for name, evaluation in (("before", result.before), ("after", result.after)):
            predicted = classifier.predict_proba(evaluation.images).argmax(1).numpy()
            results[f"classifier_agreement_{name}"] = float((predicted == digits).mean())
        lines.append(f"| classifier agreement before → after | {results['classifier_agreement_before']:.0%} → "
                     f"{results['classifier_agreement_after']:.0%} |")
        update_summary({"compressibility_gain_std": (results["gain_in_initial_std"], "initial per-sample std")},
                       env_info)
    lines.append(f"\nLeft five columns: before; right five: after (same prompts and seeds).\n\n![grid]({png.name})\n")
    write_json(RESULTS_DIR / f"ddpo_compressibility_{args.model}.json", results)
    (RESULTS_DIR / f"ddpo_compressibility_{args.model}.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
