"""``ddpo train | sample | eval``: the command line over :class:`agents.train.TrainConfig`.

    ddpo train [--config job.json|job.toml] [--agent ddpo-is] [--reward jpeg_compressibility] ... [--resume auto]
    ddpo sample --checkpoint runs/train/checkpoints/epoch-000056 [--prompts "a handwritten 3,the digit seven"]
    ddpo eval   --checkpoint runs/train/checkpoints/epoch-000056

Every ``TrainConfig`` field is a flag (its docstring is the help); a config file gives any of them, and flags
given on the command line win. ``--resume`` continues the saved job with its saved config (flags given on the
command line, e.g. a larger ``--epochs``, still win).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import itertools
import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import numpy as np

from agents.train import EVAL_SEED, TrainConfig


def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass (its docstring)."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {}
    for node, after in itertools.pairwise(body):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; defaults are SUPPRESSed so the parsed namespace holds only given flags."""
    docs = field_docs(TrainConfig)
    for f in fields(TrainConfig):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        flag, help_text = f"--{f.name.replace('_', '-')}", f"{docs.get(f.name, '')} (default: {default!r})"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        elif isinstance(default, dict):
            parser.add_argument(flag, type=json.loads, default=argparse.SUPPRESS, metavar="JSON", help=help_text)
        else:
            parser.add_argument(flag, type=type(default), default=argparse.SUPPRESS, help=help_text)


def read_config_file(path: str) -> dict[str, Any]:
    """A job config from .json or .toml; unknown keys are an error that lists the known ones."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {path!r} does not exist")
    if file.suffix == ".toml":
        if sys.version_info < (3, 11):
            raise ValueError(f"config file {path!r}: TOML needs Python 3.11 or newer; use a .json file")
        import tomllib

        values = tomllib.loads(file.read_text(encoding="utf-8"))
    elif file.suffix == ".json":
        values = json.loads(file.read_text(encoding="utf-8"))
    else:
        raise ValueError(f"config file {path!r}: use a .json or .toml file")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"config file {path!r} has unknown keys {unknown}: known keys are {sorted(known)}")
    return values


def job_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults < saved config of the resumed checkpoint < config file < command-line flags."""
    from agents.train import resolve_resume

    given = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    values = read_config_file(args.config) if args.config else {}
    merged = {**values, **given}
    path = resolve_resume(merged.get("resume", ""), merged.get("output_dir", TrainConfig.output_dir))
    if path is not None:
        values = {**saved_job(path), **values}
    return TrainConfig(**{**values, **given})


def saved_job(checkpoint: str | Path) -> dict[str, Any]:
    """The TrainConfig fields recorded in a checkpoint (its meta.json also holds the reward history)."""
    from agents.checkpoint import read_meta

    known = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in read_meta(checkpoint)["config"].items() if k in known}


def policy_from_checkpoint(checkpoint: str, device: str | None) -> tuple[Any, TrainConfig, Any]:
    """(agent with the checkpoint's trained weights, its job config, its env) for sampling and evaluation."""
    from agents.checkpoint import load_weights
    from agents.train import build_agent, build_env

    cfg = TrainConfig(**saved_job(checkpoint))
    if device:
        cfg.device = device
    env = build_env(cfg)
    agent = build_agent(cfg, env)
    load_weights(agent.policy, checkpoint, ema=True)  # the EMA weights when the run kept them
    return agent, cfg, env


def sample(args: argparse.Namespace) -> None:
    from PIL import Image

    from agents.evaluation import evaluate_policy
    from agents.train import build_env, evaluation_prompts

    agent, cfg, env = policy_from_checkpoint(args.checkpoint, args.device)
    prompts = [p.strip() for p in args.prompts.split(",")] if args.prompts else evaluation_prompts(env)[::10]
    prompts = [p for p in prompts for _ in range(args.per_prompt)]
    eval_env = build_env(cfg, num_envs=min(len(prompts), 25), model=env.unwrapped.backend)
    result = evaluate_policy(agent.policy, eval_env, prompts, seed=args.seed)
    cols = args.per_prompt if args.per_prompt > 1 else min(len(prompts), 8)
    Image.fromarray(result.grid(cols)).save(args.output)
    print(f"{len(prompts)} samples from {args.checkpoint}: reward {result.rewards.mean():.4f} ± "
          f"{result.rewards.std():.4f}\n  {args.output}")


def evaluate(args: argparse.Namespace) -> None:
    from agents.evaluation import evaluate_policy
    from agents.train import build_env, evaluation_prompts

    agent, cfg, env = policy_from_checkpoint(args.checkpoint, args.device)
    prompts = evaluation_prompts(env)
    eval_env = build_env(cfg, num_envs=25, model=env.unwrapped.backend)
    result = evaluate_policy(agent.policy, eval_env, prompts, seed=args.seed)
    report = {"checkpoint": str(args.checkpoint), "reward": cfg.reward, "samples": len(prompts),
              "reward_mean": float(result.rewards.mean()), "reward_std": float(result.rewards.std()),
              "per_prompt": {p: float(np.mean(result.rewards[[q == p for q in prompts]]))
                             for p in dict.fromkeys(prompts)}}
    print(json.dumps(report, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddpo", description="RL fine-tuning of diffusion models (DDPO).")
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train an agent (resumable)", description=__doc__)
    train_parser.add_argument("--config", default=None, help="a .json or .toml file of TrainConfig fields")
    add_config_flags(train_parser)
    for name, text in (("sample", "a captioned grid of samples from a checkpoint"),
                       ("eval", "the reward of a checkpoint on the fixed evaluation prompts and seeds")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--checkpoint", required=True, help="a checkpoint folder (…/checkpoints/epoch-NNNNNN)")
        sub.add_argument("--seed", type=int, default=EVAL_SEED, help="seed of x_T and the sampling noise")
        sub.add_argument("--device", default=None, help="override the saved run's device")
        if name == "sample":
            sub.add_argument("--prompts", default="", help="comma-separated prompts (default: ten of the model's)")
            sub.add_argument("--per-prompt", type=int, default=1, help="samples per prompt (one row each)")
            sub.add_argument("--output", default="samples.png", help="where the grid PNG goes")
        else:
            sub.add_argument("--output", default="", help="also write the report as JSON here")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            from agents.train import train

            train(job_config(args))
        elif args.command == "sample":
            sample(args)
        else:
            evaluate(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"ddpo {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

