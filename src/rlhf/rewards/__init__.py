"""Rewards behind one protocol: ``reward(prompts, responses) -> Tensor [N]``.

Reward models, rules (verifiable checks), judges and the simulated world's gold reward all
implement :class:`RewardFunction`, so every recipe that needs a reward takes any of them.
Configs name one with a :class:`RewardSpec` (``{model: PATH}`` or ``{rule: NAME}``).
"""

from __future__ import annotations

from rlhf.rewards.base import (
    RewardFunction,
    RewardSpec,
    build_reward,
    parse_reward_spec,
    response_as_text,
)
from rlhf.rewards.model import RewardModelReward
from rlhf.rewards.rules import RULES, ArithmeticCorrectness, arithmetic_answer, final_number

__all__ = [
    "RULES",
    "ArithmeticCorrectness",
    "RewardFunction",
    "RewardModelReward",
    "RewardSpec",
    "arithmetic_answer",
    "build_reward",
    "final_number",
    "parse_reward_spec",
    "response_as_text",
]
