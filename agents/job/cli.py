"""``ddpo train | sample | eval``: the command line over :class:`agents.job.train.TrainConfig`.

    ddpo train [--config job.json|job.toml] [--agent ddpo-is] [--reward jpeg_compressibility] ... [--resume auto]
    ddpo sample --checkpoint runs/train [--prompts "a handwritten 3,the digit seven"]    (→ runs/train/samples.png)
    ddpo eval   --checkpoint runs/train/checkpoints/epoch-000056
    ddpo diagnose --model default --num-steps 20 --png steps.png   (per-step conditioning: ddpo_env.diagnose)
    ddpo diagnose words --model shapes --swap left=right           (does the model use a word: ddpo_env.word_use)
    ddpo diagnose gradients --num-steps 10 ...                      (each step's gradient share, one-sign-step test)

Every field of the config tree (``TrainConfig``: the job, its ``EnvConfig`` and the agent's config) is a flag (its
docstring is the help); a config file gives any of them (flat, or in [env] / [algorithm] sections), and flags
given on the command line win. A setting of another agent than the chosen one is an error. ``--resume`` continues
the saved job with its saved config (flags given on the
command line, e.g. a larger ``--epochs``, still win). ``--prompts`` means the same for every command: comma-separated
prompts, or the path of a text file with one prompt per line.

Bad input answers in one line, ``ddpo <command>: error: ...``, with exit code 2: arguments and settings (each value
is checked against its field's type) before torch is imported, so at once; during a run a bad setting, a missing
file, a folder that already holds a run, a non-finite value or a failing reward (:class:`rewards.RewardError`).
``--debug`` shows the traceback instead.
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

from agents.config import AGENT_CONFIGS
from agents.job.config import TrainConfig, flag_fields
from ddpo_env.config import EnvConfig, is_prompt_file
from rewards.scorer import RewardError

#: The errors a user can fix (bad settings, missing or occupied paths, non-finite values, a failing reward): one line
#: on stderr and exit code 2, unless --debug.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, RewardError)
#: What --prompts takes, for every command.
PROMPTS_HELP = "comma-separated prompts, or the path of a text file with one prompt per line"


def prompts_arg(text: str) -> str | tuple[str, ...]:
    """A ``--prompts`` value: a text file's path (ending in .txt, or naming a file) as given, else the comma-separated
    prompts as a tuple (``"a,b"`` is two prompts; a prompt that holds a comma goes in a file)."""
    if is_prompt_file(text):
        return text
    return tuple(part.strip() for part in text.split(",") if part.strip())


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
    if annotation.startswith("PromptsLike"):
        return prompts_arg
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
        doc = docs.get(name, "") + (f" On the command line: {PROMPTS_HELP}." if name == "prompts" else "")
        flag, help_text = f"--{name.replace('_', '-')}", f"{doc} (default: {shown!r})"
        help_text = help_text.replace("%", "%%")
        if isinstance(default, bool) or str(f.type) == "bool | None":  # None: the field decides (auto)
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
    given = {k: v for k, v in vars(args).items() if k not in ("command", "config", "debug")}
    values = read_config_file(args.config) if args.config else {}
    merged = {**values, **given}
    if merged.get("resume"):  # (the checkpoint code imports torch: only when resuming)
        from agents.job.train import resolve_resume

        path = resolve_resume(merged["resume"], merged.get("output_dir", TrainConfig.output_dir))
        if path is not None:
            values = {**saved_job(path), **values}
    return TrainConfig.from_flat({**values, **given})


def saved_job(checkpoint: str | Path) -> dict[str, Any]:
    """The flat config recorded in a checkpoint (its meta.json also holds the reward history), minus the settings a
    later version no longer has and those of another agent than the saved one."""
    from agents.job.checkpoint import read_meta

    saved = read_meta(checkpoint)["config"]
    agent = saved.get("agent", TrainConfig.agent)
    if agent not in AGENT_CONFIGS:
        raise ValueError(f"checkpoint {checkpoint} was saved by agent {agent!r}, which this version lacks (it has "
                         f"{sorted(AGENT_CONFIGS)}): use the version that wrote it")
    known = {f.name for f in fields(TrainConfig) if f.name not in ("env", "algorithm")}
    known |= {f.name for f in fields(EnvConfig)}
    known |= {f.name for f in fields(AGENT_CONFIGS[agent])}
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
    """--prompts (:func:`prompts_arg`) or --prompt-file (one per line), each --per-prompt times; None: the
    defaults."""
    if args.prompts and args.prompt_file:
        raise ValueError("give --prompts or --prompt-file, not both")
    if not (args.prompts or args.prompt_file):
        return None
    given = args.prompt_file or prompts_arg(args.prompts)
    if isinstance(given, str):
        file = Path(given)
        if not file.is_file():
            raise FileNotFoundError(f"prompt file {given!r} does not exist")
        prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        prompts = list(given)
    if not prompts:
        raise ValueError("no prompts given: --prompts 'a, b' or a --prompt-file with one prompt per line")
    return [p for p in prompts for _ in range(args.per_prompt)]


def run_folder(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/epoch-NNNNNN`` → ``<run>``); a checkpoint
    outside a run's checkpoints/ folder: its parent."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def evaluation_seed(args: argparse.Namespace) -> int:
    """--seed, or the seed of the fixed evaluation set (imported here: agents.job.train imports torch)."""
    from agents.job.train import EVAL_SEED

    return EVAL_SEED if args.seed is None else args.seed


def sample(args: argparse.Namespace) -> None:
    from PIL import Image

    from agents.job.evaluation import evaluate_policy
    from agents.job.train import build_env, evaluation_prompts

    checkpoint = resolve_checkpoint(args.checkpoint)
    prompts = chosen_prompts(args)  # (a missing prompt file is named before the model loads)
    output = Path(args.output) if args.output else run_folder(checkpoint) / "samples.png"
    agent, cfg, env = policy_from_checkpoint(checkpoint, args.device)
    prompts = prompts or [p for p in evaluation_prompts(env)[::10] for _ in range(args.per_prompt)]
    eval_env = build_env(cfg, num_envs=min(len(prompts), 25), model=env.unwrapped.backend)
    result = evaluate_policy(agent.policy, eval_env, prompts, seed=evaluation_seed(args), progress=True)
    cols = args.per_prompt if args.per_prompt > 1 else min(len(prompts), 8)
    Image.fromarray(result.grid(cols)).save(output)
    print(f"{len(prompts)} samples from {checkpoint}: reward {result.rewards.mean():.4f} ± "
          f"{result.rewards.std():.4f}\n  grid written to {output}")


def evaluate(args: argparse.Namespace) -> None:
    from agents.job.evaluation import evaluate_policy
    from agents.job.train import build_env, evaluation_prompts

    checkpoint = resolve_checkpoint(args.checkpoint)
    prompts = chosen_prompts(args)
    agent, cfg, env = policy_from_checkpoint(checkpoint, args.device)
    prompts = prompts or evaluation_prompts(env)
    eval_env = build_env(cfg, num_envs=min(len(prompts), 25), model=env.unwrapped.backend)
    result = evaluate_policy(agent.policy, eval_env, prompts, seed=evaluation_seed(args), progress=True)
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
    add_debug_flag(train_parser)
    add_config_flags(train_parser)
    commands.add_parser("diagnose", add_help=False,
                        help="per-step conditioning of the policy's log-prob; (words) whether the model uses a "
                        "word; (gradients) each step's gradient share and the one-sign-step test (each with --help)")
    for name, text in (("sample", "a captioned grid of samples from a checkpoint"),
                       ("eval", "the reward of a checkpoint on the fixed evaluation prompts and seeds")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--checkpoint", required=True, metavar="PATH",
                         help="a run folder (its newest checkpoint) or a checkpoint (…/checkpoints/epoch-NNNNNN)")
        sub.add_argument("--seed", type=int, default=None,
                         help="seed of x_T and the sampling noise (default: the fixed evaluation set's)")
        sub.add_argument("--device", default=None, help="override the saved run's device")
        default_prompts = "ten of the model's" if name == "sample" else "the 100 fixed evaluation prompts"
        sub.add_argument("--prompts", default="", help=f"{PROMPTS_HELP} (default: {default_prompts})")
        sub.add_argument("--prompt-file", default="", help="a text file with one prompt per line")
        add_debug_flag(sub)
        if name == "sample":
            sub.add_argument("--per-prompt", type=int, default=1, help="samples per prompt (one row each)")
            sub.add_argument("--output", default="", help="where the grid PNG goes (default: samples.png in the "
                             "checkpoint's run folder)")
        else:
            sub.add_argument("--per-prompt", type=int, default=10, help="samples per given prompt (seeds)")
            sub.add_argument("--output", default="", help="also write the report as JSON here")
    return parser


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,  # absent: not a setting
                        help="on an error, show the full traceback instead of one line")


def main(argv: list[str] | None = None) -> None:
    """``ddpo``'s entry point: parse ``argv`` (default: the command line) and run the command; an error the user
    can fix (:data:`USER_ERRORS`) ends in one line on stderr and exit code 2, unless --debug."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["diagnose", "gradients"]:  # the job's flags, one rollout and the one-sign-step test
        from agents.job import diagnose_gradients

        parser = argparse.ArgumentParser(prog="ddpo diagnose gradients", description=diagnose_gradients.__doc__)
        parser.add_argument("--config", default=None, metavar="FILE", help="a job config file (.toml or .json)")
        add_config_flags(parser)
        diagnose_gradients.add_arguments(parser)
        args = parser.parse_args(argv[2:])
        options = {name: vars(args).pop(name) for name in ("step_lr", "controls", "json")}
        diagnose_gradients.run(job_config(args), options["step_lr"], options["controls"], options["json"])
        return
    if argv[:1] == ["diagnose"]:  # its own parser (ddpo_env needs nothing of the agents)
        from ddpo_env.diagnose import main as diagnose

        diagnose(argv[1:])
        return
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            cfg = job_config(args)  # checked before torch loads with the training code
            from agents.job.train import train

            train(cfg)
        elif args.command == "sample":
            sample(args)
        else:
            evaluate(args)
    except USER_ERRORS as error:
        close_progress_bars()
        if getattr(args, "debug", False):
            raise
        print(f"ddpo {args.command}: error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    except BaseException:  # a bug, or Ctrl-C: the traceback, after the progress bars
        close_progress_bars()
        raise


def close_progress_bars() -> None:
    """Close the tqdm bars an error left open, so that the error is the last line of stderr (an open bar ends
    without a newline, and tqdm redraws it when the process exits)."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):  # tqdm's registry of open bars
        bar.close()


def one_line(error: BaseException) -> str:
    """An error's message on one line (a multi-line message is joined; an empty one is the error's class)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


if __name__ == "__main__":
    main()

