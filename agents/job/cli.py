"""``ddpo train | sample | eval``: the command line over :class:`agents.job.train.TrainConfig`.

    ddpo train [--config job.json|job.toml] [--agent ddpo-is] [--reward jpeg_compressibility] ... [--resume auto]
    ddpo sample --checkpoint runs/train/checkpoints/epoch-000056 [--prompts "a handwritten 3,the digit seven"]
    ddpo eval   --checkpoint runs/train/checkpoints/epoch-000056
    ddpo diagnose --model default --num-steps 20 --png steps.png   (per-step conditioning: ddpo_env.diagnose)

Every field of the config tree (``TrainConfig``: the job, its ``EnvConfig`` and the agent's config) is a flag (its
docstring is the help); a config file gives any of them (flat, or in [env] / [algorithm] sections), and flags
given on the command line win. A setting of another agent than the chosen one is an error. ``--resume`` continues
the saved job with its saved config (flags given on the
command line, e.g. a larger ``--epochs``, still win).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import itertools
import json
import sys
from collections.abc import Callable
from dataclasses import MISSING, fields
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from agents.job.config import TrainConfig, agent_classes, flag_fields
from agents.job.train import EVAL_SEED
from ddpo_env.config import EnvConfig


def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass (its docstring), for the class and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            body = ast.parse(inspect.getsource(klass)).body[0].body
        except (OSError, TypeError, IndexError, AttributeError):
            continue
        for node, after in itertools.pairwise(body):
            if (isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant)):
                docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def _flag_type(annotation: str, default: Any) -> Callable[[str], Any]:
    """How a flag's text becomes the field's value, from the field's annotation (a string: postponed annotations)."""
    if annotation.startswith("dict"):
        return json.loads
    if annotation.startswith("tuple[str"):
        return lambda text: tuple(part.strip() for part in text.split(",") if part.strip())
    if annotation.startswith("int | tuple"):  # image_size: 16 or 16,24
        return lambda text: int(text) if "," not in text else tuple(int(p) for p in text.split(","))
    for name, kind in (("int", int), ("float", float)):
        if annotation.split(" ")[0] == name:
            return kind
    return type(default) if default not in (None, "") and not isinstance(default, (str, Enum)) else str


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field of the config tree (job, env, agents), in argument groups; defaults are SUPPRESSed so the
    parsed namespace holds only the given flags (the dataclasses hold the one default of each)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    docs_of: dict[type, dict[str, str]] = {}
    for title, name, f, cls in flag_fields():
        group = groups.setdefault(title, parser.add_argument_group(title))
        docs = docs_of.setdefault(cls, field_docs(cls))
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        shown = getattr(default, "value", default)
        shown = ",".join(shown) if isinstance(shown, tuple) else shown
        flag, help_text = f"--{name.replace('_', '-')}", f"{docs.get(name, '')} (default: {shown!r})"
        help_text = help_text.replace("%", "%%")
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            kind = _flag_type(str(f.type), default)
            group.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text,
                               metavar="JSON" if kind is json.loads else name.upper())


def read_config_file(path: str) -> dict[str, Any]:
    """A job config from .json or .toml: flat keys, or the tree's sections [env] and [algorithm] (merged into the
    flat view); unknown keys are refused when the config is built (:meth:`TrainConfig.from_flat`)."""
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
    flat = {k: v for k, v in values.items() if k not in ("env", "algorithm")}
    for section in ("env", "algorithm"):
        part = values.get(section, {})
        if not isinstance(part, dict):
            raise ValueError(f"config file {path!r}: [{section}] must be a table of settings")
        clash = sorted(set(part) & set(flat))
        if clash:
            raise ValueError(f"config file {path!r} sets {clash} twice (top level and [{section}])")
        flat.update(part)
    try:
        known = {name for _, name, _, _ in flag_fields()}
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ValueError(f"unknown keys {unknown}")
        TrainConfig.from_flat(flat)
    except (ValueError, TypeError) as e:
        raise ValueError(f"config file {path!r}: {e}") from None
    return flat


