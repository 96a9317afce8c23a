"""The compositional task as the shapes-model benchmarks run it: presets, agent settings, evaluation prompts and
seeds, the job that trains (or not) and samples, and the verifier's scores per split.

Shared by :mod:`benchmarks.compositional` (and its report), :mod:`benchmarks.compositional_sweep` and
:mod:`benchmarks.compositional_oracle`, so that all of them score on the same prompts and seeds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from agents.hooks import EpochEndCallback
from benchmarks.harness import SettingsSource, output_dir
from benchmarks.reward_curve import TrainingClock

#: Each benchmark agent as the training job's settings, measured on this task (benchmarks.compositional_sweep;
#: docs/shapes.md). The policy-gradient agents train only the first 4 of the 10 steps: training more of the later
#: steps learns less, although those steps decide much of the reward (benchmarks.reward_decided): their gradients
#: are larger and do not agree between samples (benchmarks.step_gradients). 3e-3 is the best of 1e-3, 3e-3 and 1e-2.
#: RWR regresses onto the model's own samples and degrades it at 1e-3; at 1e-4 it holds the base model's score.
SKIP_LAST_STEPS = 6
AGENT_SETTINGS: dict[str, dict[str, Any]] = {
    "ddpo-is": {"agent": "ddpo-is", "clip_range": 1e-3, "learning_rate": 3e-3, "skip_last_steps": SKIP_LAST_STEPS},
    "grpo": {"agent": "ddpo-is", "clip_range": 1e-3, "learning_rate": 3e-3, "skip_last_steps": SKIP_LAST_STEPS,
             "group_advantages": True, "group_size": 8},
    "ddpo-sf": {"agent": "ddpo-sf", "learning_rate": 3e-3, "skip_last_steps": SKIP_LAST_STEPS},
    "rwr": {"agent": "rwr", "temperature": 1.0, "learning_rate": 1e-4},
    # the matching losses on final samples train every step (the papers draw the noise level at random), with the
    # advantages of GRPO-style groups of 8, as both papers use
    # MixGRPO's windowed SDE: GRPO's trained steps 0-3 sampled stochastically, steps 4-9 by the deterministic ODE step
    "grpo-window": {"agent": "ddpo-is", "clip_range": 1e-3, "learning_rate": 3e-3, "skip_last_steps": SKIP_LAST_STEPS,
                    "group_advantages": True, "group_size": 8, "sde_window": 10 - SKIP_LAST_STEPS},
    # GRPO with each trained step's log-likelihood weighted by the measured norm of its gradient (agents/step_weights)
    "grpo-balanced": {"agent": "ddpo-is", "clip_range": 1e-3, "learning_rate": 3e-3,
                      "skip_last_steps": SKIP_LAST_STEPS, "group_advantages": True, "group_size": 8,
                      "step_weights": "gradient"},
    "awm": {"agent": "awm", "learning_rate": 1e-3, "group_advantages": True, "group_size": 8},
    "diffusion-nft": {"agent": "diffusion-nft", "learning_rate": 1e-3, "group_advantages": True, "group_size": 8},
}
PRESET_STEPS = 10  # the episode length the skip above was measured for
#: Where :data:`AGENT_SETTINGS` came from: the sweep scored its settings on the prompts and seeds the benchmark reports.
SETTINGS_FROM = SettingsSource(
    "test", "benchmarks.compositional_sweep (GRPO-style DDPO-IS, training seeds 0 and 1, two of the three reported) "
    "scored every setting on the same training and held-out evaluation prompts and sampling seeds as this benchmark; "
    "it chose skip 6 at 3e-3 on the first shapes model and confirms it on the current one. RWR's 1e-4: a `ddpo "
    "train` job at 1e-3 (seed 0, scored on its own 100 evaluation samples) degraded the model.")


def agent_settings(agent: str, num_steps: int) -> dict[str, Any]:
    """:data:`AGENT_SETTINGS` of ``agent`` for ``num_steps``-step episodes: the skip scaled from 10 steps, so the same
    early part of the noise schedule is trained (at least one step). The untrained model's job takes DDPO-IS's."""
    settings = dict(AGENT_SETTINGS.get(agent, AGENT_SETTINGS["ddpo-is"]))
    if "skip_last_steps" in settings and num_steps != PRESET_STEPS:
        settings["skip_last_steps"] = min(num_steps - 1, round(SKIP_LAST_STEPS * num_steps / PRESET_STEPS))
    if "sde_window" in settings:  # the window covers the trained steps
        settings["sde_window"] = num_steps - settings["skip_last_steps"]
    return settings


PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"model": "shapes", "device": "cpu", "epochs": 14, "samples_per_epoch": 64, "num_envs": 16,
            "batch_size": 32, "lora_rank": 4, "num_steps": 10, "steps_per_pass": 3, "attention": "matmul"},
    "gpu": {"model": "shapes", "device": "cuda", "epochs": 60, "samples_per_epoch": 256, "num_envs": 64,
            "batch_size": 128, "lora_rank": 4, "num_steps": 10},
}
REWARD = "geneval"
#: The training rewards the benchmarks offer (``--reward``), with what each is, for the reports.
REWARDS = {"geneval": "the verifier's partial credit",
           "geneval_strict": "the verifier's partial credit × asked / max(asked, found): extra objects cost reward"}
EVAL_SEED = 10_000  # x_T and noise of the evaluation samples: the same for the base model and every run
VALIDATION_SEED = 20_000  # x_T and noise of the validation samples, where sweeps choose settings
BASE = "base"  # the untrained model's evaluation job
SPLITS = ("train", "heldout")
#: The two evaluation sets, each with the two splits above. ``test`` is what the benchmark tables report: the
#: training prompts and the held-out prompts at EVAL_SEED. ``validation`` is where settings are chosen, disjoint from
#: it in seeds and prompts: the training prompts at VALIDATION_SEED, and as its "heldout" split the unseen prompts
#: (:func:`unseen_prompts`) at VALIDATION_SEED.
EVAL_SETS = ("test", "validation")
#: The settings of a benchmark job that the report does not need: no TensorBoard, images or extra checkpoints.
QUIET = {"tensorboard": False, "image_every": 0, "save_every": 0, "keep_last": 1}


def unseen_prompts() -> tuple[str, ...]:
    """Prompts of the training distribution (no held-out combination) that are neither training nor held-out prompts:
    a second draw of the training set's generator (seed 1) without the prompts of both test splits, categories
    interleaved. Single- and two-object prompts are all training prompts already, so it has the other four
    categories. The validation set's second split."""
    from ddpo_env.scenes import prompt_set

    taken = set(prompt_set("train")) | set(prompt_set("heldout"))
    return tuple(p for p in prompt_set("train", seed=1) if p not in taken)


