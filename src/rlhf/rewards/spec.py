"""Reward configs: :class:`RewardSpec` names a reward, :func:`build_reward` makes it.

One spec has exactly one source (``model``, ``rule``, ``regex``, ``judge`` or ``composite``),
and optionally the length and missing-EOS penalties on top::

    reward: {rule: gsm8k, missing_eos_reward: 0}
    reward:
      composite:
        correct: {rule: gsm8k, weight: 1.0}
        format: {rule: gsm8k_format, weight: 0.2}
        judge:
          weight: 0.5
          judge: {endpoint: "http://localhost:8000/v1", model: Qwen/Qwen2.5-7B-Instruct}
      length_penalty: 0.001
      missing_eos_penalty: 1.0

On the command line (``--reward``) a spec is ``rule=NAME`` / ``model=PATH`` (comma-separated
``key=value`` of the top-level keys), or a YAML/JSON file holding one (``--reward
reward.yaml``, or ``config=reward.yaml,key=value,...`` to change some of its keys).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from rlhf.config import StrictModel

if TYPE_CHECKING:
    from rlhf.rewards.base import RewardFunction

SOURCES = ("model", "rule", "regex", "judge", "composite", "prm")
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


class JudgeSpec(StrictModel):
    """A language model as the judge: an OpenAI-compatible endpoint, or a local causal LM."""

    endpoint: str | None = Field(
        None,
        description="OpenAI-compatible API base, e.g. http://localhost:8000/v1 (chat "
        "completions are posted to ENDPOINT/chat/completions), or the full URL.",
    )
    model: str | None = Field(
        None, description="With `endpoint`: the model name sent with each request (required)."
    )
    local_model: str | None = Field(
        None,
        description="Instead of `endpoint`: a causal LM folder or hub name judging in process.",
    )
    method: Literal["score", "yes_no"] = Field(
        "score",
        description="'score': a number on [min_score, max_score] (an endpoint's reply is parsed; "
        "a local model's is the expected score over the numbers' probabilities); 'yes_no' "
        "(local_model only): P(Yes) over P(Yes) + P(No).",
    )
    template: str | None = Field(
        None,
        description="User message asking for the grade; placeholders {prompt}, {response}, "
        "{answer} (metadata answer), {min_score}, {max_score}. Default: a built-in one.",
    )
    template_file: str | None = Field(
        None, description="A file holding the template (instead of `template`)."
    )
    system: str | None = Field(
        "You are a strict, fair grader of answers.",
        description="System message before the template (null: none).",
    )
    min_score: float = Field(1, description="Lowest score of the scale the template asks for.")
    max_score: float | None = Field(
        None,
        description="Highest score of the scale (default 10 for an endpoint, 9 for a local "
        "model, whose scale's numbers must each be one token).",
    )
    normalize: bool = Field(True, description="Map scores from [min_score, max_score] to [0, 1].")
    api_key_env: str | None = Field(
        None,
        description="Environment variable holding the endpoint's API key (sent as a bearer "
        "token); null: no key.",
    )
    temperature: float = Field(0.0, ge=0, description="Sampling temperature of the judge's reply.")
    max_tokens: int = Field(16, ge=1, description="Longest reply the endpoint may write.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds to wait for one reply.")
    max_retries: int = Field(
        3,
        ge=0,
        description="Retries of a failed request (connection, timeout, 429, 5xx, no score).",
    )
    backoff_s: float = Field(
        1.0, ge=0, description="First wait before a retry, doubled each time (or Retry-After)."
    )
    concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    on_failure: float | None = Field(
        None,
        description="Reward of a response still unscored after the retries (null: stop with an "
        "error naming the endpoint).",
    )
    chat: bool = Field(
        True, description="Local model: wrap the prompt in its chat template (false: plain text)."
    )
    dtype: str = Field(
        "float32", description="Local model: weights dtype (float32, bfloat16, ...)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> JudgeSpec:
        from rlhf.rewards.judge import check_template

        if (self.endpoint is None) == (self.local_model is None):
            raise ValueError("set exactly one of judge.endpoint and judge.local_model")
        if self.endpoint is not None:
            if not self.model:
                raise ValueError("judge.model (the model name at the endpoint) is required")
            if not self.endpoint.startswith(("http://", "https://")):
                raise ValueError(f"judge.endpoint {self.endpoint!r} must start with http(s)://")
            if self.method != "score":
                raise ValueError("judge.method yes_no needs judge.local_model")
        elif self.model is not None:
            raise ValueError("judge.model names the model at an endpoint; use judge.local_model")
        elif self.method == "score" and not all(
            float(v).is_integer() for v in (self.min_score, self.scale_max)
        ):
            raise ValueError("a local judge's min_score and max_score must be whole numbers")
        if self.template is not None and self.template_file is not None:
            raise ValueError("set at most one of judge.template and judge.template_file")
        if self.template_file is not None:
            try:
                Path(self.template_file).read_text(encoding="utf-8")
            except OSError as error:
                raise ValueError(
                    f"judge.template_file {self.template_file}: {error.strerror or error}"
                ) from None
        if self.template is not None:
            try:
                check_template(self.template)
            except ValueError as error:
                raise ValueError(f"judge.template: {error}") from None
        if not self.min_score < self.scale_max:
            raise ValueError(
                f"judge.min_score {self.min_score:g} must be below max_score {self.scale_max:g}"
            )
        return self

    @property
    def scale_max(self) -> float:
        if self.max_score is not None:
            return self.max_score
        return 10.0 if self.endpoint is not None else 9.0

    def template_text(self) -> str | None:
        if self.template_file is not None:
            return Path(self.template_file).read_text(encoding="utf-8")
        return self.template

    def describe(self) -> str:
        return f"judge:{self.endpoint or self.local_model}"


class RewardSpec(StrictModel):
    """Which reward to use: exactly one of `model`, `rule`, `regex`, `judge` and `composite`,
    optionally with length and missing-EOS penalties."""

    # `model: PATH` given where the default is `rule: world_gold` names another reward
    partial_keeps_default: ClassVar[bool] = False

    model: str | None = Field(
        None, description="Reward model folder (from `rlhf rm`); its normalised score."
    )
    rule: str | None = Field(
        None,
        description="A rule reward by name: arithmetic, gsm8k (final number vs metadata "
        "`answer`), gsm8k_strict (only a `#### N` answer counts), gsm8k_format (a `#### N` "
        "line is present), world_gold (the embedded world's gold reward, docs/world.md), "
        "step_world (1 when the steps solve the step world's problem, docs/prm.md).",
    )
    regex: str | None = Field(
        None, description="Format check: 1 when this Python regex matches the response, else 0."
    )
    prm: str | None = Field(
        None,
        description="Process reward model folder (from `rlhf prm`): the response split into "
        "steps at its separator, each step's P(correct) aggregated (prm_aggregation).",
    )
    prm_aggregation: Literal["product", "min", "last"] = Field(
        "product", description="How a PRM's step probabilities make one reward (with prm)."
    )
    prm_dense: bool = Field(
        False,
        description="With prm: in PPO, reward each step on its last token (its change to the "
        "running aggregate; the steps sum to the sequence reward) instead of the whole "
        "reward on the response's last token (docs/prm.md#the-prm-as-a-dense-reward-in-ppo).",
    )
    regex_full_match: bool = Field(
        False, description="With `regex`: the pattern must match the whole response."
    )
    judge: JudgeSpec | None = Field(None, description="A language model grading each response.")
    composite: dict[str, RewardSpec] | None = Field(
        None,
        description="Named rewards summed with their `weight`s; each part's mean is logged "
        "on its own.",
    )
    weight: float = Field(1.0, description="This reward's weight inside a `composite`.")
    device: str = Field(
        "auto", description="Where a reward model or local judge runs: auto, cpu, cuda:0, ..."
    )
    batch_size: int = Field(
        16, ge=1, description="Responses a reward model or local judge scores at once."
    )
    length_penalty: float = Field(
        0.0, ge=0, description="Subtract this per response token (or character) past `length_free`."
    )
    length_free: int = Field(
        0, ge=0, description="Tokens (or characters) a response may use before the length penalty."
    )
    length_unit: Literal["tokens", "chars"] = Field(
        "tokens", description="What the length penalty counts: tokens (from the rollout) or chars."
    )
    missing_eos_penalty: float | None = Field(
        None, description="Subtract this from the reward of a response that never emitted EOS."
    )
    missing_eos_reward: float | None = Field(
        None,
        description="Give this reward instead to a response that never emitted EOS (0 zeroes "
        "it); not with missing_eos_penalty.",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, name: str) -> str:
        from rlhf.models.device import resolve_device

        resolve_device(name)  # a ValueError saying why the name is not a device here
        return name

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, rule: str | None) -> str | None:
        from rlhf.rewards.rules import RULES

        if rule is not None and rule not in RULES:
            raise ValueError(f"unknown rule {rule!r} (known: {', '.join(sorted(RULES))})")
        return rule

    @field_validator("regex")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"regex {pattern!r} does not compile: {error}") from None
        return pattern

    @field_validator("composite")
    @classmethod
    def _part_names(cls, parts: dict[str, RewardSpec] | None) -> dict[str, RewardSpec] | None:
        if parts is not None:
            if not parts:
                raise ValueError("a composite needs at least one named reward")
            for name in parts:
                if not name or "/" in name or name in ("length_penalty", "missing_eos"):
                    raise ValueError(
                        f"composite part name {name!r}: must be non-empty, without '/', and not "
                        "length_penalty or missing_eos (those name the penalties)"
                    )
        return parts

    @model_validator(mode="after")
    def _one_source(self) -> RewardSpec:
        chosen = [name for name in SOURCES if getattr(self, name) is not None]
        if len(chosen) != 1:
            got = f" (got {', '.join(chosen)})" if chosen else ""
            raise ValueError(
                "set exactly one of reward.model and reward.rule (or regex, judge, composite, "
                f"prm){got}"
            )
        if self.missing_eos_penalty is not None and self.missing_eos_reward is not None:
            raise ValueError("set at most one of missing_eos_penalty and missing_eos_reward")
        if self.prm_dense and self.prm is None:
            raise ValueError("prm_dense: true needs a process reward model (prm: PATH)")
        return self

    @property
    def source(self) -> str:
        return next(name for name in SOURCES if getattr(self, name) is not None)

    def describe(self) -> str:
        """A short label for logs: ``rule:gsm8k``, ``model:PATH``, ``composite(a+b)``, ..."""
        if self.composite is not None:
            text = f"composite({'+'.join(self.composite)})"
        elif self.judge is not None:
            text = self.judge.describe()
        else:
            text = f"{self.source}:{getattr(self, self.source)}"
            if self.prm_dense:
                text += "-dense"
        if self.length_penalty:
            text += f"-length{self.length_penalty:g}"
        if self.missing_eos_penalty is not None:
            text += f"-eos{self.missing_eos_penalty:g}"
        if self.missing_eos_reward is not None:
            text += f",eos={self.missing_eos_reward:g}"
        return text


def _build_source(spec: RewardSpec) -> RewardFunction:
    if spec.rule is not None:
        from rlhf.rewards.rules import RULES

        return RULES[spec.rule]()
    if spec.regex is not None:
        from rlhf.rewards.rules import RegexFormat

        return RegexFormat(spec.regex, full_match=spec.regex_full_match)
    if spec.judge is not None:
        return _build_judge(spec.judge, spec)
    if spec.composite is not None:
        from rlhf.rewards.composite import CompositeReward

        return CompositeReward(
            {name: (part.weight, build_reward(part)) for name, part in spec.composite.items()}
        )
    if spec.prm is not None:
        from rlhf.rewards.prm import ProcessReward

        return ProcessReward(
            spec.prm, aggregation=spec.prm_aggregation, dense=spec.prm_dense,
            device=spec.device, batch_size=spec.batch_size,
        )  # fmt: skip
    from rlhf.rewards.model import RewardModelReward

    return RewardModelReward(spec.model, device=spec.device, batch_size=spec.batch_size)


def _build_judge(judge: JudgeSpec, spec: RewardSpec) -> RewardFunction:
    from rlhf.rewards.judge import DEFAULT_SCORE_TEMPLATE, HTTPJudge, LocalJudge

    template = judge.template_text()
    if judge.endpoint is not None:
        return HTTPJudge(
            judge.endpoint, judge.model or "", template=template or DEFAULT_SCORE_TEMPLATE,
            system=judge.system, api_key_env=judge.api_key_env, min_score=judge.min_score,
            max_score=judge.scale_max, normalize=judge.normalize, temperature=judge.temperature,
            max_tokens=judge.max_tokens, timeout_s=judge.timeout_s, max_retries=judge.max_retries,
            backoff_s=judge.backoff_s, concurrency=judge.concurrency, on_failure=judge.on_failure,
        )  # fmt: skip
    return LocalJudge(
        judge.local_model, method=judge.method, template=template, system=judge.system,
        min_score=int(judge.min_score), max_score=int(judge.scale_max), normalize=judge.normalize,
        chat=judge.chat, device=spec.device, dtype=judge.dtype, batch_size=spec.batch_size,
    )  # fmt: skip


def build_reward(spec: RewardSpec) -> RewardFunction:
    """The reward function a spec names, penalties applied (a reward model or local judge is
    loaded now and a judge's API key read now, so errors come early)."""
    from rlhf.rewards.composite import CompositeReward, LengthPenalty, MissingEOSPenalty

    reward = _build_source(spec)
    if spec.length_penalty > 0:
        penalty = LengthPenalty(spec.length_penalty, free=spec.length_free, unit=spec.length_unit)
        if isinstance(reward, CompositeReward):
            reward = CompositeReward({**reward.parts, "length_penalty": (1.0, penalty)})
        else:
            name = spec.rule or spec.source
            reward = CompositeReward({name: (1.0, reward), "length_penalty": (1.0, penalty)})
    if spec.missing_eos_penalty is not None or spec.missing_eos_reward is not None:
        reward = MissingEOSPenalty(
            reward, penalty=spec.missing_eos_penalty, value=spec.missing_eos_reward
        )
    return reward


def _read_spec_file(path: str) -> dict[str, Any]:
    from rlhf.config import ConfigError, read_yaml

    data = read_yaml(path)  # JSON is YAML too
    if set(data) == {"reward"}:  # a recipe-style file: {reward: {...}}
        data = data["reward"]
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: reward must be a mapping of keys")
    return data


def parse_reward_spec(text: str) -> RewardSpec:
    """The command line's form of a :class:`RewardSpec`: ``"rule=arithmetic"``,
    ``"model=PATH,batch_size=8"`` (comma-separated top-level ``key=value``), a YAML/JSON file
    holding a spec (``"reward.yaml"``), or ``"config=reward.yaml,key=value,..."``."""
    from rlhf.config import ConfigError, validate_config

    text = text.strip()
    if "=" not in text and text.lower().endswith(CONFIG_SUFFIXES):
        return validate_config(RewardSpec, _read_spec_file(text), text)
    values: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"reward {text!r}: expected rule=NAME, model=PATH or a reward config file "
                "(.yaml/.json)"
            )
        values[key.strip()] = value.strip()
    source = f"reward {text!r}"
    if "config" in values:
        path = values.pop("config")
        values = {**_read_spec_file(path), **values}
        source = f"{path} + {source}"
    return validate_config(RewardSpec, values, source)
