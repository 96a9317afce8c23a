"""``ddpo diagnose`` (``python -m ddpo_env.diagnose``): the step-conditioning table of a model and its settings
(:mod:`ddpo_env.conditioning` has the math), and its plot; ``ddpo diagnose words``: whether the model uses a word
(:mod:`ddpo_env.word_use`).
"""

from __future__ import annotations

import warnings

import numpy as np

from ddpo_env.conditioning import (
    ILL_CONDITIONED_RATIO,
    MAJORITY_HINT,
    IllConditionedStepWarning,
    StepConditioning,
    env_conditioning,
    schedule_conditioning,
)


def plot_conditioning(curves: dict[str, StepConditioning], path: str, title: str = "") -> None:
    """Sensitivity per step (log scale) of one or more configurations, each relative to its own median, into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for label, c in curves.items():
        steps = np.arange(len(c.sensitivity))
        ax.plot(steps, c.ratio_to_median, marker="o", markersize=3, label=f"{label} (max {c.max_ratio:.1f}×)")
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.axhline(10.0, color="orange", linestyle="--", linewidth=0.8, label="10× the median")
    ax.axhline(ILL_CONDITIONED_RATIO, color="red", linestyle=":", linewidth=0.8,
               label=f"{ILL_CONDITIONED_RATIO:.0f}×: the env warns")
    ax.set_yscale("log")
    ax.set_xlabel("denoising step k (0 = first, from noise)")
    ax.set_ylabel("sensitivity s_k / median step")
    ax.set_title(title or "step conditioning: |∂μ/∂f| / σ per step", fontsize=9)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def words_main(argv: list[str]) -> list:
    """``ddpo diagnose words --model shapes --swap left=right --swap red=blue``: the word-use check of each swap."""
    import argparse
    import json

    from ddpo_env.backends import load_backend
    from ddpo_env.config import is_prompt_file
    from ddpo_env.schedule import make_schedule
    from ddpo_env.tasks import task_of
    from ddpo_env.word_use import markdown, word_use

    parser = argparse.ArgumentParser(prog="ddpo diagnose words", description="Does the model use a word? For each "
                                     "swap A=B, how much replacing the word A by B in the prompts changes the "
                                     "network's prediction on the model's own samples, and its denoising error.")
    parser.add_argument("--model", default="default", help="as DenoisingDiffusion-v0's model (default, shapes, a "
                        "folder, package.module:TASK)")
    parser.add_argument("--swap", action="append", required=True, metavar="A=B",
                        help="a word and its replacement, e.g. left=right (repeat the flag for several)")
    parser.add_argument("--prompts", default="", help="comma-separated prompts (default: the model's training "
                        "prompts that hold the word)")
    parser.add_argument("--prompt-file", default="", help="a text file with one prompt per line")
    parser.add_argument("--samples", type=int, default=4, help="clean samples per prompt (seeds)")
    parser.add_argument("--draws", type=int, default=8, help="noisings of each sample")
    parser.add_argument("--num-steps", type=int, default=None, help="sampler steps (default: the model's)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="the sampler's guidance (default: the "
                        "model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default="", help="also write the results (per prompt too) as JSON here")
    args = parser.parse_args(argv)
    swaps = [tuple(s.split("=", 1)) for s in args.swap]
    if any(len(s) != 2 or not all(w.strip() for w in s) for s in swaps):
        parser.error(f"--swap takes A=B with two words, got {args.swap}")
    if args.prompt_file:
        if not is_prompt_file(args.prompt_file):
            parser.error(f"--prompt-file {args.prompt_file!r} is not a readable text file")
        with open(args.prompt_file, encoding="utf-8") as file:
            prompts = [line.strip() for line in file if line.strip()]
    else:
        prompts = [p.strip() for p in args.prompts.split(",") if p.strip()]
    backend = load_backend(args.model, args.device)
    prompts = prompts or list(task_of(args.model, backend).training_prompts(backend))
    schedule = make_schedule(backend.scheduler_config, args.num_steps or backend.default_num_steps, None)
    guidance = backend.default_guidance_scale if args.guidance_scale is None else args.guidance_scale
    results = []
    for word, replacement in swaps:
        try:
            results.append(word_use(backend, schedule, prompts, word.strip(), replacement.strip(),
                                    guidance_scale=guidance, samples=args.samples, draws=args.draws, seed=args.seed))
        except ValueError as error:
            parser.error(str(error))
    print(f"word use of model {args.model!r} ({args.samples} samples × {args.draws} noisings per prompt):\n\n"
          f"{markdown(results)}\n\nprediction change: RMS change of the network's prediction when the word is "
          "swapped, relative to the prediction; error increase: how much worse the swapped prompt predicts the "
          "noise of the model's own samples for the true prompt")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump({"model": str(args.model), "samples": args.samples, "draws": args.draws, "seed": args.seed,
                       "swaps": [{**r.row(), "per_prompt": r.per_prompt} for r in results]}, file, indent=2)
        print(f"  {args.json}")
    return results


def main(argv: list[str] | None = None) -> StepConditioning | list:
    """``python -m ddpo_env.diagnose --model default --num-steps 20 [--png steps.png]``: the step-conditioning table
    of a model and its settings (at real states of the model's own sampler), or of a scheduler config alone;
    ``python -m ddpo_env.diagnose words ...``: the word-use check (:func:`words_main`)."""
    import argparse
    import json
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["words"]:
        return words_main(argv[1:])

    parser = argparse.ArgumentParser(prog="ddpo diagnose", description="Per-step conditioning of the policy's "
                                     "log-probability: which denoising steps dominate policy gradients.",
                                     epilog="ddpo diagnose words --help: does the model use a word (a word swap's "
                                     "effect on its predictions)")
    parser.add_argument("--model", default="default", help="as DenoisingDiffusion-v0's model (default, tiny, a folder)")
    parser.add_argument("--num-steps", type=int, default=None, help="steps per episode (default: the model's)")
    parser.add_argument("--eta", type=float, default=None, help="the policy's noise scale (default: 1.0 for DDIM)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance weight")
    parser.add_argument("--scheduler-overrides", type=json.loads, default={}, metavar="JSON",
                        help='entries replacing the model\'s scheduler config, e.g. {"timestep_spacing": "trailing"}')
    parser.add_argument("--scheduler-config", default="", metavar="FILE",
                        help="a diffusers scheduler_config.json: the schedule alone, no model (e.g. Stable Diffusion "
                        "1.5's); --model is then ignored")
    parser.add_argument("--samples", type=int, default=16, help="episodes the real-state measurement averages over")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--png", default="", help="also plot the sensitivities into this PNG")
    parser.add_argument("--json", default="", help="also write the table as JSON here")
    args = parser.parse_args(argv)

    if args.scheduler_config:
        from ddpo_env.schedule import make_schedule

        with open(args.scheduler_config, encoding="utf-8") as file:
            config = {**json.load(file), **args.scheduler_overrides}
        schedule = make_schedule(config, args.num_steps or 50, args.eta)
        conditioning, what = schedule_conditioning(schedule), f"scheduler config {args.scheduler_config}"
    else:
        from ddpo_env.vector_env import DenoisingDiffusionVectorEnv

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IllConditionedStepWarning)  # the table says it better
            env = DenoisingDiffusionVectorEnv(min(args.samples, 16), model=args.model, num_steps=args.num_steps,
                                              eta=args.eta, guidance_scale=args.guidance_scale,
                                              scheduler_overrides=args.scheduler_overrides, device=args.device)
        conditioning, what = env_conditioning(env, args.samples), f"model {args.model!r}, {args.samples} episodes"
    worst = int(np.argmax(conditioning.sensitivity))
    print(f"step conditioning of {what}, {len(conditioning.timesteps)} steps:\n\n{conditioning.markdown()}\n\n"
          f"worst step {worst}: {conditioning.max_ratio:.1f}× the median step's sensitivity "
          f"({'ill-conditioned: ' if conditioning.max_ratio > ILL_CONDITIONED_RATIO else ''}the env warns above "
          f"{ILL_CONDITIONED_RATIO:.0f}×) and {100 * conditioning.gradient_share[worst]:.0f} % of the gradient's "
          f"squared norm{MAJORITY_HINT if conditioning.gradient_share[worst] > 0.5 else ''}")
    if args.png:
        plot_conditioning({what: conditioning}, args.png)
        print(f"  {args.png}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump({"what": what, "max_ratio": conditioning.max_ratio, "steps": conditioning.rows()}, file, indent=2)
        print(f"  {args.json}")
    return conditioning


if __name__ == "__main__":
    main()