def eval_prompts(split: str, eval_seeds: int, limit: int = 0, eval_set: str = "test") -> list[str]:
    """The prompts of a split of an evaluation set (:data:`EVAL_SETS`; its first ``limit`` when > 0), each
    ``eval_seeds`` times in a row."""
    from ddpo_env.scenes import prompt_set

    if eval_set not in EVAL_SETS:
        raise ValueError(f"unknown evaluation set {eval_set!r}: use one of {EVAL_SETS}")
    prompts = unseen_prompts() if (eval_set, split) == ("validation", "heldout") else prompt_set(split)
    prompts = prompts[:limit] if limit > 0 else prompts
    return [p for p in prompts for _ in range(eval_seeds)]


def eval_seed(eval_set: str) -> int:
    """The first x_T / noise seed of an evaluation set's samples."""
    return VALIDATION_SEED if eval_set == "validation" else EVAL_SEED


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """--eval-seeds and --eval-prompts: how much of the evaluation set a benchmark samples."""
    parser.add_argument("--eval-seeds", type=int, default=2, help="evaluation samples per prompt")
    parser.add_argument("--eval-prompts", type=int, default=0,
                        help="evaluate on the first N prompts of each split only (0: all; for smoke tests)")


def eval_signature(eval_seeds: int, limit: int, eval_set: str = "test") -> dict[str, Any]:
    """What a results JSON records of its evaluation set, and ``--resume`` checks: which set, samples per prompt and
    the prompts of each split."""
    return {"eval_set": eval_set, "eval_seeds": eval_seeds,
            "eval_prompts": {split: len(eval_prompts(split, 1, limit, eval_set)) for split in SPLITS}}


