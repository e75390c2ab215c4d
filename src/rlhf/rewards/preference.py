"""Preferences behind one protocol: ``P(first ≻ second | prompt)`` for online recipes that
play responses against each other (SPPO, Nash-MD, ...) instead of scoring them one by one::

    preference(prompts: Sequence[Text], first: Sequence[str], second: Sequence[str],
               metadata=None) -> Tensor [N]  # float32 on the CPU, in [0, 1]

with ``P(first[i] ≻ second[i]) + P(second[i] ≻ first[i]) = 1`` exactly (a response against
itself: ½). Three kinds, one :class:`PreferenceSpec` naming one of them::

    preference: {model: runs/pm/model}                         # a pairwise preference model
    preference: {rule: world_gold, temperature: 0.1, nontransitive: 0.3}   # the world's gold
    preference: {reward: {model: runs/rm/model}, temperature: 1.0}         # Bradley–Terry

* ``model``: a pairwise preference model trained by ``rlhf pm`` (:mod:`rlhf.models.preference`):
  σ(g(x, a, b) − g(x, b, a)); it can be non-transitive.
* ``rule: world_gold``: the embedded world's gold preference (:mod:`rlhf.sim.preference`),
  σ((gold(a) − gold(b) + λ · C(a, b)) / τ), with the rock-paper-scissors term of strength
  ``nontransitive`` λ (0: pure Bradley–Terry on gold).
* ``reward``: Bradley–Terry from any scalar reward (:class:`~rlhf.rewards.spec.RewardSpec`: a
  reward model, a rule, a judge, a composite), σ((r(a) − r(b)) / τ); always transitive.

``metadata`` is None or one mapping per comparison. Its keys apply to both responses (e.g. the
ground-truth ``answer`` of the prompt), except :data:`FIRST` and :data:`SECOND`, whose mappings
apply to one response each (``finished``, ``response_tokens``, ...: :func:`pair_metadata`
builds such rows). Only the ``reward`` kind reads it (its reward may need it); the others
ignore it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from pydantic import Field, field_validator, model_validator

from rlhf.config import StrictModel
from rlhf.data.records import Text, text_to_json
from rlhf.losses.preference_model import antisymmetric_sigmoid
from rlhf.rewards.base import Metadata, RewardFunction, call_reward
from rlhf.rewards.spec import RewardSpec, build_reward

FIRST = "first"  # metadata key: a mapping of what applies to the first response only
SECOND = "second"  # metadata key: a mapping of what applies to the second response only
SOURCES = ("model", "rule", "reward")


@runtime_checkable
class PreferenceFunction(Protocol):
    """P(first[i] ≻ second[i] | prompts[i]): [N] prompts, [N] first and [N] second responses,
    optional [N] metadata mappings -> [N] float32 on the CPU in [0, 1], antisymmetric exactly
    (swapping ``first`` and ``second`` gives ``1 − P``)."""

    def __call__(
        self,
        prompts: Sequence[Text],
        first: Sequence[str],
        second: Sequence[str],
        metadata: Metadata | None = None,
    ) -> torch.Tensor: ...


def check_pair_lengths(
    prompts: Sequence[Text],
    first: Sequence[str],
    second: Sequence[str],
    metadata: Metadata | None = None,
) -> None:
    """A ValueError unless there is one prompt, one first and one second response (and one
    metadata row, when given) per comparison."""
    if not len(prompts) == len(first) == len(second):
        raise ValueError(
            f"{len(prompts)} prompts, {len(first)} first and {len(second)} second responses: "
            "give one of each per comparison"
        )
    if metadata is not None and len(metadata) != len(prompts):
        raise ValueError(f"{len(prompts)} comparisons but {len(metadata)} metadata rows")


def call_preference(
    preference: PreferenceFunction,
    prompts: Sequence[Text],
    first: Sequence[str],
    second: Sequence[str],
    metadata: Metadata | None = None,
) -> torch.Tensor:
    """Any preference function's [N] probabilities as float32 on the CPU, checked: one per
    comparison, each in [0, 1] (a ValueError naming the function otherwise)."""
    check_pair_lengths(prompts, first, second, metadata)
    probabilities = torch.as_tensor(preference(prompts, first, second, metadata))
    probabilities = probabilities.detach().float().cpu()
    if probabilities.shape != (len(prompts),):
        raise ValueError(
            f"{preference!r} returned probabilities of shape {tuple(probabilities.shape)} for "
            f"{len(prompts)} comparisons; expected one per comparison"
        )
    if probabilities.numel() and not bool(((probabilities >= 0) & (probabilities <= 1)).all()):
        raise ValueError(f"{preference!r} returned values outside [0, 1]")
    return probabilities


def pair_metadata(
    first: Metadata | None, second: Metadata | None, shared: Metadata | None = None
) -> list[dict[str, Any]]:
    """Metadata rows of comparisons from per-response rows: row i is ``shared[i]`` (what
    applies to both, e.g. ``{"answer": "72"}``) plus ``{FIRST: first[i], SECOND: second[i]}``
    (e.g. each response's :func:`~rlhf.rewards.base.rollout_metadata` row)."""
    sizes = {len(rows) for rows in (first, second, shared) if rows is not None}
    if len(sizes) > 1:
        raise ValueError(f"metadata of different lengths: {sorted(sizes)}")
    count = sizes.pop() if sizes else 0
    rows = []
    for i in range(count):
        row = dict(shared[i]) if shared is not None else {}
        if first is not None:
            row[FIRST] = dict(first[i])
        if second is not None:
            row[SECOND] = dict(second[i])
        rows.append(row)
    return rows


def response_metadata(row: Mapping[str, Any], side: str) -> dict[str, Any]:
    """The metadata of one response of a comparison: the row's shared keys plus its ``side``
    (:data:`FIRST` or :data:`SECOND`) mapping, which wins on a clash."""
    own = row.get(side) or {}
    if not isinstance(own, Mapping):
        raise ValueError(f"metadata[{side!r}] must be a mapping, got {type(own).__name__}")
    return {k: v for k, v in row.items() if k not in (FIRST, SECOND)} | dict(own)


class PreferenceSpec(StrictModel):
    """Which preference to use: exactly one of `model`, `rule` and `reward`."""

    # a section given in part names its own choice; it does not keep a default's source
    partial_keeps_default: ClassVar[bool] = False

    model: str | None = Field(
        None,
        description="A pairwise preference model folder (from `rlhf pm`): σ(g(x, a, b) − "
        "g(x, b, a)); may be non-transitive.",
    )
    rule: Literal["world_gold"] | None = Field(
        None,
        description="world_gold: the embedded world's gold preference σ((gold(a) − gold(b) + "
        "nontransitive·C(a, b)) / temperature) (docs/preference-model.md).",
    )
    reward: RewardSpec | None = Field(
        None,
        description="Bradley–Terry from a scalar reward (a RewardSpec: model, rule, judge, "
        "composite): σ((r(a) − r(b)) / temperature).",
    )
    temperature: float = Field(
        1.0,
        gt=0,
        allow_inf_nan=False,
        description="With rule or reward: divides the reward difference (in the reward's units; "
        "the world's annotators use 0.05 to 0.2 on gold).",
    )
    nontransitive: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="With rule: world_gold: strength λ (gold units) of the rock-paper-scissors "
        "taste scene ≻ portrait ≻ story ≻ scene; 0 is pure Bradley–Terry on gold.",
    )
    device: str = Field("auto", description="Where a preference model runs: auto, cpu, cuda:0, ...")
    batch_size: int = Field(
        16, ge=1, description="Sequences a preference model scores at once (two per comparison)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="A preference model's weights' dtype."
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, name: str) -> str:
        from rlhf.models.device import resolve_device

        resolve_device(name)  # a ValueError saying why the name is not a device here
        return name

    @model_validator(mode="after")
    def _one_source(self) -> PreferenceSpec:
        chosen = [name for name in SOURCES if getattr(self, name) is not None]
        if len(chosen) != 1:
            got = f" (got {', '.join(chosen)})" if chosen else ""
            raise ValueError(
                f"set exactly one of preference.model, preference.rule and preference.reward{got}"
            )
        if self.nontransitive and self.rule is None:
            raise ValueError(
                "preference.nontransitive is the world's cyclic taste: it goes with "
                "preference.rule: world_gold only"
            )
        if self.model is not None and self.temperature != 1.0:
            raise ValueError(
                "preference.temperature divides a reward difference (preference.rule or "
                "preference.reward); a preference model's probability has none"
            )
        return self

    @property
    def source(self) -> str:
        return next(name for name in SOURCES if getattr(self, name) is not None)

    def describe(self) -> str:
        """A short label for logs: ``model:PATH``, ``rule:world_gold(τ=0.1,λ=0.3)``,
        ``bradley_terry(model:PATH,τ=1)``."""
        if self.model is not None:
            return f"model:{self.model}"
        if self.reward is not None:
            return f"bradley_terry({self.reward.describe()},τ={self.temperature:g})"
        return f"rule:{self.rule}(τ={self.temperature:g},λ={self.nontransitive:g})"


