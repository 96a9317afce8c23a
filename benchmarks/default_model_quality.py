"""Quality and speed of the embedded default model: ``python -m benchmarks.default_model_quality``.

* Agreement: 2000 samples (200 per digit, prompt "a handwritten digit {n}") through DenoisingDiffusion-v0 with the
  default sampler settings (20 DDIM steps, eta 1), scored by the shipped digit classifier, at guidance 1.0 and 1.5,
  and at 10 steps (the algorithms benchmark's episodes); and 200 samples with wordings never seen in training.
* Speed: images/s of a whole episode (reset, 20 sampler steps, decode) at batch 64.
* A grid PNG, rows = digits 0..9.
Writes benchmarks/results/default_model_quality.{json,md}, default_model_grid.png and summary.json keys.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.record import RESULTS_DIR, environment, update_summary, write_json
from ddpo_env import DDIMSampler, DenoisingDiffusionVectorEnv
from ddpo_env.images import save_grid
from ddpo_env.models.digit_classifier import load_classifier
from ddpo_env.models.digits import DEFAULT_DIR, HELDOUT_TEMPLATES, digit_prompt
from ddpo_env.models.embedded import load_unet


def generate(env: DenoisingDiffusionVectorEnv, prompts: list[str], seed: int) -> np.ndarray:
    """One episode per prompt (batches of num_envs) with the base-model sampler; uint8 images (N, H, W, 3)."""
    images = []
    sampler = DDIMSampler(env, seed=seed)
    for start in range(0, len(prompts), env.num_envs):
        batch = prompts[start : start + env.num_envs]
        batch = batch + [batch[-1]] * (env.num_envs - len(batch))
        obs, _ = env.reset(seed=seed + start, options={"prompts": batch})
        for _ in range(env.num_steps):
            action, _ = sampler(obs)
            obs, _, terminated, _, info = env.step(action)
        assert terminated.all()
        images.append(info["image"][: len(prompts) - start])
    return np.concatenate(images)


def standard_error(fraction: float, samples: int) -> float:
    """The binomial standard error √(p(1−p)/n) of an agreement measured on ``samples`` images."""
    return float(np.sqrt(fraction * (1 - fraction) / samples))


def agreement(images: np.ndarray, digits: np.ndarray, classifier) -> float:
    predicted = classifier.predict_proba(images).argmax(dim=1).numpy()
    return float((predicted == digits).mean())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-digit", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m benchmarks.default_model_quality"
    if args.per_digit != 200:
        command += f" --per-digit {args.per_digit}"
    env_info = environment(command)
    classifier = load_classifier()
    start = time.perf_counter()
    from diffusers import UNet2DConditionModel  # noqa: F401  (library import, timed apart from the weights)

    import_seconds = time.perf_counter() - start
    start = time.perf_counter()
    load_unet(DEFAULT_DIR)
    load_seconds = time.perf_counter() - start

    digits = np.repeat(np.arange(10), args.per_digit)
    prompts = [digit_prompt(int(d), "a handwritten digit {n}") for d in digits]
    results: dict = {"samples": len(prompts), "prompt": "a handwritten digit {n}", "num_steps": 20, "eta": 1.0}
    for w in (1.0, 1.5):
        env = DenoisingDiffusionVectorEnv(num_envs=50, device="cpu", guidance_scale=w)
        images = generate(env, prompts, args.seed)
        results[f"agreement_cfg{w}"] = agreement(images, digits, classifier)
        if w == env.backend.default_guidance_scale:
            per_row = images.reshape(10, args.per_digit, *images.shape[1:])[:, :10]
            save_grid(per_row.reshape(-1, *images.shape[1:]), rows=10, path=RESULTS_DIR / "default_model_grid.png")

    # the algorithms benchmark's 10-step episodes (default guidance)
    results["agreement_10_steps"] = agreement(generate(DenoisingDiffusionVectorEnv(
        num_envs=50, device="cpu", num_steps=10), prompts, args.seed), digits, classifier)

    heldout_digits = np.repeat(np.arange(10), 20)
    heldout_prompts = [digit_prompt(int(d), HELDOUT_TEMPLATES[i % len(HELDOUT_TEMPLATES)])
                       for i, d in enumerate(heldout_digits)]
    env = DenoisingDiffusionVectorEnv(num_envs=50, device="cpu")
    results["agreement_unseen_wording"] = agreement(generate(env, heldout_prompts, args.seed), heldout_digits,
                                                    classifier)
    results["unseen_wordings"] = list(HELDOUT_TEMPLATES)

    speed_env = DenoisingDiffusionVectorEnv(num_envs=64, device="cpu")
    generate(speed_env, prompts[:64], args.seed)  # warm-up
    start = time.perf_counter()
    generate(speed_env, prompts[:128], args.seed + 1)
    results["images_per_s_batch64"] = 128 / (time.perf_counter() - start)
    results["unet_load_seconds"] = load_seconds
    results["diffusers_import_seconds"] = import_seconds
    results["environment"] = env_info
    write_json(RESULTS_DIR / "default_model_quality.json", results)
    (RESULTS_DIR / "default_model_quality.md").write_text(
        "# Default model quality\n\n"
        f"`{command}` — {env_info['date']}, {env_info['machine']}, rev {env_info['git_revision']}\n\n"
        "| measure | value (± binomial standard error) |\n|---|---|\n"
        f"| classifier agreement, guidance 1.0 ({len(prompts)} samples) | {results['agreement_cfg1.0']:.1%} ± "
        f"{standard_error(results['agreement_cfg1.0'], len(prompts)):.1%} |\n"
        f"| classifier agreement, guidance 1.5 ({len(prompts)} samples) | {results['agreement_cfg1.5']:.1%} ± "
        f"{standard_error(results['agreement_cfg1.5'], len(prompts)):.1%} |\n"
        f"| classifier agreement, 10 steps instead of 20, guidance 1.0 ({len(prompts)} samples) | "
        f"{results['agreement_10_steps']:.1%} ± {standard_error(results['agreement_10_steps'], len(prompts)):.1%} |\n"
        "| agreement on unseen wordings (200 samples, default guidance) | "
        f"{results['agreement_unseen_wording']:.1%} |\n"
        f"| sampling speed, batch 64, 20 steps, {args.threads} threads | "
        f"{results['images_per_s_batch64']:.1f} images/s |\n"
        f"| loading the shipped UNet (config + safetensors) | {load_seconds:.3f} s |\n"
        f"| (first import of diffusers, paid once per process) | {import_seconds:.1f} s |\n"
        "\n![grid](default_model_grid.png)\n",
        encoding="utf-8",
    )
    update_summary(
        {
            "default_model_agreement": (results["agreement_cfg1.0"], "fraction"),
            "default_model_agreement_cfg15": (results["agreement_cfg1.5"], "fraction"),
            "default_model_images_per_s": (results["images_per_s_batch64"], "images/s"),
        },
        env_info,
    )
    print((RESULTS_DIR / "default_model_quality.md").read_text(encoding="utf-8"))
    return results


if __name__ == "__main__":
    main()
