"""GSPO: group sequence policy optimisation (Zheng et al. 2025, "Group Sequence Policy
Optimization").

GRPO's group-normalised advantages, but the importance ratio and its clipping are per
*sequence*, not per token: ``s_i(θ) = (π_θ(y_i|x) / π_old(y_i|x))^(1/|y_i|)`` — the geometric
mean of the token ratios, length-normalised so that responses of any length share one clip
range (eq. 7) — clipped to ``[1 − ε_low, 1 + ε_high]`` (a much narrower range than PPO's:
ε = 3e-4 / 4e-4 by default, the paper's) and ``min(s·Â, clip(s)·Â)`` averaged over the
responses (eq. 5; :func:`rlhf.losses.policy.gspo_policy_loss`). The loss is therefore a mean
over sequences (``policy.aggregation=sequence``). Token-level ratios are noisy, high-variance
weights on each token's gradient; the sequence ratio matches the unit the reward is given at.
The paper trains without a KL term (β = 0 by default).

    rlhf gspo --preset tiny
"""

from __future__ import annotations

from functools import partial

from pydantic import Field, model_validator

from rlhf.losses.advantages import grpo_advantages
from rlhf.losses.policy import gspo_policy_loss
from rlhf.online.experience import Experience
from rlhf.online.loss import policy_gradient_loss
from rlhf.online.phases import rollout_metrics
from rlhf.online.settings import KLSettings, PolicyLossSettings
from rlhf.recipes.common import RunResult
from rlhf.recipes.online_common import OnlineConfig, OnlineRun, prepare_online, run_online
from rlhf.rewards.base import score_rollout


class GSPOConfig(OnlineConfig):
    """Group sequence policy optimisation."""

    kl: KLSettings = Field(
        default_factory=lambda: KLSettings(coef=0.0, estimator="k3", in_reward=False),
        description="KL to the reference (GSPO: none, β = 0; a β > 0 adds β·k3 to the loss).",
    )
    policy: PolicyLossSettings = Field(
        default_factory=lambda: PolicyLossSettings(
            clip_eps=3e-4, clip_eps_high=4e-4, aggregation="sequence"
        ),
        description="The sequence-level clipped loss: ε_low = 3e-4, ε_high = 4e-4 (GSPO's).",
    )

    @model_validator(mode="after")
    def _sequence_level(self) -> GSPOConfig:
        if self.rollout.samples_per_prompt < 2:
            raise ValueError("rollout.samples_per_prompt: GSPO compares ≥ 2 samples per prompt")
        if self.policy.aggregation != "sequence":
            raise ValueError(
                "policy.aggregation: GSPO's loss is a mean over sequences; leave it at sequence"
            )
        if self.mismatch.correction != "none":
            raise ValueError(
                f"mismatch.correction={self.mismatch.correction}: GSPO weighs whole sequences by "
                "one ratio, and per-token correction weights would break its constant "
                "per-sequence advantage; leave it at none (the mismatch is still logged)"
            )
        return self


def make_experience(run: OnlineRun[GSPOConfig], iteration: int) -> Experience:
    """One GSPO rollout, phase by phase (GRPO's: the difference is in the loss)."""
    k = run.config.rollout.samples_per_prompt
    prompts = run.prompts_for(iteration)  # [P]
    batch = run.sample(prompts, iteration)  # [P·K] responses, prompt-major
    reward = score_rollout(run.reward, prompts.texts, batch, prompts.metadata)  # [P·K]
    reference = run.reference_term(batch)  # log π_ref and the KL, with β
    rewards = reference.penalised(reward.scores)
    advantages, sums = grpo_advantages(rewards, k)  # each sample against its group [P·K]
    metrics = rollout_metrics(batch, reward, reference, iteration)
    metrics["rollout_tied_groups"] = sums["tied_groups"]
    return run.experience(batch, reward, reference, advantages, metrics=metrics)


def run_gspo(config: GSPOConfig, resume: bool = False) -> RunResult:
    run = prepare_online(config, resume)
    surrogate = partial(
        gspo_policy_loss, clip_eps=config.policy.clip_eps, clip_eps_high=config.policy.clip_eps_high
    )
    loss_fn = partial(
        policy_gradient_loss,
        policy=config.policy,
        kl=config.kl,
        grad_accum=run.train.grad_accum,
        surrogate=surrogate,
    )
    return run_online(run, partial(make_experience, run), loss_fn=loss_fn)
