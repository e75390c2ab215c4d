"""Online DPO: the DPO family's losses on pairs the current policy samples and a labeller
orders (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback", Alg. 1).

The offline losses are E_{(x, y_w, y_l) ~ μ}[f(β ρ_θ)] over a fixed dataset μ; here μ is the
policy itself: each iteration samples K ≥ 2 responses to each prompt from π_θ, a labeller
picks the preferred and the dispreferred one, and any loss of
:data:`rlhf.losses.preference.PREFERENCE_LOSSES` (``loss.name``: dpo, ipo, hinge = SLiC,
simpo, ...) updates the policy on those pairs. The labeller (``labeller.kind``):

* ``reward``: the run's ``reward`` (a reward model, a rule, a judge or a composite) scores
  the K samples and the best and the worst make the pair (Xiong et al. 2024's "best vs
  worst"); a group whose scores all tie gives no pair;
* ``annotators``: the embedded world's simulated people (:mod:`rlhf.sim.annotators`) compare
  the two samples (K = 2) or rank the K (Plackett–Luce) and the first and the last make the
  pair; identical responses give no pair.

π_ref is the initial policy, fixed, or refreshed to the current policy every
``online_dpo.reference_refresh`` iterations (the refreshed weights are saved with the run,
so ``--resume`` continues against the same π_ref). No importance ratio: the loss is on the
policy's own fresh samples, so the sampling policy's log-probs are never needed.

    rlhf online-dpo --preset tiny
    rlhf online-dpo --preset tiny --loss ipo
    rlhf online-dpo --config world.yaml labeller.kind=annotators  # world prompts, its people

Shapes: P prompts, K samples per prompt, N = 2P pair rows, R response tokens.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator
from safetensors.torch import load_file, save_file

from rlhf.config import StrictModel
from rlhf.models.parallel import full_state_dict, is_main_process
from rlhf.online.experience import Experience
from rlhf.online.loss import pair_preference_loss
from rlhf.online.phases import ReferenceTerm, rollout_metrics
from rlhf.online.settings import KLSettings, RolloutSettings
from rlhf.recipes.common import LabellerConfig, RunResult
from rlhf.recipes.offline_common import PreferenceLossConfig
from rlhf.recipes.online_common import OnlineConfig, OnlineRun, prepare_online, run_online
from rlhf.rewards.base import score_rollout
from rlhf.rollout.measure import reference_logps

logger = logging.getLogger("rlhf")
REFRESHED_REFERENCE = "reference-refreshed"

# ------------------------------------------------------------------------------ config


class OnlineDPOSettings(StrictModel):
    reference_refresh: int = Field(
        0,
        ge=0,
        description="Move π_ref to the current policy every this many iterations (0: keep the "
        "initial policy).",
    )


class OnlineDPOConfig(OnlineConfig):
    """Online DPO (and every loss of the DPO family) on the policy's own samples."""

    reads_old_logps = False  # no importance ratio: the pairs are the current policy's samples

    loss: PreferenceLossConfig = Field(
        default_factory=PreferenceLossConfig, description="The DPO-family loss and its β."
    )
    labeller: LabellerConfig = Field(
        default_factory=LabellerConfig, description="Who picks the preferred response."
    )
    online_dpo: OnlineDPOSettings = Field(
        default_factory=OnlineDPOSettings, description="The reference's refresh."
    )
    rollout: RolloutSettings = Field(
        default_factory=lambda: RolloutSettings(samples_per_prompt=2),
        description="Rollouts: K samples per prompt (2: Guo et al.'s pair), one pair each.",
    )
    kl: KLSettings = Field(
        default_factory=lambda: KLSettings(coef=0.0),
        description="Unused: the loss's β (loss.beta) is the KL strength; keep coef 0.",
    )

    @model_validator(mode="after")
    def _pairs(self) -> OnlineDPOConfig:
        if self.rollout.samples_per_prompt < 2:
            raise ValueError("rollout.samples_per_prompt: a pair needs ≥ 2 samples per prompt")
        if self.kl.coef != 0:
            raise ValueError(
                "kl.coef: online DPO's KL strength is loss.beta (the implicit reward's β); "
                "set kl.coef=0"
            )
        if self.train.batch_size % 2:
            raise ValueError(
                f"train.batch_size {self.train.batch_size}: rows come in pairs (chosen, "
                "rejected); use an even number"
            )
        if self.online_dpo.reference_refresh and not self.loss.needs_reference:
            raise ValueError(
                f"online_dpo.reference_refresh: the {self.loss.name} loss has no reference"
            )
        if self.online_dpo.reference_refresh and (
            self.model.lora is not None or self.reference.path is not None
        ):
            raise ValueError(
                "online_dpo.reference_refresh moves a frozen copy of the policy: it needs the "
                "default reference (no reference.path) and a policy without LoRA"
            )
        if self.online_dpo.reference_refresh and (
            self.distributed.reference_workers or self.distributed.train_workers > 1
        ):
            raise ValueError(
                "online_dpo.reference_refresh copies the policy into π_ref in one process: "
                "leave distributed.reference_workers at 0 and train_workers at 1"
            )
        return self

    @property
    def trains_against_reference(self) -> bool:
        return self.loss.needs_reference

    @property
    def episodes_per_iteration(self) -> int:
        return self.rollout.prompts_per_iteration * 2  # one pair (two rows) per prompt

    @property
    def episodes_description(self) -> str:
        return "2 × rollout.prompts_per_iteration (a pair per prompt)"


