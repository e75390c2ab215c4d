"""Settings every online algorithm shares: rollout sizes, the KL to the reference, the clipped
policy loss. Each recipe's config holds them as sections (and may change their defaults)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from rlhf.config import StrictModel


class RolloutSettings(StrictModel):
    iterations: int = Field(10, ge=1, description="Rollouts collected (and trained on).")
    prompts_per_iteration: int = Field(
        64, ge=1, description="Prompts per rollout (cycling through a seeded shuffle)."
    )
    samples_per_prompt: int = Field(4, ge=1, description="K: responses sampled per prompt.")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each rollout's experience.")
    minibatch_size: int | None = Field(
        None,
        ge=1,
        description="Episodes per optimiser step (default train.batch_size × train.grad_accum); "
        "when set, grad_accum = minibatch_size / train.batch_size.",
    )


class KLSettings(StrictModel):
    """The KL(π‖π_ref) regulariser: in the reward (k1, PPO style) or as a loss term (k2/k3)."""

    coef: float = Field(0.05, ge=0, description="β (0: no KL term and no reference model).")
    estimator: Literal["k1", "k2", "k3"] = Field(
        "k1",
        description="Per-token estimator (Schulman 2020): k1 in the reward, k2/k3 in the loss.",
    )
    in_reward: bool = Field(
        True, description="Subtract β·KL from the reward (true) or add β·KL to the loss (false)."
    )
    clamp: float | None = Field(None, gt=0, description="Clamp log(π_ref/π) to ±clamp first.")
    max_kl: float | None = Field(None, gt=0, description="Clamp the per-token estimate to ±max_kl.")
    target: float | None = Field(
        None,
        gt=0,
        description="Adaptive β (Ziegler et al. 2019): the target sequence KL (null: fixed β).",
    )
    horizon: int = Field(10000, ge=1, description="Adaptive β: episodes over which β adapts.")

    def estimator_options(self) -> dict[str, Any]:
        """The per-token estimator's keyword arguments (:func:`rlhf.losses.kl.per_token_kl`)."""
        return {"estimator": self.estimator, "clamp": self.clamp, "max_kl": self.max_kl}

    @model_validator(mode="after")
    def _estimator_fits(self) -> KLSettings:
        if not self.in_reward and self.estimator == "k1" and self.coef > 0:
            raise ValueError(
                "kl.estimator k1 has zero expected gradient as a loss term: with "
                "kl.in_reward=false use k2 or k3"
            )
        return self


class PolicyLossSettings(StrictModel):
    clip_eps: float = Field(0.2, gt=0, description="ε of the clipped surrogate.")
    clip_eps_high: float | None = Field(
        None, gt=0, description="Upper ε (DAPO clip-higher); null: clip_eps."
    )
    aggregation: Literal["token", "sequence", "constant"] = Field(
        "token",
        description="Loss reduction: token (mean over the step's tokens), sequence (mean of "
        "per-response means) or constant (sum / max_new_tokens per response, Dr. GRPO).",
    )


class MismatchSettings(StrictModel):
    """What a run does about the gap between the engine's sampling log-probs and the
    trainer's, when the engine's weights are a copy (vLLM; :mod:`rlhf.losses.importance`).
    The gap is logged every rollout (``rollout_mismatch_*``) whatever this says."""

    correction: Literal["none", "truncated_is", "mask"] = Field(
        "none",
        description="none: train on the trainer's recomputed log-probs as they are; "
        "truncated_is: weight each token's policy gradient by min(π_train/π_engine, is_cap) "
        "(Yao et al. 2025); mask: leave out tokens whose ratio π_train/π_engine leaves `band`.",
    )
    old_logps: Literal["trainer", "engine"] = Field(
        "trainer",
        description="π_old of the clipped ratio, with rollout workers (distributed."
        "rollout_workers): trainer: recomputed by the trainer when it takes a rollout (the "
        "ratio is the trainer's own; the gap to the engine, staleness included, is logged and "
        "corrected by `correction`); engine: the log-probs the workers sampled with, no second "
        "forward pass (PPO's clipped ratio is then against the policy that sampled, which "
        "bounds a stale rollout's update by itself, as in Noukhovitch et al. 2024; nothing is "
        "left to measure or correct: correction must be none).",
    )
    is_cap: float = Field(2.0, gt=0, description="C of truncated importance sampling.")
    band: tuple[float, float] = Field(
        (0.5, 2.0), description="[low, high] of the ratios a token keeps with correction=mask."
    )

    @model_validator(mode="after")
    def _band_holds_one(self) -> MismatchSettings:
        low, high = self.band
        if not 0 <= low < 1 < high:
            raise ValueError(f"band [{low}, {high}] must hold 1 (0 <= low < 1 < high)")
        if self.old_logps == "engine" and self.correction != "none":
            raise ValueError(
                f"mismatch.old_logps=engine with correction={self.correction}: the engine's "
                "log-probs are then π_old itself, so there is no gap to correct; use "
                "correction=none, or old_logps=trainer"
            )
        return self