def saved_eval_signature(saved: dict[str, Any]) -> dict[str, Any]:
    """:func:`eval_signature` of a saved JSON; one saved before a field was recorded ran with its default."""
    default = eval_signature(2, 0)
    return {key: saved.get(key, value) for key, value in default.items()}


def training_prompts(categories: list[str]) -> list[str]:
    """The training prompts of these GenEval categories (``--categories``)."""
    from ddpo_env.scenes import parse_prompt, prompt_set

    return [p for p in prompt_set("train") if parse_prompt(p).category in categories]


def eval_env(backend: Any, cfg: Any) -> Any:
    """The evaluation env of a job on ``backend``'s model (not its training env)."""
    from agents.job.train import build_env

    return build_env(cfg, num_envs=min(29, cfg.num_envs * 2), model=backend)


def evaluate(policy: Any, backend: Any, cfg: Any, eval_seeds: int, limit: int, eval_set: str = "test"
             ) -> dict[str, Any]:
    """Samples of ``policy`` for the prompts of both splits of an evaluation set: images and per-sample KL to the
    base model."""
    from agents.job.evaluation import evaluate_policy

    env = eval_env(backend, cfg)
    out = {}
    for split in SPLITS:
        prompts = eval_prompts(split, eval_seeds, limit, eval_set)
        result = evaluate_policy(policy, env, prompts, seed=eval_seed(eval_set), kl=policy.lora_rank > 0)
        out[split] = {"images": result.images, "kl": result.kl, "prompts": prompts}
    return out


class EvaluationCurve(EpochEndCallback):
    """Every ``every`` epochs and after the last, the verifier's score of the policy on one sample of each training
    prompt of an evaluation set (the set's seed; ``limit`` as in :func:`eval_prompts`): ``points`` holds per
    evaluation the epoch, the samples trained on, the training seconds so far (these evaluations left out), the
    binary accuracy (mean over categories) and the partial credit; also the process's CPU seconds of training (with
    one torch thread per job, what the time would be on an idle core when other jobs share the machine).
    Samples-to-score reads it."""

    def __init__(self, cfg: Any, every: int, limit: int, eval_set: str = "test") -> None:
        super().__init__()
        self.cfg, self.every, self.eval_set = cfg, every, eval_set
        self.prompts = eval_prompts("train", 1, limit, eval_set)
        self.points: list[dict[str, float]] = []
        self._env: Any = None
        self.clock = TrainingClock()

    def on_epoch_end(self) -> None:
        from agents.job.evaluation import evaluate_policy
        from benchmarks.scene_metrics import category_scores

        agent, epoch = self.model, self.model.num_epochs
        if epoch % self.every and epoch != self.cfg.epochs:
            return
        times = self.clock.training()
        with self.clock.evaluating():
            if self._env is None:
                self._env = eval_env(agent.diffusion_env.backend, self.cfg)
            with agent.ema_weights():
                result = evaluate_policy(agent.policy, self._env, self.prompts, seed=eval_seed(self.eval_set))
            scores = category_scores(result.images, self.prompts)
            self.points.append({"epoch": epoch, "samples": epoch * self.cfg.samples_per_epoch, **times,
                                "overall": float(scores["overall"]), "partial": float(scores["partial"])})


