"""What the shapes model needs to learn positions: ``python -m benchmarks.position_probe``.

The shipped shapes model draws both objects of a position prompt but puts them on either side about equally often,
and RL does not change that (docs/shapes.md). Three measurements separate the candidate causes:

1. **The text.** A linear probe on the frozen MiniLM encoder's token states predicts each object's side (left of,
   right of, above, below) on position prompts it was not fit on: does the conditioning carry the relation?
2. **The data.** The shipped model trained ``--steps`` more steps with half its scenes position scenes
   (``train_shapes --init --category-weights position=5``): does more supervision on positions teach it?
3. **The input.** The same continuation (the same batches, noise and timesteps) with two coordinate channels, the
   pixel's x and y in [-1, 1], appended to the UNet's input; its first convolution is widened with zero weights, so
   it starts as the shipped model: does a UNet that is told where each pixel is learn it?

Each model is scored on the 20 training position prompts × ``--seeds`` samples, 10 DDIM steps (η = 1, the env's
sampler, with the same noise for every model), by the geneval verifier: accuracy, both groups found, and the stated /
opposite relation given both. Writes benchmarks/results/position_probe.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.record import RESULTS_DIR, command_line, environment, write_json
from benchmarks.scene_metrics import category_scores
from ddpo_env.models.embedded import SCHEDULER_CONFIG, load_unet, read_model_index
from ddpo_env.models.shapes import SHAPES_DIR, UNET_CONFIG
from ddpo_env.models.train_shapes import CachedEncoder, ShapesTrainArgs, fit_on_scenes
from ddpo_env.scenes import parse_prompt, prompt_for, prompt_set, sample_spec
from ddpo_env.scenes.spec import OPPOSITE

SIDES = ("left of", "right of", "above", "below")
SHAPE_WORDS, COLOUR_WORDS = ("circle", "square", "triangle"), ("red", "green", "blue", "yellow")


def encoder_probe(num_prompts: int = 3000, seed: int = 0) -> dict[str, float]:
    """Held-out accuracy of a linear probe predicting each object's side from one token state (its shape word's, or
    its colour word's), over distinct position prompts (a third of them held out). A code that knew the relation
    but not which object it is said of would score 50 %."""
    encoder = CachedEncoder().encoder
    rng = np.random.default_rng(seed)
    prompts = sorted({prompt_for(sample_spec("position", rng), rng) for _ in range(num_prompts)})
    states = encoder(prompts)
    ids = encoder.tokenizer(prompts, padding="max_length", max_length=states.shape[1], truncation=True)["input_ids"]
    test = np.random.default_rng(seed + 1).permutation(len(prompts)) < len(prompts) // 3
    out: dict[str, float] = {"prompts": len(prompts)}
    for kind, words in (("shape token", SHAPE_WORDS), ("colour token", COLOUR_WORDS)):
        rows, labels, held = [], [], []
        for n, (prompt, row) in enumerate(zip(prompts, ids, strict=True)):
            relation = parse_prompt(prompt).relation
            at = [i for i, w in enumerate(encoder.tokenizer.convert_ids_to_tokens(row)) if w in words]
            for k, side in zip(at, (relation, OPPOSITE[relation]), strict=True):  # the first object, the second
                rows.append(states[n, k])
                labels.append(SIDES.index(side))
                held.append(test[n])
        x, y, held = torch.stack(rows), torch.tensor(labels), torch.tensor(held)
        x = (x - x[~held].mean(0)) / (x[~held].std(0) + 1e-6)
        out[kind] = _linear_probe(x[~held], y[~held], x[held], y[held])
    return out


def _linear_probe(x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor) -> float:
    weight = torch.zeros(x.shape[1], len(SIDES), requires_grad=True)
    bias = torch.zeros(len(SIDES), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=300)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + 1e-3 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float(((x_test @ weight + bias).argmax(1) == y_test).float().mean())


class CoordinateUNet(torch.nn.Module):
    """A UNet2DConditionModel given two more input channels: each pixel's x and y in [-1, 1]."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet
        axis = torch.linspace(-1, 1, UNET_CONFIG["sample_size"])
        self.register_buffer("grid", torch.stack(torch.meshgrid(axis, axis, indexing="xy")))  # (2, H, W): x, y

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor):
        grid = self.grid.to(sample.dtype).expand(len(sample), -1, -1, -1)
        return self.unet(torch.cat([sample, grid], 1), timestep, encoder_hidden_states=encoder_hidden_states)


def with_coordinates(unet: torch.nn.Module) -> CoordinateUNet:
    """``unet``'s weights in a UNet with two more input channels whose weights are zero: the same outputs."""
    from diffusers import UNet2DConditionModel

    wide = UNet2DConditionModel(**{**UNET_CONFIG, "in_channels": UNET_CONFIG["in_channels"] + 2})
    state = unet.state_dict()
    weight = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([weight, weight.new_zeros(weight.shape[0], 2, *weight.shape[2:])], 1)
    wide.load_state_dict(state)
    return CoordinateUNet(wide)