# ------------------------------------------------------------------------------ the reference


class ReferenceRefresh:
    """π_ref ← π_θ every ``every`` iterations (before sampling iteration 1 + n·every). The
    weights are saved under ``<out>/reference-refreshed/`` and the checkpointed state names
    the iteration, so a resumed run loads the same π_ref."""

    def __init__(self, run: OnlineRun[OnlineDPOConfig], every: int) -> None:
        self.run, self.every, self.at = run, every, 0

    @property
    def folder(self) -> Path:
        return self.run.out / REFRESHED_REFERENCE

    def before(self, iteration: int) -> None:
        if not self.every or iteration == 1 or (iteration - 1) % self.every:
            return
        assert self.run.reference is not None
        # one process only (the config refuses several ranks): the policy's own tensors
        weights = {
            name: tensor.contiguous() for name, tensor in full_state_dict(self.run.policy).items()
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        # every refresh is kept: a checkpoint names the one it was trained against
        save_file(weights, self.folder / f"iteration-{iteration}.safetensors")
        self.run.reference.module.load_state_dict(weights, strict=True)
        self.at = iteration
        logger.info("iteration %d: π_ref is now the current policy", iteration)

    def _load(self, iteration: int) -> None:
        assert self.run.reference is not None
        path = self.folder / f"iteration-{iteration}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: the refreshed π_ref of iteration {iteration}, which the checkpoint "
                "names, is missing (was the run folder changed?)"
            )
        self.run.reference.module.load_state_dict(load_file(path), strict=True)

    def state_dict(self) -> dict[str, Any]:
        return {"at": self.at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.at = int(state["at"])
        if self.at:
            self._load(self.at)


# ------------------------------------------------------------------------------ experience


def make_experience(
    run: OnlineRun[OnlineDPOConfig], refresh: ReferenceRefresh, iteration: int
) -> Experience:
    """One rollout: K samples per prompt, labelled into one (chosen, rejected) pair each."""
    config = run.config
    k = config.rollout.samples_per_prompt
    refresh.before(iteration)
    prompts = run.prompts_for(iteration)  # [P]
    batch = run.sample(prompts, iteration)  # [P·K] prompt-major
    reward = score_rollout(run.reward, prompts.texts, batch, prompts.metadata)  # [P·K]

    # the labeller orders each group into a pair
    seed = config.train.seed * 1_000_003 + iteration
    chosen, rejected = config.labeller.pairs(
        prompts.texts, batch.response_texts, reward.scores, k, seed
    )
    tied = chosen == rejected  # [P]: no preference, no pair
    rows = torch.stack([chosen, rejected], dim=1).flatten()  # [2P] chosen, rejected, ...
    pairs = batch.select_rows(rows.tolist())

    ref_logps = None
    if config.loss.needs_reference:
        assert run.reference is not None
        ref_logps = reference_logps(
            run.reference, pairs, config.sampling.logp_temperature, config.sampling.batch_size
        )
    reference = ReferenceTerm(ref_logps, None, 0.0, in_reward=False)
    metrics = rollout_metrics(batch, reward, ReferenceTerm(None, None, 0.0, False), iteration)
    chosen_scores, rejected_scores = reward.scores[chosen], reward.scores[rejected]
    metrics |= {
        "rollout_pairs": float((~tied).sum()),
        "rollout_tied_groups": float(tied.sum()),
        # how far apart the labeller's two picks are on the run's reward
        "rollout_pair_reward_gap": float((chosen_scores - rejected_scores)[~tied].mean())
        if (~tied).any()
        else 0.0,
    }
    keep = (~tied).repeat_interleave(2)  # [2P]
    experience = run.experience(
        pairs,
        reward.select(rows),
        reference,
        torch.zeros(len(pairs)),  # no advantages: the pair's order is the signal
        keep=keep,
        metrics=metrics,
    )
    return replace(experience, pairs=True)


def run_online_dpo(config: OnlineDPOConfig, resume: bool = False) -> RunResult:
    run = prepare_online(config, resume)
    refresh = ReferenceRefresh(run, config.online_dpo.reference_refresh)
    if not resume and refresh.folder.exists() and is_main_process():
        shutil.rmtree(refresh.folder)  # a previous run's, in an overwritten folder
    loss_fn = partial(
        pair_preference_loss, loss=config.loss.function(), grad_accum=run.train.grad_accum
    )
    return run_online(
        run,
        partial(make_experience, run, refresh),
        state={"reference_refresh": refresh},
        loss_fn=loss_fn,
        group_size=2,
    )