def sample_job(args: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A harness job (in a worker): the training job ``args["config"]`` (TrainConfig.to_flat()) trained, or
    untrained when ``args["untrained"]``, then sampled for both splits of the evaluation set ``args["eval_set"]``;
    named ``args["name"]``. With ``args["curve_every"]`` > 0 the run also records :class:`EvaluationCurve`'s points
    (``eval_curve``)."""
    from agents.job.config import TrainConfig
    from agents.job.train import build_agent, build_env, train

    start = time.perf_counter()
    cfg = TrainConfig.from_flat({**args["config"], "output_dir": output_dir(run_dir), "evaluate": False})
    eval_set, every = args.get("eval_set", "test"), args.get("curve_every", 0)
    curve_callback = EvaluationCurve(cfg, every, args["limit"], eval_set) if every and not args["untrained"] else None
    if args["untrained"]:
        agent, curve = build_agent(cfg, build_env(cfg)), []
    else:
        result = train(cfg, callbacks=[curve_callback] if curve_callback else [])
        agent, curve = result.agent, [e["reward_mean"] for e in result.metrics["epochs"]]
    train_seconds = time.perf_counter() - start - (curve_callback.clock.evaluating_seconds if curve_callback else 0.0)
    with agent.ema_weights():
        samples = evaluate(agent.policy, agent.diffusion_env.backend, cfg, args["eval_seeds"], args["limit"],
                           eval_set)
        words = policy_word_use(agent) if args.get("word_use") else []
    return {"agent": args["name"], "seed": cfg.seed, "learning_rate": cfg.algorithm.learning_rate, "curve": curve,
            "eval_curve": curve_callback.points if curve_callback else [], "updates": agent.num_updates,
            "word_use": words, "train_seconds": train_seconds, "seconds": time.perf_counter() - start,
            "samples": samples}


#: The word swaps checked on trained policies (``word_use``): the relation the model ignores, and a colour it reads.
POLICY_WORD_SWAPS = (("left", "right", "relation"), ("red", "blue", "colour"))


def policy_word_use(agent: Any) -> list[dict[str, Any]]:
    """The word-use check (:mod:`ddpo_env.word_use`: the change of the network's prediction when one word of the
    prompt is swapped) of the agent's network as it is now, its adapter included, for :data:`POLICY_WORD_SWAPS` on the
    training prompts that hold the word (2 clean samples each, 4 noisings)."""
    from ddpo_env.word_use import word_use

    env = agent.diffusion_env
    prompts = eval_prompts("train", 1)
    agent.policy.set_training_mode(False)
    return [{"kind": kind, **word_use(env.backend, env.schedule, prompts, word, other, guidance_scale=
                                      env.guidance_scale, samples=2, draws=4).row()}
            for word, other, kind in POLICY_WORD_SWAPS]


def sample_args(name: str, config: dict[str, Any], eval_seeds: int, limit: int, untrained: bool = False,
                eval_set: str = "test", curve_every: int = 0, word_use: bool = False) -> dict[str, Any]:
    """:func:`sample_job`'s arguments (``word_use``: also :func:`policy_word_use` after training)."""
    return {"name": name, "config": config, "untrained": untrained, "eval_seeds": eval_seeds, "limit": limit,
            "eval_set": eval_set, "curve_every": curve_every, "word_use": word_use}


def split_scores(images: np.ndarray, prompts: list[str], kl: np.ndarray | None = None,
                 full_categories: bool = False) -> dict[str, Any]:
    """The verifier's scores of one split's samples: overall accuracy, partial credit, extra objects, the position
    relations, per category its accuracy (``full_categories``: all of :func:`category_scores`' numbers and the
    per-sample verdicts) and the mean KL to the base model."""
    from benchmarks.scene_metrics import category_scores

    scores = category_scores(images, prompts)
    record = {"overall": scores["overall"], "partial": scores["partial"], "extra_objects": scores["extra_objects"],
              "relations": scores["relations"]}
    if full_categories:
        record.update(categories=scores["categories"], correct=scores["correct"])
    else:
        record["categories"] = {c: v["accuracy"] for c, v in scores["categories"].items()}
    record["kl_to_base"] = None if kl is None else float(np.mean(kl))
    return record
