"""Nash-MD: policy optimisation against a pairwise preference, towards the Nash equilibrium of
the KL-regularised preference game (Munos et al. 2024, "Nash Learning from Human Feedback",
Nash-MD-PG, §7).

A preference P(y ≻ y′ | x) (``preference``: a pairwise preference model from ``rlhf pm``,
the world's gold preference, possibly non-transitive, or Bradley–Terry from any reward) need
not be explained by any scalar reward, so instead of maximising one the policy plays against
an opponent: each response y ~ π is compared with a response y′ sampled from the geometric
mixture π^β_mix ∝ π^{1−β} π_ref^β (token by token, :mod:`rlhf.rollout.mixture`;
``nash_md.mixture_coef`` β), and the policy-gradient step uses the advantage
P(y ≻ y′) − ½ (no learned baseline: a fair game is worth ½), with τ·KL(π‖π_ref) as a loss
term (``kl.coef`` τ, k3). β = 0 is self-play against the current policy; the mixture keeps
the opponent near the reference, which is what makes the last iterate converge (eq. 8).

``reward`` is not trained on: it is what the evaluation reports (with ``eval.gold_reward``),
e.g. the world's gold reward.

    rlhf nash-md --preset tiny
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from pydantic import Field, model_validator

from rlhf.config import StrictModel
from rlhf.online.experience import Experience
from rlhf.online.phases import rollout_metrics
from rlhf.online.settings import KLSettings
from rlhf.recipes.common import RunResult
from rlhf.recipes.online_common import OnlineConfig, OnlineRun, prepare_online, run_online
from rlhf.rewards.base import RewardOutput, rollout_metadata, score_rollout
from rlhf.rewards.preference import (
    PreferenceFunction,
    PreferenceSpec,
    build_preference,
    call_preference,
    pair_metadata,
)
from rlhf.rollout.mixture import GeometricMixtureEngine


class NashMDSettings(StrictModel):
    mixture_coef: float = Field(
        0.125,
        ge=0,
        le=1,
        description="β: the opponent samples from π^(1−β)·π_ref^β, token by token (0: the "
        "policy itself, self-play).",
    )


class NashMDConfig(OnlineConfig):
    """Nash-MD-PG against a pairwise preference."""

    preference: PreferenceSpec = Field(
        description="P(y ≻ y′ | x): {model: PATH} (rlhf pm), {rule: world_gold, nontransitive: "
        "λ} or {reward: RewardSpec} (Bradley–Terry)."
    )
    nash_md: NashMDSettings = Field(default_factory=NashMDSettings, description="The opponent.")
    kl: KLSettings = Field(
        default_factory=lambda: KLSettings(coef=0.1, estimator="k3", in_reward=False),
        description="τ·KL(π‖π_ref), a loss term (k3) by default.",
    )

    @model_validator(mode="after")
    def _local_opponent(self) -> NashMDConfig:
        if self.distributed.rollout_workers or self.distributed.reference_workers:
            raise ValueError(
                "nash-md samples its opponent from the policy and π_ref in the trainer's "
                "process: leave distributed.rollout_workers and reference_workers at 0"
            )
        if self.model.lora is not None and self.reference.path is None:
            raise ValueError(
                "nash-md with model.lora: the default π_ref is the policy with its adapter "
                "off, which the opponent's mixture cannot call apart; set reference.path"
            )
        if self.sampling.top_p < 1 or self.sampling.top_k > 0:
            raise ValueError(
                "sampling.top_p/top_k: the opponent samples the whole geometric mixture; "
                "sample without top-p/top-k"
            )
        return self

    @property
    def trains_against_reference(self) -> bool:
        return True  # the opponent is mixed with π_ref


def make_experience(
    run: OnlineRun[NashMDConfig],
    preference: PreferenceFunction,
    opponent: GeometricMixtureEngine,
    iteration: int,
) -> Experience:
    """One rollout: K samples per prompt from π, each against one sample of π^β_mix."""
    prompts = run.prompts_for(iteration)  # [P]
    batch = run.sample(prompts, iteration)  # [P·K]
    params = run.sampling_params(iteration)
    # the opponent's stream differs from the policy's (another seed), one sample per row
    against = opponent.generate(prompts.texts, replace(params, seed=params.seed + 7_919))
    rows = batch.prompt_index.tolist()
    shared = None if prompts.metadata is None else [prompts.metadata[i] for i in rows]
    wins = call_preference(
        preference,
        [prompts.texts[i] for i in rows],
        batch.response_texts,
        against.response_texts,
        pair_metadata(rollout_metadata(batch), rollout_metadata(against), shared),
    )  # [P·K] P(y ≻ y′)
    reward = score_rollout(run.reward, prompts.texts, batch, prompts.metadata)  # reported only
    reference = run.reference_term(batch)
    metrics = rollout_metrics(batch, reward, reference, iteration) | {
        "rollout_win_rate_vs_mixture": float(wins.mean()),
        "rollout_opponent_response_tokens": against.response_stats()["response_tokens"],
    }
    return run.experience(
        batch,
        RewardOutput(wins),
        reference,
        wins - 0.5,  # the advantage of a two-player constant-sum game worth ½
        metrics=metrics,
    )


def run_nash_md(config: NashMDConfig, resume: bool = False) -> RunResult:
    run = prepare_online(config, resume)
    assert run.reference is not None and run.reference.module is not None
    opponent = GeometricMixtureEngine(
        run.policy,
        run.tokenizer,
        run.reference.module,
        config.nash_md.mixture_coef,
        batch_size=config.sampling.batch_size,
    )
    preference = build_preference(config.preference)
    return run_online(run, partial(make_experience, run, preference, opponent))