def job_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults < saved config of the resumed checkpoint < config file < command-line flags."""
    from agents.job.train import resolve_resume

    given = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    values = read_config_file(args.config) if args.config else {}
    merged = {**values, **given}
    path = resolve_resume(merged.get("resume", ""), merged.get("output_dir", TrainConfig.output_dir))
    if path is not None:
        values = {**saved_job(path), **values}
    return TrainConfig.from_flat({**values, **given})


def saved_job(checkpoint: str | Path) -> dict[str, Any]:
    """The flat config recorded in a checkpoint (its meta.json also holds the reward history), minus the settings a
    later version no longer has and those of another agent than the saved one."""
    from agents.job.checkpoint import read_meta

    saved = read_meta(checkpoint)["config"]
    agent = saved.get("agent", TrainConfig.agent)
    known = {f.name for f in fields(TrainConfig) if f.name not in ("env", "algorithm")}
    known |= {f.name for f in fields(EnvConfig)}
    known |= {f.name for f in fields(agent_classes()[agent].config_class)}
    return {k: v for k, v in saved.items() if k in known}


def resolve_checkpoint(path: str) -> Path:
    """A checkpoint folder, or the newest checkpoint of a run folder (or of its checkpoints/ folder)."""
    from agents.job.checkpoint import latest_checkpoint

    folder = Path(path)
    if (folder / "meta.json").is_file():
        return folder
    for root in (folder / "checkpoints", folder):
        newest = latest_checkpoint(root) if root.is_dir() else None
        if newest is not None:
            return newest
    raise FileNotFoundError(f"{path} holds no checkpoint: pass a run folder (e.g. runs/train), its checkpoints/ "
                            "folder or one checkpoint (…/checkpoints/epoch-000010)")


def policy_from_checkpoint(checkpoint: Path, device: str | None) -> tuple[Any, TrainConfig, Any]:
    """(agent with the checkpoint's trained weights, its job config, its env) for sampling and evaluation."""
    from agents.job.checkpoint import load_weights
    from agents.job.train import build_agent, build_env

    cfg = TrainConfig.from_flat({**saved_job(checkpoint), **({"device": device} if device else {})})
    env = build_env(cfg)
    agent = build_agent(cfg, env)
    load_weights(agent.policy, checkpoint, ema=True)  # the EMA weights when the run kept them
    return agent, cfg, env


def chosen_prompts(args: argparse.Namespace) -> list[str] | None:
    """--prompts (comma-separated) or --prompt-file (one per line), each --per-prompt times; None: the defaults."""
    if args.prompts and args.prompt_file:
        raise ValueError("give --prompts or --prompt-file, not both")
    if args.prompt_file:
        file = Path(args.prompt_file)
        if not file.is_file():
            raise FileNotFoundError(f"prompt file {args.prompt_file!r} does not exist")
        prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif args.prompts:
        prompts = [p.strip() for p in args.prompts.split(",") if p.strip()]
    else:
        return None
    if not prompts:
        raise ValueError("no prompts given: --prompts 'a, b' or a --prompt-file with one prompt per line")
    return [p for p in prompts for _ in range(args.per_prompt)]


def sample(args: argparse.Namespace) -> None:
    from PIL import Image

    from agents.job.evaluation import evaluate_policy
    from agents.job.train import build_env, evaluation_prompts

    checkpoint = resolve_checkpoint(args.checkpoint)
    agent, cfg, env = policy_from_checkpoint(checkpoint, args.device)
    prompts = chosen_prompts(args) or [p for p in evaluation_prompts(env)[::10] for _ in range(args.per_prompt)]
    eval_env = build_env(cfg, num_envs=min(len(prompts), 25), model=env.unwrapped.backend)
    result = evaluate_policy(agent.policy, eval_env, prompts, seed=args.seed, progress=True)
    cols = args.per_prompt if args.per_prompt > 1 else min(len(prompts), 8)
    Image.fromarray(result.grid(cols)).save(args.output)
    print(f"{len(prompts)} samples from {checkpoint}: reward {result.rewards.mean():.4f} ± "
          f"{result.rewards.std():.4f}\n  {args.output}")


def evaluate(args: argparse.Namespace) -> None:
    from agents.job.evaluation import evaluate_policy
    from agents.job.train import build_env, evaluation_prompts

    checkpoint = resolve_checkpoint(args.checkpoint)
    agent, cfg, env = policy_from_checkpoint(checkpoint, args.device)
    prompts = chosen_prompts(args) or evaluation_prompts(env)
    eval_env = build_env(cfg, num_envs=min(len(prompts), 25), model=env.unwrapped.backend)
    result = evaluate_policy(agent.policy, eval_env, prompts, seed=args.seed, progress=True)
    report = {"checkpoint": str(checkpoint), "reward": cfg.reward, "samples": len(prompts),
              "reward_mean": float(result.rewards.mean()), "reward_std": float(result.rewards.std()),
              "per_prompt": {p: float(np.mean(result.rewards[[q == p for q in prompts]]))
                             for p in dict.fromkeys(prompts)}}
    print(json.dumps(report, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddpo", description="RL fine-tuning of diffusion models (DDPO).")
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser(
        "train", help="train an agent (resumable)", usage="ddpo train [--config FILE] [--SETTING VALUE ...]",
        description="Train an agent on DenoisingDiffusion-v0. Every setting of the job, the environment and the agent "
        "is a flag; a config file (.toml/.json, flat or with [env] and [algorithm] sections) gives any of them and "
        "flags win. --resume auto continues the saved job with its saved settings.")
    train_parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, max_help_position=36, width=118)
    train_parser.add_argument("--config", default=None, metavar="FILE",
                              help="a .toml or .json file of settings (any of the flags below, without --)")
    add_config_flags(train_parser)
    commands.add_parser("diagnose", add_help=False,
                        help="per-step conditioning of the policy's log-prob (ddpo diagnose --help for its flags)")
    for name, text in (("sample", "a captioned grid of samples from a checkpoint"),
                       ("eval", "the reward of a checkpoint on the fixed evaluation prompts and seeds")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--checkpoint", required=True, metavar="PATH",
                         help="a run folder (its newest checkpoint) or a checkpoint (…/checkpoints/epoch-NNNNNN)")
        sub.add_argument("--seed", type=int, default=EVAL_SEED, help="seed of x_T and the sampling noise")
        sub.add_argument("--device", default=None, help="override the saved run's device")
        default_prompts = "ten of the model's" if name == "sample" else "the 100 fixed evaluation prompts"
        sub.add_argument("--prompts", default="", help=f"comma-separated prompts (default: {default_prompts})")
        sub.add_argument("--prompt-file", default="", help="a text file with one prompt per line")
        if name == "sample":
            sub.add_argument("--per-prompt", type=int, default=1, help="samples per prompt (one row each)")
            sub.add_argument("--output", default="samples.png", help="where the grid PNG goes")
        else:
            sub.add_argument("--per-prompt", type=int, default=10, help="samples per given prompt (seeds)")
            sub.add_argument("--output", default="", help="also write the report as JSON here")
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["diagnose"]:  # its own parser (ddpo_env needs nothing of the agents)
        from ddpo_env.diagnose import main as diagnose

        diagnose(argv[1:])
        return
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            from agents.job.train import train

            train(job_config(args))
        elif args.command == "sample":
            sample(args)
        else:
            evaluate(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"ddpo {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

