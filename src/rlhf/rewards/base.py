"""The reward protocol and the named reward specs recipes configure.

A reward is anything that scores responses to prompts::

    reward(prompts: Sequence[Text], responses: Sequence[str]) -> Tensor [N]   # float32

so a learned reward model, a rule (a verifiable answer check), a judge, or the gold reward of
a simulated world plug into best-of-N, RAFT and the online policy optimisers alike. Responses
are the assistant's text; for message-list prompts :func:`response_as_text` wraps them as one
assistant turn wherever a record needs both sides in one format.

Configs name a reward with a :class:`RewardSpec`: ``reward: {model: PATH}`` (a reward model
trained by ``rlhf rm``, normalised scores) or ``reward: {rule: arithmetic}`` (see
:data:`rlhf.rewards.rules.RULES`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from pydantic import Field, field_validator, model_validator

from rlhf.config import StrictModel
from rlhf.data.records import Message, Text


@runtime_checkable
class RewardFunction(Protocol):
    """Scores ``responses[i]`` as an answer to ``prompts[i]``: [N] prompts, [N] responses -> [N]."""

    def __call__(self, prompts: Sequence[Text], responses: Sequence[str]) -> torch.Tensor: ...


def response_as_text(prompt: Text, response: str) -> Text:
    """``response`` in the prompt's format: the string itself, or one assistant message."""
    return response if isinstance(prompt, str) else (Message("assistant", response),)


def check_lengths(prompts: Sequence[Text], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")


class RewardSpec(StrictModel):
    """Which reward to use: exactly one of `model` and `rule`."""

    model: str | None = Field(
        None, description="Reward model folder (from `rlhf rm`); its normalised score."
    )
    rule: str | None = Field(None, description="A rule reward by name, e.g. 'arithmetic'.")
    device: str = Field("auto", description="Where a reward model runs: auto, cpu, cuda:0, ...")
    batch_size: int = Field(16, ge=1, description="Responses a reward model scores at once.")

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, rule: str | None) -> str | None:
        from rlhf.rewards.rules import RULES

        if rule is not None and rule not in RULES:
            raise ValueError(f"unknown rule {rule!r} (known: {', '.join(sorted(RULES))})")
        return rule

    @model_validator(mode="after")
    def _one_source(self) -> RewardSpec:
        if (self.model is None) == (self.rule is None):
            raise ValueError("set exactly one of reward.model and reward.rule")
        return self

    def describe(self) -> str:
        return f"rule:{self.rule}" if self.rule is not None else f"model:{self.model}"


def build_reward(spec: RewardSpec) -> RewardFunction:
    """The reward function a spec names (a reward model is loaded now, so errors come early)."""
    if spec.rule is not None:
        from rlhf.rewards.rules import RULES

        return RULES[spec.rule]()
    from rlhf.rewards.model import RewardModelReward

    return RewardModelReward(spec.model, device=spec.device, batch_size=spec.batch_size)


def parse_reward_spec(text: str) -> RewardSpec:
    """``"rule=arithmetic"`` or ``"model=PATH"`` (comma-separated ``key=value``; the command
    line's form of a :class:`RewardSpec`)."""
    from rlhf.config import ConfigError, validate_config

    values = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"reward {text!r}: expected rule=NAME or model=PATH")
        values[key.strip()] = value.strip()
    return validate_config(RewardSpec, values, f"reward {text!r}")
