"""PPO for RLHF: a policy and a learned critic, the KL to the reference in the reward.

The InstructGPT recipe (Ziegler et al., 2019; Stiennon et al., 2020; Ouyang et al., 2022),
with the details of Huang et al. (2024, "The N+ Implementation Details of RLHF with PPO"):

* **Rewards per token** (:func:`rlhf.losses.advantages.ppo_token_rewards`): ``−β · k1`` on
  every response token (``k1 = log π_old − log π_ref``) and the sequence reward on the last
  one, β fixed or adapted to a target KL (Ziegler et al., §2.2; ``kl.target``). The score may
  first be normalised (``ppo.reward_norm``: by the rollout's statistics, or running ones kept
  across rollouts and checkpointed) and clipped (``ppo.reward_clip``). A reward that places
  its value on tokens (a process reward model with ``prm_dense``: each step's reward on its
  last token) is used as placed, normalised the same way.
* **Advantages** by GAE(γ, λ) (Schulman et al., 2016) over the critic's values ``V(s_t)``
  computed once per rollout, then whitened over the rollout's real tokens only.
* **The update**: ``ppo_epochs`` passes over the rollout in shuffled minibatches; the loss is
  the clipped surrogate + ``vf_coef`` × the clipped value loss + ``entropy_coef`` × (−entropy),
  all with one aggregation (``policy.aggregation``) so the engine's single divisor is right.
  The approximate KL(π_old‖π_θ) and the clip fraction are logged each step; with
  ``ppo.target_kl`` the rest of a rollout's minibatches are skipped once a step's approximate
  KL exceeds it (early stopping; the run then collects its next rollout).
* **Actor and critic in one module** (:class:`ActorCritic`), so the one Trainer's optimiser,
  gradient clipping, checkpoints and exact resume cover both; only the policy is exported
  (``<out>/model``). The critic (:mod:`rlhf.models.value`) starts from ``value.path`` — a
  reward model folder (its head kept, as InstructGPT did) — or from the initial policy with
  a fresh N(0, 1/√(d + 1)) head.

The set-up, the evaluation and resume at iteration boundaries are
:mod:`rlhf.recipes.online_common`'s.

    rlhf ppo --preset tiny
    rlhf ppo --config ppo.yaml model.path=runs/sft/model data.prompts=prompts.jsonl \\
        reward.model=runs/rm/model value.path=runs/rm/model

Shapes: N episodes (rows) of a rollout, n of a micro-batch, R response tokens, V vocabulary.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, Literal

import torch
from pydantic import Field

from rlhf.config import StrictModel
from rlhf.engine.trainer import StepCallback
from rlhf.losses.advantages import (
    gae,
    last_token_index,
    masked_mean,
    masked_whiten,
    ppo_token_rewards,
)
from rlhf.losses.policy import entropy_from_logits, entropy_loss, value_loss
from rlhf.models.forward import logits_at, unwrap
from rlhf.models.load import LoraSpec
from rlhf.models.logprobs import selective_log_softmax
from rlhf.models.teacher_forcing import TeacherForced
from rlhf.models.value import load_value_model, response_values
from rlhf.online.experience import Experience, ExperienceBuffer
from rlhf.online.loss import policy_gradient_loss, policy_logps
from rlhf.online.phases import rollout_metrics
from rlhf.online.settings import KLSettings, PolicyLossSettings, RolloutSettings
from rlhf.recipes.common import RunResult
from rlhf.recipes.online_common import OnlineConfig, OnlineRun, prepare_online, run_online
from rlhf.rewards.base import dense_token_rewards, score_rollout

logger = logging.getLogger("rlhf")

Metrics = dict[str, float]

# ------------------------------------------------------------------------------ config


class ValueConfig(StrictModel):
    path: str | None = Field(
        None,
        description="The critic's starting point: a reward model folder (`rlhf rm` output; its "
        "head is kept) or a causal LM (a fresh scalar head). Default: the initial policy.",
    )
    seed: int = Field(0, description="Seed of a fresh value head's initialisation.")


class PPOSettings(StrictModel):
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount γ.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE λ (0: one-step TD, 1: Monte Carlo).")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    value_clip_eps: float | None = Field(
        0.2, gt=0, description="Clip of the value loss around the rollout's values (null: off)."
    )
    entropy_coef: float = Field(
        0.0, ge=0, description="Weight of the entropy bonus (> 0 computes full logits)."
    )
    whiten_advantages: bool = Field(
        True, description="Whiten advantages over the rollout's real tokens (mean 0, std 1)."
    )
    reward_norm: Literal["none", "batch", "running"] = Field(
        "none",
        description="Normalise scores before the KL penalty: by the rollout's mean and std, "
        "or by running statistics over all rollouts so far (checkpointed).",
    )
    reward_clip: float | None = Field(
        None, gt=0, description="Clip (normalised) scores to ±reward_clip (null: off)."
    )
    target_kl: float | None = Field(
        None,
        gt=0,
        description="Early stop: skip the rest of a rollout's minibatches once a step's "
        "approximate KL(π_old‖π_θ) exceeds this (null: never).",
    )


class PPORolloutSettings(RolloutSettings):
    """PPO's defaults (they hold when a config sets only some rollout keys): a critic needs no
    group of samples, and each rollout is reused for several epochs."""

    samples_per_prompt: int = Field(1, ge=1, description="K: responses sampled per prompt.")
    ppo_epochs: int = Field(4, ge=1, description="Passes over each rollout's experience.")


class PPOConfig(OnlineConfig):
    """PPO with a learned critic and the KL to the reference in the reward."""

    rollout: PPORolloutSettings = Field(
        default_factory=PPORolloutSettings,
        description="Rollouts (PPO: 4 epochs over each, one sample per prompt by default).",
    )
    kl: KLSettings = Field(
        default_factory=lambda: KLSettings(coef=0.05, estimator="k1", in_reward=True),
        description="KL to the reference: β·k1 per token in the reward (fixed, or adaptive "
        "with kl.target).",
    )
    value: ValueConfig = Field(default_factory=ValueConfig, description="The critic.")
    ppo: PPOSettings = Field(default_factory=PPOSettings, description="PPO's settings.")


# ------------------------------------------------------------------------------ actor-critic


class ActorCritic(torch.nn.Module):
    """The policy and the critic as one module, so that the Trainer optimises, clips,
    checkpoints (``policy.*`` and ``value.*`` parameters) and resumes both. Never called
    itself: the loss reads ``policy`` and ``value``."""

    def __init__(self, policy: torch.nn.Module, value: torch.nn.Module) -> None:
        super().__init__()
        self.policy, self.value = policy, value


# ------------------------------------------------------------------------------ advantages


class RunningMoments:
    """Mean and variance of every score seen so far (Chan et al.'s parallel update), a
    rollout at a time; the state is three floats, for checkpoints."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0.0, 0.0, 0.0

    def update(self, values: torch.Tensor) -> None:
        values = values.double().flatten()
        n = float(values.numel())
        if n == 0:
            return
        mean, m2 = float(values.mean()), float(((values - values.mean()) ** 2).sum())
        delta, total = mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.m2 += m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 1 else 1.0

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]


