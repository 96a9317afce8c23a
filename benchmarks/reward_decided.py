"""Where along the denoising trajectory the reward is decided: ``python -m benchmarks.reward_decided``.

For a model and a reward, G base-model trajectories for each of P prompts; from every state x_k (k = 0 is x_T,
before any action) M continuations to the end with fresh noise. The continuations' mean estimates E[R | x_k], and

    D_k = Var_p(E[R | x_k]) / Var_p(R)        (Var_p: variance among samples of one prompt, averaged over prompts)

is the share of the reward's within-prompt variance already decided at x_k. The variance of an M-sample mean is
corrected by E[s²]/M, Var_p(R) = Var_p(E[R | x_T]) + E[Var(R | x_T)] from the same samples, and D_T = 1 (x_0 is the
image). D_0 belongs to the starting noise, which no action changes; **step k decides D_{k+1} − D_k**: an action
that does not change E[R | x_{k+1}] has a score-function gradient uncorrelated with the reward, so this bounds what
step k's policy gradient can learn from (whether that signal points the same way for every sample is another
question, answered by the split-half cosines of benchmarks.step_gradients). Standard errors come from resampling
the prompts. Per-prompt baselines (GRPO groups, per-prompt statistics) remove the
prompt's own effect, hence the within-prompt variance.

By default the shapes model with ``geneval`` (partial credit), ``geneval_binary`` and ``geneval_strict`` (the partial
credit charged for extra objects) on 64 training prompts, plus ``objects_found`` (not a reward: the number of objects
the verifier detects, to see where the number of objects is decided), and the
default digits model with ``jpeg_compressibility`` for contrast. Writes benchmarks/results/reward_decided.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.record import RESULTS_DIR, command_line, environment, write_json

#: (model, rewards scored on the same images, prompts: a shapes prompt split, or None for the model's own prompts)
CASES: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "shapes": ("shapes", ("geneval", "geneval_binary", "geneval_strict", "objects_found"), "train"),
    "default": ("default", ("jpeg_compressibility",), None),
}


def objects_found(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """The number of objects the verifier detects in each image (prompts unused): a measure, not a reward."""
    from rewards.scene_detect import detect

    return np.array([float(len(detect(image))) for image in images])


#: Measures scored like rewards, by name, besides the built-in rewards.
MEASURES = {"objects_found": objects_found}


def decided_shares(rewards: np.ndarray) -> np.ndarray:
    """D_k for k = 0..T from ``rewards`` (P, G, T, M): the M continuations' rewards from state x_k of trajectory g of
    prompt p; the final image's reward (k = T) needs no continuation, D_T = 1."""
    m = rewards.shape[3]
    means = rewards.mean(axis=3)  # (P, G, T)
    within = rewards.var(axis=3, ddof=1).mean(axis=1)  # (P, T): E_g[s²] per prompt and k
    signal = means.var(axis=1, ddof=1) - within / m  # (P, T): Var_g(E[R | x_k]), unbiased
    variance = (signal[:, 0] + within[:, 0]).mean()  # Var_p(R) = Var(E[R | x_T]) + E[Var(R | x_T)], unbiased
    shares = signal.mean(axis=0) / max(float(variance), 1e-12)
    return np.append(shares, 1.0)