class ModelPreference:
    """A pairwise preference model's P(a ≻ b | x) (:mod:`rlhf.models.preference`); loaded now,
    so a bad folder fails early. Metadata is not used."""

    def __init__(
        self,
        path: str,
        *,
        device: str = "auto",
        batch_size: int = 16,
        dtype: str = "float32",
    ) -> None:
        from rlhf.models.device import resolve_device
        from rlhf.models.preference import load_preference_model

        self.path, self.batch_size = str(path), batch_size
        self.model = load_preference_model(path, dtype=dtype, device=str(resolve_device(device)))

    def __call__(
        self,
        prompts: Sequence[Text],
        first: Sequence[str],
        second: Sequence[str],
        metadata: Metadata | None = None,
    ) -> torch.Tensor:
        check_pair_lengths(prompts, first, second, metadata)
        return self.model.preference_probability(prompts, first, second, batch_size=self.batch_size)

    def __repr__(self) -> str:
        return f"ModelPreference({self.path!r})"


class WorldGoldPreference:
    """The embedded world's gold preference (:func:`rlhf.sim.preference.preference_logit`):
    σ((gold(a) − gold(b) + λ · C(a, b)) / τ). Metadata is not used."""

    def __init__(self, temperature: float = 1.0, nontransitive: float = 0.0) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not nontransitive >= 0:
            raise ValueError(f"nontransitive must be ≥ 0, got {nontransitive}")
        self.temperature, self.nontransitive = temperature, nontransitive

    def __call__(
        self,
        prompts: Sequence[Text],
        first: Sequence[str],
        second: Sequence[str],
        metadata: Metadata | None = None,
    ) -> torch.Tensor:
        from rlhf.sim.preference import preference_logit

        check_pair_lengths(prompts, first, second, metadata)
        logits = [
            preference_logit(
                prompt, a, b, temperature=self.temperature, nontransitive=self.nontransitive
            )
            for prompt, a, b in zip(prompts, first, second, strict=True)
        ]  # float64, antisymmetric exactly; rounding to float32 keeps it so (fl(−x) = −fl(x))
        return antisymmetric_sigmoid(torch.tensor(logits, dtype=torch.float32))  # [N]

    def __repr__(self) -> str:
        return (
            f"WorldGoldPreference(temperature={self.temperature:g}, "
            f"nontransitive={self.nontransitive:g})"
        )


