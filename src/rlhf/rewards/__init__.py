"""Rewards behind one protocol: ``reward(prompts, responses, metadata=None) -> Tensor [B]``.

Reward models, rules (verifiable checks, format checks), judges (an OpenAI-compatible
endpoint or a local model), weighted composites, the length and missing-EOS penalties, and the
simulated world's gold reward all implement :class:`RewardFunction`, so every recipe that
needs a reward takes any of them. ``metadata`` is one mapping per row (the ground-truth
``answer``, ``finished``, ``response_tokens``; see :mod:`rlhf.rewards.base`), and
:meth:`Reward.score` also gives each composite part's reward and per-token rewards. Configs
name one with a :class:`RewardSpec` (see :mod:`rlhf.rewards.spec` and docs/rewards.md).

Preferences, ``preference(prompts, first, second, metadata=None) -> Tensor [N]`` =
P(first ≻ second), are the same idea for two responses at once: a pairwise preference model,
the world's gold preference or Bradley–Terry from any reward, named by a
:class:`PreferenceSpec` (:mod:`rlhf.rewards.preference`, docs/preference-model.md).
"""

from __future__ import annotations

from rlhf.rewards.base import (
    Metadata,
    Reward,
    RewardFunction,
    RewardOutput,
    call_reward,
    dense_token_rewards,
    response_as_text,
    rollout_metadata,
    score_reward,
)
from rlhf.rewards.composite import CompositeReward, LengthPenalty, MissingEOSPenalty
from rlhf.rewards.judge import HTTPJudge, JudgeError, LocalJudge, parse_score
from rlhf.rewards.model import RewardModelReward
from rlhf.rewards.preference import (
    PreferenceFunction,
    PreferenceSpec,
    build_preference,
    call_preference,
)
from rlhf.rewards.rules import (
    RULES,
    AnswerFormat,
    ArithmeticCorrectness,
    MathAnswer,
    RegexFormat,
    arithmetic_answer,
    final_number,
    parse_number,
    reference_answer,
    response_answer,
)
from rlhf.rewards.spec import JudgeSpec, RewardSpec, build_reward, parse_reward_spec
from rlhf.rewards.world_gold import WorldGold
from rlhf.rollout.types import ANSWER, FINISHED, RESPONSE_TOKENS

__all__ = [
    "ANSWER",
    "FINISHED",
    "RESPONSE_TOKENS",
    "RULES",
    "AnswerFormat",
    "ArithmeticCorrectness",
    "CompositeReward",
    "HTTPJudge",
    "JudgeError",
    "JudgeSpec",
    "LengthPenalty",
    "LocalJudge",
    "MathAnswer",
    "Metadata",
    "MissingEOSPenalty",
    "PreferenceFunction",
    "PreferenceSpec",
    "RegexFormat",
    "Reward",
    "RewardFunction",
    "RewardModelReward",
    "RewardOutput",
    "RewardSpec",
    "WorldGold",
    "arithmetic_answer",
    "build_preference",
    "build_reward",
    "call_preference",
    "call_reward",
    "dense_token_rewards",
    "final_number",
    "parse_number",
    "parse_reward_spec",
    "parse_score",
    "reference_answer",
    "response_answer",
    "response_as_text",
    "rollout_metadata",
    "score_reward",
]