def bootstrap_errors(rewards: np.ndarray, seed: int, draws: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Standard errors of D_k and of the steps' shares D_(k+1) − D_k, from resampling the prompts."""
    rng = np.random.default_rng(seed)
    samples = np.stack([decided_shares(rewards[rng.integers(0, len(rewards), len(rewards))]) for _ in range(draws)])
    return samples.std(axis=0, ddof=1), np.diff(samples, axis=1).std(axis=0, ddof=1)


def measure(model: str, reward_names: tuple[str, ...], split: str | None, num_prompts: int, trajectories: int,
            continuations: int, num_steps: int, seed: int) -> dict[str, Any]:
    """Roll out, branch from every state, score; D_k per reward. ``split``: a shapes prompt split, or None for the
    model's own prompts (the first ``num_prompts`` either way)."""
    import gymnasium as gym

    from ddpo_env.config import EnvConfig
    from ddpo_env.sampler import DDIMSampler
    from ddpo_env.scenes import prompt_set
    from rewards import REWARDS

    config = EnvConfig(model=model, num_steps=num_steps, attention="matmul")
    env = gym.make_vec("DenoisingDiffusion-v0", num_envs=1, config=config).unwrapped
    prompts = list(prompt_set(split) if split else env.prompt_source.prompts or ())[:num_prompts]
    sampler = DDIMSampler(env, seed=seed)
    generator = torch.Generator(device=env.device).manual_seed(seed)
    n_p, g, m, t_steps = len(prompts), trajectories, continuations, env.num_steps
    ids = np.array([env.conditioning.id_of(p) for p in prompts]).repeat(g)  # (P·G,)
    x = torch.randn((n_p * g, *env.latent_shape), generator=generator, device=env.device)

    def advance(latents: torch.Tensor, prompt_ids: np.ndarray, k: int) -> torch.Tensor:
        t = int(env.schedule.timesteps[k])
        obs = {"latent": latents, "timestep": np.full((len(prompt_ids), 1), t), "prompt_id": prompt_ids[:, None]}
        return sampler.step(obs).prev_sample

    states = [x]
    for k in range(t_steps):  # the base trajectories: states[k] is the state before step k, states[T] the image
        states.append(advance(states[-1], ids, k))
    scorers = {name: MEASURES.get(name) or REWARDS[name](**({"upscale": 4} if name.startswith("jpeg") else {}))
               for name in reward_names}
    names = [prompts[i // g] for i in range(n_p * g)]
    rewards = {name: np.zeros((n_p, g, t_steps, m)) for name in reward_names}
    final = {name: s(env.decode_images(states[-1]), names) for name, s in scorers.items()}
    for k in range(t_steps):  # M continuations from each x_k
        branch = states[k].repeat_interleave(m, dim=0)
        branch_ids = ids.repeat(m)
        for j in range(k, t_steps):
            branch = advance(branch, branch_ids, j)
        images = env.decode_images(branch)
        for name, scorer in scorers.items():
            rewards[name][:, :, k, :] = scorer(images, [n for n in names for _ in range(m)]).reshape(n_p, g, m)
    out: dict[str, Any] = {"prompts": prompts}
    for name in reward_names:
        shares = decided_shares(rewards[name])
        errors = bootstrap_errors(rewards[name], seed)
        out[name] = {"decided": shares.tolist(), "step_share": np.diff(shares).tolist(),
                     "decided_se": errors[0].tolist(), "step_share_se": errors[1].tolist(),
                     "reward_mean": float(final[name].mean()), "timesteps": [int(t) for t in env.schedule.timesteps]}
    return out


def markdown(data: dict[str, Any]) -> str:
    env = data["environment"]
    lines = ["# Where the reward is decided along the trajectory", "",
             f"`{env['command']}` — {env['date']}, {env['machine']}, rev {env['git_revision']}", "",
             f"{data['trajectories']} base-model trajectories per prompt, {data['continuations']} continuations from "
             f"every state, {data['num_steps']} DDIM steps (η = 1). D_k: share of the reward's within-prompt variance "
             "decided at state x_k (k = 0: the starting noise); step k decides D_(k+1) − D_k. ± one standard error "
             "from resampling the prompts; negative shares are sampling noise.", ""]
    for result in data["cases"].values():
        for reward, r in result["rewards"].items():
            lines += [f"## {result['model']} model, {reward} ({result['prompts']} prompts)", "",
                      "| step k | t | D_k (decided before the step) | decided by step k |", "|---|---|---|---|"]
            for k, t in enumerate(r["timesteps"]):
                lines.append(f"| {k} | {t} | {r['decided'][k]:.2f} ± {r['decided_se'][k]:.2f} | "
                             f"{r['step_share'][k]:+.2f} ± {r['step_share_se'][k]:.2f} |")
            lines += ["| end | 0 | 1 | |", ""]
    lines.append(f"Wall time: {env.get('wall_minutes', '?')} min.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"from {', '.join(CASES)}")
    parser.add_argument("--prompts", type=int, default=64, help="prompts per case (the first of the split)")
    parser.add_argument("--trajectories", type=int, default=4, help="G: base trajectories per prompt")
    parser.add_argument("--continuations", type=int, default=4, help="M: continuations from each state")
    parser.add_argument("--num-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    if args.trajectories < 2 or args.continuations < 2:
        parser.error("--trajectories and --continuations must be at least 2 (variances are estimated from them)")
    unknown = [c for c in args.cases.split(",") if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}: use {', '.join(CASES)}")
    env_info = environment(command_line("benchmarks.reward_decided", argv))
    start = time.perf_counter()
    cases = {}
    for case in args.cases.split(","):
        model, reward_names, split = CASES[case]
        with torch.no_grad():
            result = measure(model, reward_names, split, args.prompts, args.trajectories, args.continuations,
                             args.num_steps, args.seed)
        cases[case] = {"model": model, "prompts": len(result.pop("prompts")), "rewards": result}
        print(f"{case}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    env_info["wall_minutes"] = round((time.perf_counter() - start) / 60, 1)
    data = {"trajectories": args.trajectories, "continuations": args.continuations, "num_steps": args.num_steps,
            "cases": cases, "environment": env_info}
    results_dir = Path(args.results_dir)
    write_json(results_dir / "reward_decided.json", data)
    text = markdown(data)
    (results_dir / "reward_decided.md").write_text(text, encoding="utf-8")
    print(text)
    return data


if __name__ == "__main__":
    main()