class BradleyTerryPreference:
    """Bradley–Terry from a scalar reward (Bradley & Terry, 1952): σ((r(a) − r(b)) / τ).

    Both responses of every comparison are scored in one call of the reward, each with its own
    metadata (:func:`response_metadata`). The distinct (prompt, response, metadata) rows are
    scored in one canonical order (sorted; rows of one prompt stay together, which a reward
    model packs), so swapping ``first`` and ``second`` scores the same rows in the same order
    and gives exactly ``1 − P``.
    """

    def __init__(self, reward: RewardFunction, temperature: float = 1.0) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.reward, self.temperature = reward, temperature

    def __call__(
        self,
        prompts: Sequence[Text],
        first: Sequence[str],
        second: Sequence[str],
        metadata: Metadata | None = None,
    ) -> torch.Tensor:
        check_pair_lengths(prompts, first, second, metadata)
        count = len(prompts)
        rows: list[tuple[Text, str, dict[str, Any] | None]] = []
        for side, responses in ((FIRST, first), (SECOND, second)):
            for i in range(count):
                meta = None if metadata is None else response_metadata(metadata[i], side)
                rows.append((prompts[i], responses[i], meta))
        keys = [_row_key(row) for row in rows]
        distinct = sorted(set(keys))
        where = {key: index for index, key in enumerate(distinct)}
        source = {key: row for key, row in zip(keys, rows, strict=True)}
        ordered = [source[key] for key in distinct]
        scores = call_reward(
            self.reward,
            [row[0] for row in ordered],
            [row[1] for row in ordered],
            None if metadata is None else [row[2] or {} for row in ordered],
        )  # [D]
        rewards = scores[torch.tensor([where[key] for key in keys], dtype=torch.long)]  # [2N]
        logits = (rewards[:count] - rewards[count:]) / self.temperature  # [N], exactly −swap
        return antisymmetric_sigmoid(logits)

    def __repr__(self) -> str:
        return f"BradleyTerryPreference({self.reward!r}, temperature={self.temperature:g})"


def _row_key(row: tuple[Text, str, dict[str, Any] | None]) -> tuple[str, str, str]:
    """A sortable key of one (prompt, response, metadata) row, equal for equal rows."""
    prompt, response, meta = row
    return (
        json.dumps(text_to_json(prompt), ensure_ascii=False),
        response,
        "" if meta is None else json.dumps(meta, sort_keys=True, default=repr),
    )


def build_preference(spec: PreferenceSpec) -> PreferenceFunction:
    """The preference function a spec names (a preference or reward model is loaded now, so
    errors come early)."""
    if spec.model is not None:
        return ModelPreference(
            spec.model, device=spec.device, batch_size=spec.batch_size, dtype=spec.dtype
        )
    if spec.reward is not None:
        return BradleyTerryPreference(build_reward(spec.reward), spec.temperature)
    return WorldGoldPreference(spec.temperature, spec.nontransitive)


__all__ = [
    "FIRST",
    "SECOND",
    "BradleyTerryPreference",
    "ModelPreference",
    "PreferenceFunction",
    "PreferenceSpec",
    "WorldGoldPreference",
    "build_preference",
    "call_preference",
    "check_pair_lengths",
    "pair_metadata",
    "response_metadata",
]
