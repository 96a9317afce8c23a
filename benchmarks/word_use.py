"""Which words do the shipped models use? ``python -m benchmarks.word_use``.

The word-use check of :mod:`ddpo_env.word_use` on the embedded models, each on its own training prompts that hold
the word: how much swapping one word changes the network's prediction on the model's own samples (and its denoising
error). Swaps, per model: the words a reward asks the model to obey (digits; relations, colours, shapes, counts) and
a control that should not matter. Writes ``benchmarks/results/word_use.{json,md}`` and summary.json's
``word_use_relation_vs_colour`` (the shapes model's mean relation-swap change over its mean colour-swap change).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.record import RESULTS_DIR, command_line, environment, update_summary, write_json

#: (model, word, replacement, kind); the kinds are what the table groups by.
SWAPS: tuple[tuple[str, str, str, str], ...] = (
    ("default", "3", "8", "digit"), ("default", "1", "7", "digit"), ("default", "5", "6", "digit"),
    ("default", "handwritten", "printed", "control"),
    ("shapes", "left", "right", "relation"), ("shapes", "right", "left", "relation"),
    ("shapes", "above", "below", "relation"), ("shapes", "below", "above", "relation"),
    ("shapes", "red", "blue", "colour"), ("shapes", "green", "yellow", "colour"),
    ("shapes", "square", "circle", "shape"), ("shapes", "triangle", "square", "shape"),
    ("shapes", "two", "three", "count"),
    ("shapes", "photo", "picture", "control"),
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4, help="clean samples per prompt")
    parser.add_argument("--draws", type=int, default=8, help="noisings per sample")
    parser.add_argument("--models", default="default,shapes")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    from ddpo_env.backends import load_backend
    from ddpo_env.schedule import make_schedule
    from ddpo_env.tasks import task_of
    from ddpo_env.word_use import word_use

    env_info = environment(command_line("benchmarks.word_use", argv))
    rows, start = [], time.perf_counter()
    for model in args.models.split(","):
        backend = load_backend(model)
        schedule = make_schedule(backend.scheduler_config, backend.default_num_steps, None)
        prompts = list(task_of(model, backend).training_prompts(backend))
        for _, word, replacement, kind in (s for s in SWAPS if s[0] == model):
            result = word_use(backend, schedule, prompts, word, replacement, guidance_scale=
                              backend.default_guidance_scale, samples=args.samples, draws=args.draws)
            rows.append({"model": model, "kind": kind, **result.row(), "per_prompt": result.per_prompt})
            print(f"{model} {kind} {word} → {replacement}: {result.row()}", flush=True)
    by_kind = {(r["model"], r["kind"]): [] for r in rows}
    for r in rows:
        by_kind[(r["model"], r["kind"])].append(r["prediction_change"])
    means = {f"{model}/{kind}": float(np.mean(v)) for (model, kind), v in by_kind.items()}
    results_dir = Path(args.results_dir)
    write_json(results_dir / "word_use.json", {"samples": args.samples, "draws": args.draws, "rows": rows,
                                               "mean_prediction_change": means, "environment": env_info,
                                               "minutes": (time.perf_counter() - start) / 60})
    lines = ["# Which words do the embedded models use?\n",
             f"`{env_info['command']}` — {env_info['date']}, {env_info['machine']}, rev {env_info['git_revision']}\n",
             f"Each model on its own training prompts that hold the word; {args.samples} clean samples per prompt "
             f"(its deterministic sampler), {args.draws} noisings each. Prediction change: RMS change of the "
             "network's prediction when the word is swapped, relative to the prediction. Error increase: how much "
             "worse the swapped prompt predicts the noise of the true prompt's samples.\n",
             "| model | kind | swap | prompts | prediction change | error increase |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['kind']} | {r['swap']} | {r['prompts']} | "
                     f"{100 * r['prediction_change']:.2f} % | {100 * r['error_increase']:+.2f} % |")
    lines += ["", "Mean prediction change per kind: " + ", ".join(f"{k} {100 * v:.2f} %" for k, v in means.items())]
    (results_dir / "word_use.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if "shapes/relation" in means and "shapes/colour" in means:
        update_summary({"word_use_relation_vs_colour": (means["shapes/relation"] / means["shapes/colour"],
                                                        "shapes model: relation-swap / colour-swap prediction change")},
                       env_info, results_dir)
    print("\n".join(lines))
    return {"rows": rows, "means": means}


if __name__ == "__main__":
    main()
