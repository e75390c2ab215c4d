"""``distributed.*``: how many workers of each role a run uses and where they run.

Every recipe's config has this section (:class:`rlhf.recipes.common.RecipeConfig`). Its
defaults describe the single process every run has always been: nothing here starts Ray
unless a key asks for more than one process (or names a cluster to join).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlhf.config import StrictModel

Placement = Literal["pack", "spread", "strict_spread"]


class DistributedConfig(StrictModel):
    """Ray placement of a run's roles and FSDP2 data parallelism of its training."""

    train_workers: int = Field(
        1,
        ge=1,
        description="Training ranks: data parallel with FSDP2 (weights, gradients and AdamW's "
        "state sharded over them). A global batch of train.batch_size × grad_accum is split "
        "over the ranks, so the losses are those of one process at that batch.",
    )
    rollout_workers: int = Field(
        0,
        ge=0,
        description="Online recipes: workers that only sample (each holds a copy of the policy "
        "that the trainer updates after every optimiser step, with a verified sync); 0 samples "
        "in the training process.",
    )
    reward_workers: int = Field(
        0,
        ge=0,
        description="Online recipes: workers that hold the reward (a reward model, a local "
        "judge) and score each rollout, so it is not loaded beside the policy in every "
        "training rank; 0 scores in the training process.",
    )
    reference_workers: int = Field(
        0,
        ge=0,
        description="Online recipes: workers that hold the frozen reference π_ref and compute "
        "its log-probs of each rollout, so it is not a second model beside the policy in every "
        "training rank; 0 keeps it in the training process.",
    )
    max_staleness: int = Field(
        0,
        ge=0,
        description="Asynchronous rollouts (with rollout_workers): how many policy updates a "
        "rollout may lag behind the policy it trains. 0: synchronous (sample, then train); 1: "
        "one-step off-policy (rollout k+1 is sampled while rollout k trains); s: up to s "
        "rollouts in flight. The lag is corrected with mismatch.correction and logged per "
        "step as rollout_staleness.",
    )
    address: str | None = Field(
        None,
        description="A Ray cluster to join: 'auto' (the one `ray start` began on this machine) "
        "or 'HOST:PORT' of its head; null starts a private local cluster for the run (inside a "
        "Ray job, whose RAY_ADDRESS names its cluster: that one).",
    )
    cpus_per_worker: int = Field(
        1,
        ge=1,
        description="CPU cores each worker reserves in Ray and uses as its torch thread budget "
        "(workers sharing a machine must not oversubscribe its cores).",
    )
    gpus_per_worker: float = Field(
        0.0, ge=0, description="GPUs each worker reserves (1 on a GPU cluster; 0 on CPU)."
    )
    placement: Placement = Field(
        "pack",
        description="Ray placement-group strategy over the workers: 'pack' (as few nodes as "
        "possible), 'spread', or 'strict_spread' (every worker on its own node).",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="torch.distributed backend: 'auto' is nccl with GPUs, gloo without."
    )
    start_timeout_s: float = Field(
        300.0,
        gt=0,
        description="How long to wait for Ray to place every worker before stopping with the "
        "resources it lacks.",
    )

    @property
    def enabled(self) -> bool:
        """Whether the run goes through Ray rather than this process alone."""
        return (
            self.train_workers > 1
            or self.rollout_workers > 0
            or self.reward_workers > 0
            or self.reference_workers > 0
            or self.address is not None
        )

    @property
    def workers(self) -> int:
        return (
            self.train_workers + self.rollout_workers + self.reward_workers + self.reference_workers
        )

    @model_validator(mode="after")
    def _staleness_needs_rollout_workers(self) -> DistributedConfig:
        if self.max_staleness > 0 and self.rollout_workers == 0:
            raise ValueError(
                "distributed.max_staleness: asynchronous rollouts sample on rollout workers "
                "while the trainer trains; set distributed.rollout_workers ≥ 1"
            )
        return self
