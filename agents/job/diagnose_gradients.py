"""``ddpo diagnose gradients``: which denoising steps carry a job's policy gradient, and does one step along it raise
the reward? The job's own settings (every ``ddpo train`` flag, or ``--config``), one rollout, then
:func:`agents.one_step.one_sign_step_test` on the job's fixed evaluation set: each step's share of the gradient,
and the evaluation reward's change after one sign step along the whole gradient, along it without its largest step
(and two largest), and along random directions.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of its own, beside the job's (the command line adds those)."""
    parser.add_argument("--step-lr", type=float, default=None, metavar="LR",
                        help="the sign step's size (default: the job's learning_rate)")
    parser.add_argument("--controls", type=int, default=3, help="random directions (the control)")
    parser.add_argument("--json", default="", metavar="FILE", help="also write the results as JSON here")


def run(cfg: Any, step_lr: float | None = None, controls: int = 3, json_path: str = "",
        calibration_rollout: bool = False) -> Any:
    """The diagnostic for the job ``cfg`` (a :class:`~agents.job.config.TrainConfig`); prints the tables. With
    ``step_weights='gradient'`` (or ``calibration_rollout``) a first rollout is sampled and discarded, the weights
    measured on it, and the test runs on the second: the shares are not measured on the rollout that set them."""
    import torch
    from stable_baselines3.common.logger import Logger

    from agents.job.evaluation import evaluate_policy
    from agents.job.train import build_agent, build_env, evaluation_prompts
    from agents.one_step import markdown, one_sign_step_test, step_gradients
    from agents.step_weights import measured_weights

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    env = build_env(cfg)
    agent = build_agent(cfg, env)
    agent.set_logger(Logger(folder=None, output_formats=[]))
    prompts = evaluation_prompts(env)
    evaluation_env = build_env(cfg, num_envs=min(len(prompts), 20), model=env.unwrapped.backend)
    agent.collect_rollout()
    if calibration_rollout or getattr(cfg.algorithm, "step_weights", "uniform") == "gradient":
        if getattr(cfg.algorithm, "step_weights", "uniform") == "gradient":
            agent._step_weights = measured_weights(agent)
        agent.collect_rollout()
    trained = list(agent.trainable_steps())
    gradients = step_gradients(agent)
    top = sorted(gradients, key=lambda k: -float(gradients[k].square().sum()))
    groups = {"all": trained, f"all but {top[0]}": [k for k in trained if k != top[0]]}
    if len(top) > 2:
        groups[f"all but {top[0]}, {top[1]}"] = [k for k in trained if k not in top[:2]]
    results, shares = one_sign_step_test(
        agent, lambda: evaluate_policy(agent.policy, evaluation_env, prompts, seed=cfg.seed + 12_345).rewards,
        groups, step_lr or cfg.algorithm.learning_rate, controls, cfg.seed, gradients)
    print(f"one rollout of {cfg.algorithm.samples_per_epoch} samples ({cfg.agent}, reward {cfg.reward}), "
          f"{len(prompts)} evaluation samples:\n\n{markdown(results, shares)}")
    if json_path:
        with open(json_path, "w", encoding="utf-8") as file:
            json.dump({"agent": cfg.agent, "reward": cfg.reward, "shares": shares,
                       "directions": [{"name": r.name, "steps": r.steps, "gain": r.gain, "stderr": r.stderr,
                                       "raises": r.raises} for r in results]}, file, indent=2)
        print(f"  {json_path}")
    return results, shares
