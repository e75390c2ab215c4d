"""ReMax (Li et al. 2023, "ReMax: A Simple, Effective, and Efficient Reinforcement Learning
Method for Aligning Large Language Models").

REINFORCE whose baseline is the reward of the *greedy* response to the same prompt: each
rollout also decodes every prompt greedily (a second generation, one per prompt) and scores
it, and ``A_i = r(x, y_i) − r(x, ȳ)`` (:func:`rlhf.losses.advantages.remax_advantages`). The
greedy responses are not trained on. The KL to the reference goes into the reward by default
(β = 0.05, k1; the greedy baseline is the score alone, as in the paper's Algorithm 1); the
update is PPO's clipped surrogate on the rollout's old log-probs.

    rlhf remax --preset tiny
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from rlhf.losses.advantages import remax_advantages
from rlhf.online.experience import Experience
from rlhf.online.phases import rollout_metrics
from rlhf.recipes.common import RunResult
from rlhf.recipes.online_common import OnlineConfig, OnlineRun, prepare_online, run_online
from rlhf.rewards.base import score_rollout


class ReMaxConfig(OnlineConfig):
    """ReMax: REINFORCE with the greedy response's reward as the baseline."""


def make_experience(run: OnlineRun[ReMaxConfig], iteration: int) -> Experience:
    """One ReMax rollout, phase by phase."""
    k = run.config.rollout.samples_per_prompt
    prompts = run.prompts_for(iteration)  # [P]
    batch = run.sample(prompts, iteration)  # [P·K] responses, prompt-major
    reward = score_rollout(run.reward, prompts.texts, batch, prompts.metadata)  # [P·K]
    reference = run.reference_term(batch)  # log π_ref and the KL, with β
    rewards = reference.penalised(reward.scores)  # score − β·Σ KL (the KL is in the reward)

    # the baseline: each prompt decoded greedily once and scored (ReMax's Algorithm 1)
    greedy_params = replace(run.sampling_params(iteration), temperature=0.0, num_samples=1)
    greedy_batch = run.engine.generate(prompts.texts, greedy_params)  # [P]
    greedy = score_rollout(run.reward, prompts.texts, greedy_batch, prompts.metadata).scores
    baseline = greedy.repeat_interleave(k)  # [P·K]

    advantages = remax_advantages(rewards, baseline)
    metrics = rollout_metrics(batch, reward, reference, iteration)
    metrics["rollout_greedy_reward"] = float(baseline.mean())
    return run.experience(batch, reward, reference, advantages, metrics=metrics)


def run_remax(config: ReMaxConfig, resume: bool = False) -> RunResult:
    run = prepare_online(config, resume)
    return run_online(run, partial(make_experience, run))