@torch.no_grad()
def sample(unet: torch.nn.Module, prompts: list[str], encode: CachedEncoder, num_steps: int = 10,
           seed: int = 0, batch: int = 64) -> np.ndarray:
    """Images (N, 32, 32, 3) uint8 by DDIM with η = 1, the same x_T and noise for every model (by ``seed``). Not
    the env: its backends take the image channels from the UNet's inputs, which the coordinate arm widens."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    scheduler.set_timesteps(num_steps)
    unet.eval()
    out = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        g = torch.Generator().manual_seed(seed + start)
        x = torch.randn(len(chunk), 3, UNET_CONFIG["sample_size"], UNET_CONFIG["sample_size"], generator=g)
        cond = encode(chunk)
        for t in scheduler.timesteps:
            eps = unet(x, t, encoder_hidden_states=cond).sample
            x = scheduler.step(eps, t, x, eta=1.0, generator=g).prev_sample
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def score(unet: torch.nn.Module, prompts: list[str], encode: CachedEncoder) -> dict[str, float]:
    scores = category_scores(sample(unet, prompts, encode), prompts)
    return {"accuracy": scores["categories"]["position"]["accuracy"], **scores["relations"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1200, help="training steps each continuation adds")
    parser.add_argument("--seeds", type=int, default=16, help="samples per position prompt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--control", default="", help="a folder already trained by python -m "
                        "ddpo_env.models.train_shapes --init ddpo_env/models/shapes with this probe's settings "
                        "(its model_index.json is checked): used as the data arm instead of training it again")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    env_info = environment(command_line("benchmarks.position_probe", argv))
    train_args = ShapesTrainArgs(steps=args.steps, lr=3e-4, warmup_steps=50, category_weights="position=5",
                                 init=str(SHAPES_DIR), out="")
    settings = {k: v for k, v in dataclasses.asdict(train_args).items() if k not in ("out", "init", "threads")}
    if args.control:
        theirs = read_model_index(args.control)["training"]
        mismatched = {k: (theirs.get(k), v) for k, v in settings.items() if theirs.get(k) != v}
        if mismatched:
            parser.error(f"--control {args.control} was trained with other settings (theirs, the probe's): "
                         f"{mismatched}; train it with python -m ddpo_env.models.train_shapes --init "
                         f"ddpo_env/models/shapes --steps {args.steps} --lr 3e-4 --warmup-steps 50 "
                         "--category-weights position=5, or drop --control")

    start = time.perf_counter()
    encode = CachedEncoder()
    text = encoder_probe()
    print(f"encoder probe: {text}", flush=True)
    prompts = [p for p in prompt_set("train") if parse_prompt(p).category == "position" for _ in range(args.seeds)]
    rows: dict[str, dict] = {"shipped model": {**score(load_unet(SHAPES_DIR), prompts, encode), "minutes": 0.0}}
    print(f"shipped: {rows['shipped model']}", flush=True)
    for name, coordinates in (("+ position data", False), ("+ position data, coordinate input", True)):
        t0 = time.perf_counter()
        reused = bool(args.control) and not coordinates
        if reused:
            model = load_unet(args.control)
        else:
            from diffusers.models.attention_processor import AttnProcessor

            base = load_unet(SHAPES_DIR).train()
            base.set_attn_processor(AttnProcessor())
            model = fit_on_scenes(with_coordinates(base) if coordinates else base, train_args, encode)[0]
        rows[name] = {**score(model, prompts, encode), "minutes": (time.perf_counter() - t0) / 60,
                      "trained_here": not reused}
        print(f"{name}: {rows[name]}", flush=True)
    data = {"encoder_probe": text, "rows": rows, "training": settings, "samples": len(prompts),
            "minutes": (time.perf_counter() - start) / 60, "environment": env_info}
    results_dir = Path(args.results_dir)
    write_json(results_dir / "position_probe.json", data)
    (results_dir / "position_probe.md").write_text(report(data), encoding="utf-8")
    print(report(data))
    return data


def report(data: dict) -> str:
    env, text, t = data["environment"], data["encoder_probe"], data["training"]
    lines = [
        "# What the shapes model needs to learn positions\n",
        f"`{env['command']}` — {env['date']}, {env['machine']}, rev {env['git_revision']}; "
        f"{data['minutes']:.1f} min\n",
        "## 1. The text encoder's token states\n",
        f"A linear probe on one frozen MiniLM token state predicts that object's side, on a third of "
        f"{text['prompts']} distinct position prompts held out of the fit (chance 25 %; knowing the relation but not "
        "which object it is said of: 50 %):\n",
        "| token | side predicted |", "|---|---|",
        f"| the object's shape word | {text['shape token']:.1%} |",
        f"| the object's colour word | {text['colour token']:.1%} |",
        "\n## 2–3. Position data, and coordinate input\n",
        f"Both continuations start from the shipped model: {t['steps']} steps × {t['batch_size']} scenes, "
        f"{t['category_weights']} (half the scenes position scenes), lr {t['lr']:g} (warm-up {t['warmup_steps']}, "
        f"cosine to 0), min-SNR-{t['snr_gamma']:g}, EMA {t['ema_decay']}, seed {t['seed']}: the same batches, "
        f"noise and timesteps. Scored on the 20 training position prompts, {data['samples']} samples, 10 DDIM "
        "steps (η = 1) with the same noise for every model.\n",
        "| model | position accuracy | both objects found | stated relation, given both | opposite relation, "
        "given both | min |",
        "|---|---|---|---|---|---|",
        *[f"| {name} | {r['accuracy']:.1%} | {r['both_found']:.0%} | {r['relation_given_both']:.0%} | "
          f"{r['opposite_given_both']:.0%} | {r['minutes']:.1f}{'' if r.get('trained_here', True) else ' (--control)'}"
          " |" for name, r in data["rows"].items()],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
