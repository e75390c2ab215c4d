"""A learned reward model as a :class:`~rlhf.rewards.base.RewardFunction`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rlhf.data.records import Text
from rlhf.rewards.base import Metadata, Reward, RewardOutput, check_lengths, response_as_text


class RewardModelReward(Reward):
    """The normalised score of a reward model trained by ``rlhf rm``.

    Normalised means ``gain * raw + bias`` with the gain and bias stored beside the model, so
    that the rewards of its reference (SFT) samples have mean 0 and standard deviation 1
    (Ziegler et al. 2019, §2.2; Stiennon et al. 2020): one KL coefficient or threshold then
    means the same for every reward model. Metadata is not used.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "auto",
        batch_size: int = 16,
        normalized: bool = True,
    ) -> None:
        from rlhf.models.device import resolve_device
        from rlhf.models.reward import load_reward_model

        self.path = str(path)
        self.model = load_reward_model(path, device=str(resolve_device(device)))
        self.batch_size, self.normalized = batch_size, normalized

    def score(
        self, prompts: Sequence[Text], responses: Sequence[str], metadata: Metadata = None
    ) -> RewardOutput:
        check_lengths(prompts, responses, metadata)
        paired = [response_as_text(p, r) for p, r in zip(prompts, responses, strict=True)]
        scores = self.model.score(
            prompts, paired, batch_size=self.batch_size, normalized=self.normalized
        )
        return RewardOutput(scores.detach().float().cpu())

    def __repr__(self) -> str:
        return f"RewardModelReward({self.path!r})"
