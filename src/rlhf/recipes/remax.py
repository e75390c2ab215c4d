"""ReMax (Li et al. 2023, "ReMax: A Simple, Effective, and Efficient Reinforcement Learning
Method for Aligning Large Language Models").

REINFORCE whose baseline is the reward of the *greedy* response to the same prompt: each
rollout also decodes every prompt greedily (a second generation, one per prompt) and scores
it, and ``A_i = r(x, y_i) − r(x, ȳ)`` (:func:`rlhf.losses.advantages.remax_advantages`). The
greedy responses are not trained on. The KL to the reference goes into the reward by default
(β = 0.05, k1; the greedy baseline is the score alone, as in the paper's Algorithm 1); the
update is PPO's clipped surrogate on the rollout's old log-probs.

    rlhf remax --preset tiny

Everything else (rollouts, reference, evaluation, resume) is :mod:`rlhf.recipes.online`.
"""

from __future__ import annotations

from rlhf.losses.advantages import remax_advantages
from rlhf.recipes.common import RunResult
from rlhf.recipes.online import Advantages, OnlineConfig, Rollout, StatelessEstimator, run_online


class ReMaxConfig(OnlineConfig):
    """ReMax: REINFORCE with the greedy response's reward as the baseline."""


class ReMaxEstimator(StatelessEstimator):
    """Sampled reward minus the greedy response's reward, per prompt."""

    needs_greedy = True

    def __call__(self, rollout: Rollout) -> Advantages:
        assert rollout.greedy_scores is not None  # the loader adds them (needs_greedy)
        advantages = remax_advantages(rollout.sequence_rewards(), rollout.greedy_scores)
        return Advantages(advantages)


def run_remax(config: ReMaxConfig, resume: bool = False) -> RunResult:
    return run_online(config, resume, estimator=ReMaxEstimator())