class ScoreNormaliser:
    """``ppo.reward_norm`` and ``ppo.reward_clip``: scores normalised by the rollout's
    statistics or by running ones (checkpointed), then clipped."""

    def __init__(self, settings: PPOSettings) -> None:
        self.settings = settings
        self.moments = RunningMoments()

    def _affine(self, scores: torch.Tensor) -> tuple[float, float]:
        """(a, b): ``reward_norm`` maps a score s to a·s + b (the running moments take this
        rollout in first, as OpenRLHF does). Scores that (nearly) all tie carry no signal to
        normalise: a = b = 0, every normalised score 0, rather than noise divided by ~0."""
        scores = scores.double()
        if self.settings.reward_norm == "batch" and scores.numel() > 1:
            mean, std = float(scores.mean()), float(scores.std(unbiased=False))
        elif self.settings.reward_norm == "running":
            self.moments.update(scores)
            mean, std = self.moments.mean, self.moments.std if self.moments.count > 1 else 0.0
        else:
            return 1.0, 0.0
        if std <= 1e-6 * max(1.0, abs(mean)):
            return 0.0, 0.0
        return 1 / std, -mean / std

    def _clip(self, scores: torch.Tensor) -> torch.Tensor:
        if self.settings.reward_clip is None:
            return scores
        return scores.clamp(-self.settings.reward_clip, self.settings.reward_clip)

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        """[N] scores after ``reward_norm`` and ``reward_clip``."""
        scale, shift = self._affine(scores)
        return self._clip(scale * scores.double() + shift).float()

    def tokens(
        self, scores: torch.Tensor, token_scores: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A dense reward normalised like :meth:`__call__`: scores [N] and token_scores [N, R]
        (each row summing to its score on the mask [N, R]) -> both normalised, the rows still
        summing to the scores: every token scaled, the shift and the clip's change on the last
        (in float64, so the rows' sums hold)."""
        scale, shift = self._affine(scores)
        normalised = self._clip(scale * scores.double() + shift)
        dense = scale * token_scores.double() * mask
        rows = torch.arange(len(scores))
        dense[rows, last_token_index(mask)] += normalised - scale * scores.double()
        return normalised.float(), dense.float()

    def state_dict(self) -> dict[str, Any]:
        return {"reward_moments": self.moments.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.moments.load_state_dict(state["reward_moments"])


def make_experience(
    run: OnlineRun[PPOConfig], critic: torch.nn.Module, normalise: ScoreNormaliser, iteration: int
) -> Experience:
    """One PPO rollout, phase by phase: samples, scores, π_ref, the critic's values,
    per-token rewards with the KL penalty, GAE, whitening."""
    config = run.config
    settings, kl = config.ppo, config.kl
    prompts = run.prompts_for(iteration)  # [P]
    batch = run.sample(prompts, iteration)  # [N] responses, with old log-probs
    # [N]; with per-token rewards (a dense PRM) where the tokens' texts end says where
    reward = score_rollout(run.reward, prompts.texts, batch, prompts.metadata, run.tokenizer)
    reference = run.reference_term(batch)  # log π_ref [N, R] and the KL, with β
    mask = batch.response_mask.float()  # [N, R]
    with torch.no_grad():  # values: V(s_t) of the critic at rollout time, 0 on padding
        values = response_values(
            critic,
            batch.prompt_ids,
            batch.prompt_mask,
            batch.response_ids,
            batch.response_mask,
            batch_size=config.sampling.batch_size,
            groups=batch.prompt_index,
        )  # [N, R]
    token_scores = None  # the whole score on the last token
    # per-token rewards only from a reward that places its value on tokens on purpose (a
    # dense PRM); others' (a length penalty's) sum on the last token, as they always have
    if reward.token_rewards is None or not getattr(run.reward, "reads_token_ends", False):
        scores = normalise(reward.scores)
    else:
        placed = dense_token_rewards(reward, batch.response_lengths)[:, : mask.shape[1]]
        placed = torch.nn.functional.pad(placed, (0, mask.shape[1] - placed.shape[1]))
        scores, token_scores = normalise.tokens(reward.scores, placed, mask)
    in_reward = reference.in_reward and reference.ref_logps is not None
    rewards, sums = ppo_token_rewards(
        scores,
        batch.logps,
        reference.ref_logps if in_reward else batch.logps,  # no reference: no penalty
        mask,
        kl_coef=reference.coef if in_reward else 0.0,
        score_tokens=token_scores,
        **kl.estimator_options(),
    )  # [N, R]: −β·KL per token, the score on the last (or where the reward put it)
    advantages, returns = gae(rewards, values, mask, gamma=settings.gamma, lam=settings.lam)
    if settings.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    sequences = max(sums["sequences"], 1.0)
    residual = masked_mean((returns - values).square(), mask)
    variance = masked_mean((returns - masked_mean(returns, mask)).square(), mask)
    metrics = rollout_metrics(batch, reward, reference, iteration) | {
        "rollout_score": sums["score_sum"] / sequences,
        "rollout_kl_reward": sums["kl_reward_sum"] / sequences,
        "rollout_value": float(masked_mean(values, mask)),
        "rollout_return": float(masked_mean(returns, mask)),
        # 1 − Var(R − V) / Var(R): how much of the returns the critic already predicts
        "rollout_explained_variance": float(1 - residual / variance) if variance > 0 else 0.0,
    }
    return run.experience(
        batch, reward, reference, advantages, returns=returns, values=values, metrics=metrics
    )


# ------------------------------------------------------------------------------ the loss


def logps_and_entropy(
    model: torch.nn.Module, batch: Experience
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logps, entropies)``, both [n, R] float32 with gradients, 0 off the mask: log π_θ of
    the sampled tokens and the entropy of π_θ at each, both of the tempered distribution
    ``softmax(logits / T)``. One forward; the output layer runs at the response tokens only,
    but holds their full [tokens, V] logits (the entropy needs them)."""
    device = next(model.parameters()).device
    inputs = TeacherForced.of(
        batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.mask, device
    )
    first, width = inputs.first, inputs.width
    real = inputs.response_mask.bool()  # [n, width]
    select = torch.zeros_like(inputs.input_ids, dtype=torch.bool)
    select[:, first : first + width] = real  # the positions that predict response tokens
    logits = logits_at(
        model, inputs.input_ids, inputs.attention_mask, inputs.position_ids, select
    )  # [tokens, V]
    logits = logits.float() / batch.temperature
    taken = selective_log_softmax(logits, inputs.response_ids[real])  # [tokens]
    entropies = entropy_from_logits(logits[None])[0]  # [tokens]
    shape = batch.response_ids.shape
    logps = torch.zeros(shape, dtype=torch.float32, device=device)
    entropy = torch.zeros(shape, dtype=torch.float32, device=device)
    logps[:, :width] = logps[:, :width].masked_scatter(real, taken)
    entropy[:, :width] = entropy[:, :width].masked_scatter(real, entropies)
    return logps, entropy


def ppo_loss(
    model: ActorCritic,
    batch: Experience,
    *,
    settings: PPOSettings,
    policy: PolicyLossSettings,
    kl: KLSettings,
    grad_accum: int = 1,
) -> tuple[torch.Tensor, Metrics]:
    """Clipped surrogate (+ a KL loss term if configured) + ``vf_coef`` · clipped value loss +
    ``entropy_coef`` · (−entropy), each reduced by the batch's aggregation (one divisor).

    The policy part is :func:`rlhf.online.loss.policy_gradient_loss` on log-probs computed
    here; metrics are means over the micro-batch divided by ``grad_accum`` (the Trainer sums
    them over a step's micro-batches), the rollout's metrics on the first micro-batch.
    """
    if batch.values is None or batch.returns is None:
        raise ValueError("PPO needs experience with values and returns (ppo.make_experience)")
    entropies = None
    if settings.entropy_coef > 0:
        logps, entropies = logps_and_entropy(model.policy, batch)
    else:
        logps = policy_logps(model.policy, batch)
    loss, metrics = policy_gradient_loss(
        model.policy, batch, policy=policy, kl=kl, grad_accum=grad_accum, logps=logps
    )
    options = dict(aggregation=batch.aggregation, max_length=batch.max_length)
    values = response_values(
        model.value,
        batch.prompt_ids,
        batch.prompt_mask,
        batch.response_ids,
        batch.mask,
        batch_size=len(batch),
        groups=batch.group,
    )  # [n, R] with gradients
    v_loss, v_sums = value_loss(
        values, batch.values, batch.returns, batch.mask, clip_eps=settings.value_clip_eps, **options
    )
    loss = loss + settings.vf_coef * v_loss
    tokens = max(v_sums["tokens"], 1.0)
    extra = {
        "value_loss": v_sums["value_loss_sum"] / max(batch.loss_units, 1),
        "value_clip_frac": v_sums["value_clipped_tokens"] / tokens,
        "value": v_sums["value_sum"] / tokens,
    }
    if entropies is not None:
        e_loss, e_sums = entropy_loss(batch.mask, entropies=entropies, **options)
        loss = loss + settings.entropy_coef * e_loss
        extra["entropy"] = e_sums["entropy_sum"] / tokens
    return loss, metrics | {key: value / grad_accum for key, value in extra.items()}


# ------------------------------------------------------------------------------ early stop


class EarlyStop:
    """A step callback: once a step's approximate KL(π_old‖π_θ) exceeds ``target``, the rest
    of the rollout's minibatches are skipped and the next step starts a new rollout
    (Schulman et al.'s baselines / OpenAI Spinning Up ``target_kl``)."""

    def __init__(self, loader: ExperienceBuffer, target: float) -> None:
        self.loader, self.target, self.stopped = loader, target, 0

    def on_step_end(self, step: int, metrics: Mapping[str, float]) -> None:
        approx_kl = metrics.get("approx_kl", 0.0)
        if approx_kl > self.target and self.loader.position < len(self.loader):
            skipped = len(self.loader) - self.loader.position
            self.loader.end_iteration()
            self.stopped += 1
            logger.info(
                "step %d: approx KL %.4g > target %.4g, skipping %d micro-batches of iteration %d",
                step, approx_kl, self.target, skipped, self.loader.iteration,
            )  # fmt: skip


# ------------------------------------------------------------------------------ the recipe


def load_critic(config: PPOConfig, run: OnlineRun[PPOConfig]) -> torch.nn.Module:
    """The critic: from ``value.path``, else from the policy's starting weights (the folder
    they were loaded from: the init SFT's output or model.path)."""
    path = config.value.path or unwrap(run.policy).name_or_path
    lora = LoraSpec(**config.model.lora.model_dump()) if config.model.lora else None
    return load_value_model(
        path,
        run.tokenizer,
        dtype=config.model.dtype,
        device=next(run.policy.parameters()).device,
        attn_implementation=config.model.attn_implementation,
        lora=lora,
        seed=config.value.seed,
    )


def run_ppo(config: PPOConfig, resume: bool = False) -> RunResult:
    """Train a policy with PPO (see the module docstring); export it to ``<out>/model``."""
    # the per-token KL rewards read the rollout's old log-probs
    run = prepare_online(config, resume, advantages_read_old_logps=True)
    critic = load_critic(config, run)
    normalise = ScoreNormaliser(config.ppo)

    def callbacks(buffer: ExperienceBuffer) -> Sequence[StepCallback]:
        if config.ppo.target_kl is None:
            return ()
        return (EarlyStop(buffer, config.ppo.target_kl),)

    loss_fn = partial(
        ppo_loss,
        settings=config.ppo,
        policy=config.policy,
        kl=config.kl,
        grad_accum=config.grad_accum,
    )
    return run_online(
        run,
        partial(make_experience, run, critic, normalise),
        state={"estimator": normalise},  # the checkpoint key PPO's running moments always had
        loss_fn=loss_fn,
        trained=ActorCritic(run.policy, critic),
        callbacks=callbacks,
    )
