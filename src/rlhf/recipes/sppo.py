"""SPPO: self-play preference optimisation (Wu et al. 2024, "Self-Play Preference Optimization
for Language Model Alignment", Alg. 1 and eq. 3.6).

Each iteration samples K ≥ 2 responses per prompt from π_t, the current policy; a pairwise
preference (``preference``: a model from ``rlhf pm``, the world's gold preference, possibly
non-transitive, or Bradley–Terry from any reward) compares every two of them, and each
response's win rate against the policy, P̂(y ≻ π_t | x), is the mean of its preferences over
the other K − 1 (:func:`rlhf.losses.nash.win_rates`). The loss regresses the log-ratio onto
the scaled, centred win rate::

    ( log π(y|x)/π_t(y|x) − η (P̂(y ≻ π_t | x) − ½) )²

which approximates the multiplicative-weights step π_{t+1} ∝ π_t exp(η P(y ≻ π_t)) towards the
game's Nash equilibrium. π_t is the rollout's sampling policy: with one optimiser step per
rollout its log-probs are the step's own, detached (the log-ratio starts at 0), with several
they are recomputed when sampling. No reference model and no KL term: π_t anchors each step.

``reward`` is not trained on: the evaluation reports it (with ``eval.gold_reward``).

    rlhf sppo --preset tiny
"""

from __future__ import annotations

from functools import partial
from itertools import combinations

import torch
from pydantic import Field, model_validator

from rlhf.config import StrictModel
from rlhf.losses.nash import win_rates
from rlhf.online.experience import Experience
from rlhf.online.loss import sppo_policy_loss
from rlhf.online.phases import rollout_metrics
from rlhf.online.settings import KLSettings, PolicyLossSettings
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


class SPPOSettings(StrictModel):
    eta: float = Field(
        1.0,
        gt=0,
        description="η: the step of the multiplicative-weights update; the log-ratio target "
        "of a response is η (P̂ − ½).",
    )


class SPPOConfig(OnlineConfig):
    """Self-play preference optimisation against a pairwise preference."""

    preference: PreferenceSpec = Field(
        description="P(y ≻ y′ | x): {model: PATH} (rlhf pm), {rule: world_gold, nontransitive: "
        "λ} or {reward: RewardSpec} (Bradley–Terry)."
    )
    sppo: SPPOSettings = Field(default_factory=SPPOSettings, description="SPPO's η.")
    kl: KLSettings = Field(
        default_factory=lambda: KLSettings(coef=0.0),
        description="Unused: π_t anchors every step; keep coef 0.",
    )
    policy: PolicyLossSettings = Field(
        default_factory=lambda: PolicyLossSettings(aggregation="sequence"),
        description="The loss is a mean over sequences (aggregation sequence).",
    )

    @model_validator(mode="after")
    def _game(self) -> SPPOConfig:
        if self.rollout.samples_per_prompt < 2:
            raise ValueError(
                "rollout.samples_per_prompt: SPPO's win rates compare ≥ 2 samples per prompt"
            )
        if self.kl.coef != 0:
            raise ValueError("kl.coef: SPPO has no KL term (π_t anchors each step); set 0")
        if self.policy.aggregation != "sequence":
            raise ValueError(
                "policy.aggregation: SPPO's loss is one square per sequence; use sequence"
            )
        return self


def group_preferences(
    preference: PreferenceFunction,
    prompts: list,
    responses: list[str],
    k: int,
    metadata: list[dict] | None = None,
) -> torch.Tensor:
    """[P, K, K] P(y_i ≻ y_j | x) among each prompt's K responses (prompt-major rows): each
    unordered pair asked once, its mirror 1 − P (the preference is antisymmetric), ½ on the
    diagonal. ``metadata``: one row per response."""
    pairs = list(combinations(range(k), 2))
    first_rows = [p * k + i for p in range(len(prompts)) for i, _ in pairs]
    second_rows = [p * k + j for p in range(len(prompts)) for _, j in pairs]
    probabilities = call_preference(
        preference,
        [prompts[row // k] for row in first_rows],
        [responses[row] for row in first_rows],
        [responses[row] for row in second_rows],
        None
        if metadata is None
        else pair_metadata([metadata[r] for r in first_rows], [metadata[r] for r in second_rows]),
    ).view(len(prompts), len(pairs))
    matrix = torch.full((len(prompts), k, k), 0.5)
    for column, (i, j) in enumerate(pairs):
        matrix[:, i, j] = probabilities[:, column]
        matrix[:, j, i] = 1.0 - probabilities[:, column]
    return matrix


def make_experience(
    run: OnlineRun[SPPOConfig], preference: PreferenceFunction, iteration: int
) -> Experience:
    """One rollout: K samples per prompt, each with its win rate against the others."""
    k = run.config.rollout.samples_per_prompt
    prompts = run.prompts_for(iteration)  # [P]
    batch = run.sample(prompts, iteration)  # [P·K]
    metadata = rollout_metadata(batch, prompts.metadata)
    matrix = group_preferences(preference, list(prompts.texts), batch.response_texts, k, metadata)
    wins = win_rates(matrix)  # [P·K] P̂(y ≻ π_t)
    reward = score_rollout(run.reward, prompts.texts, batch, prompts.metadata)  # reported only
    reference = run.reference_term(batch)  # kl.coef is 0: no π_ref forward, no KL logged
    metrics = rollout_metrics(batch, reward, reference, iteration) | {
        # how far the win rates spread: 0 when every sample ties with every other
        "rollout_win_rate_std": float(wins.std()),
    }
    eta = run.config.sppo.eta
    return run.experience(batch, RewardOutput(wins), reference, eta * (wins - 0.5), metrics=metrics)


def run_sppo(config: SPPOConfig, resume: bool = False) -> RunResult:
    run = prepare_online(config, resume)
    preference = build_preference(config.preference)
    loss_fn = partial(sppo_policy_loss, eta=config.sppo.eta, grad_accum=run.train.grad_accum)
    return run_online(run, partial(make_experience, run, preference), loss_fn=loss_fn)
