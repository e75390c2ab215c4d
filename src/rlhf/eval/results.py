"""The measured numbers of a run, as plain dataclasses that a report is rendered from.

The pipeline fills these from its evaluations; :mod:`rlhf.eval.report` turns them into plots,
``report.md``, ``report.html`` and ``report.json``, and :func:`Report.from_dict` reads the
JSON back so a report can be re-rendered without rerunning anything.

Units: rewards are in their own scale (``gold`` is the simulated world's true reward,
``proxy`` the reward model's score); KL is in nats, summed over the response tokens and
averaged over prompts. Non-finite numbers are allowed (a diverged run still gets a report)
and are written to JSON as the strings ``"nan"``, ``"inf"``, ``"-inf"``, like the metrics
JSONL (:mod:`rlhf.engine.metrics`), so the file stays standard JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


def _dump_number(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return str(float(value))  # "nan", "inf", "-inf"


def _load_number(value: float | str | None) -> float | None:
    return None if value is None else float(value)


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (at any depth) replaced by its string."""
    if isinstance(value, float):
        return _dump_number(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


_LOADERS: dict[str, Any] = {
    "int": int,
    "float": float,
    "str": str,
    "float | None": _load_number,
}


class _Flat:
    """``to_dict`` / ``from_dict`` for a dataclass of plain fields (str, int, float, float |
    None): floats written with :func:`_dump_number`, read back by their annotation; a missing
    key takes the field's default."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: json_safe(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        values = {}
        for item in fields(cls):  # type: ignore[arg-type]
            if item.name in data:
                values[item.name] = _LOADERS[str(item.type)](data[item.name])
        return cls(**values)


@dataclass
class Sample(_Flat):
    """One evaluated response, shown in the report as an example."""

    prompt: str
    response: str  # model text: untrusted, escaped wherever it is rendered
    gold: float  # gold reward of this response
    proxy: float | None = None  # reward-model score, if a reward model was used


@dataclass
class PolicyEval:
    """One policy's evaluation on the held-out prompts (one response per prompt)."""

    name: str  # "SFT", "PPO β=0.05", "DPO", ...
    gold_mean: float  # mean gold reward over prompts
    gold_std: float  # standard deviation of the gold reward over prompts
    proxy_mean: float | None  # mean reward-model score; None where no RM scored it
    kl_to_sft: (
        float  # nats: per-response summed KL(π ‖ π_SFT) estimate, mean over prompts; 0 for SFT
    )
    win_rate_vs_sft: float | None  # share of prompts where gold beats SFT's (ties ½); None for SFT
    n_prompts: int  # prompts evaluated
    samples: list[Sample] = field(default_factory=list)  # a few examples
    win_rate_se: float | None = None  # standard error of win_rate_vs_sft
    proxy_std: float | None = None  # standard deviation of the proxy over prompts

    def __post_init__(self) -> None:
        # (prompt, response, gold, proxy) tuples are accepted for convenience.
        self.samples = [s if isinstance(s, Sample) else Sample(*s) for s in self.samples]

    @property
    def gold_se(self) -> float:
        """Standard error of ``gold_mean``: std / sqrt(n_prompts)."""
        return self.gold_std / math.sqrt(self.n_prompts) if self.n_prompts > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "gold_mean": _dump_number(self.gold_mean),
            "gold_std": _dump_number(self.gold_std),
            "proxy_mean": _dump_number(self.proxy_mean),
            "proxy_std": _dump_number(self.proxy_std),
            "kl_to_sft": _dump_number(self.kl_to_sft),
            "win_rate_vs_sft": _dump_number(self.win_rate_vs_sft),
            "win_rate_se": _dump_number(self.win_rate_se),
            "n_prompts": self.n_prompts,
            "samples": [s.to_dict() for s in self.samples],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicyEval:
        return cls(
            name=data["name"],
            gold_mean=float(data["gold_mean"]),
            gold_std=float(data["gold_std"]),
            proxy_mean=_load_number(data.get("proxy_mean")),
            proxy_std=_load_number(data.get("proxy_std")),
            kl_to_sft=float(data["kl_to_sft"]),
            win_rate_vs_sft=_load_number(data.get("win_rate_vs_sft")),
            win_rate_se=_load_number(data.get("win_rate_se")),
            n_prompts=int(data["n_prompts"]),
            samples=[Sample.from_dict(s) for s in data.get("samples", [])],
        )


@dataclass
class CurvePoint(_Flat):
    """One evaluation along a training run (or one N of best-of-N)."""

    step: int  # optimiser step (for best-of-N: N)
    kl: float  # nats, KL(π_step ‖ π_SFT) summed over response tokens, mean over prompts
    proxy: float  # mean reward-model score
    gold: float  # mean gold reward
    proxy_se: float | None = None  # standard error of ``proxy``, if measured
    gold_se: float | None = None  # standard error of ``gold``, if measured

    @property
    def sqrt_kl(self) -> float:
        """sqrt(KL), the x-axis of Gao et al. (2022); a slightly negative KL estimate (k1 is
        unbiased, not non-negative) counts as 0."""
        return math.sqrt(max(self.kl, 0.0)) if not math.isnan(self.kl) else math.nan


@dataclass
class OptimisationCurve:
    """Proxy and gold reward against KL over one policy-optimisation run."""

    label: str  # "PPO β=0.0"
    kl_coef: float  # the run's KL coefficient β (the DPO family: the loss's β)
    points: list[CurvePoint]  # in step order
    # what ``proxy`` is: the reward model's score (PPO, online DPO) or, for an offline
    # DPO-family run, its implicit reward margin β·(log-ratio chosen − rejected) on held-out labels
    proxy_name: str = "reward model"
    online: bool = True  # sampled from the policy as it trained (False: offline, fixed data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "kl_coef": _dump_number(self.kl_coef),
            "points": [p.to_dict() for p in self.points],
            "proxy_name": self.proxy_name,
            "online": self.online,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OptimisationCurve:
        return cls(
            label=data["label"],
            kl_coef=float(data["kl_coef"]),
            points=[CurvePoint.from_dict(p) for p in data["points"]],
            proxy_name=data.get("proxy_name", "reward model"),
            online=bool(data.get("online", True)),
        )


@dataclass
class BestOfNPoint(_Flat):
    """Best-of-N at one N: the expected proxy and gold reward of the proxy's favourite."""

    n: int
    kl: float  # nats, analytic: log n − (n − 1)/n (see stats.best_of_n_kl)
    proxy: float
    gold: float
    proxy_se: float | None = None
    gold_se: float | None = None


@dataclass
class HeadToHead(_Flat):
    """One policy against another under a preference (the world's gold preference): sample j
    of each held-out prompt against the opponent's sample j of the same prompt."""

    policy: str
    opponent: str
    rate: float  # mean P(policy's response ≻ opponent's): > ½ means the policy is preferred
    se: float  # its standard error over the comparisons
    n: int  # comparisons


@dataclass
class SelectionPoint(_Flat):
    """Choosing one of N solutions: the accuracy of one selector (a PRM aggregation, the ORM,
    majority voting, ...) at one N, the mean over problems and its standard error
    (:mod:`rlhf.eval.step_selection`)."""

    n: int
    selector: str
    accuracy: float
    se: float


@dataclass
class RewardModelEval(_Flat):
    """Reward-model accuracy on held-out simulated preference labels."""

    accuracy: float  # share of pairs in [0, 1] where the RM prefers the labelled-chosen response
    ceiling: float  # the same share for the gold reward: the labels are noisy, so < 1
    n_pairs: int


@dataclass
class StageTiming(_Flat):
    stage: str  # "sft", "reward model", "ppo β=0.05", ...
    seconds: float  # wall-clock


@dataclass
class Criteria(_Flat):
    """How strict the report's verdicts are. Kept in the report, so a re-render agrees.

    Along a curve, a difference in gold (or proxy) reward counts only when it is larger than
    the tolerance. Left as None, a tolerance is ``z`` standard errors of the difference, from
    the points' ``gold_se`` / ``proxy_se``; where those are missing too, any difference counts
    and the report says that no noise estimate was available. Policies are always compared
    with ``z`` standard errors of the difference of their gold means (each carries its std
    and prompt count).
    """

    gold_tolerance: float | None = None  # in gold-reward units
    proxy_tolerance: float | None = None  # in reward-model units
    z: float = 2.0  # standard errors a difference must exceed
    rm_within_points: float = 5.0  # RM accuracy is "near the ceiling" within this many points


@dataclass
class Report:
    """Everything a run's report shows.

    ``baseline`` names the policy the others are compared with (SFT). The curve with the
    smallest ``kl_coef`` is expected to over-optimise, the others to keep their gold reward.
    A policy named exactly like a curve's label is that run's final policy: if the curve
    over-optimised, the policy is not expected to beat the baseline.
    """

    title: str
    seed: int
    policies: list[PolicyEval] = field(default_factory=list)
    curves: list[OptimisationCurve] = field(default_factory=list)
    best_of_n: list[BestOfNPoint] = field(default_factory=list)  # in increasing n
    reward_model: RewardModelEval | None = None
    timings: list[StageTiming] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # free text, one line each
    config: dict[str, Any] = field(default_factory=dict)  # the run's configuration
    criteria: Criteria = field(default_factory=Criteria)
    baseline: str = "SFT"
    # the DPO family's and online DPO's gold against KL along training (offline vs online)
    preference_curves: list[OptimisationCurve] = field(default_factory=list)
    head_to_head: list[HeadToHead] = field(default_factory=list)
    # choosing one of the SFT policy's N samples by a PRM, the reward model, voting (PRM stage)
    selection: list[SelectionPoint] = field(default_factory=list)

    def policy(self, name: str) -> PolicyEval | None:
        return next((p for p in self.policies if p.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "seed": self.seed,
            "baseline": self.baseline,
            "policies": [p.to_dict() for p in self.policies],
            "curves": [c.to_dict() for c in self.curves],
            "best_of_n": [p.to_dict() for p in self.best_of_n],
            "reward_model": self.reward_model.to_dict() if self.reward_model else None,
            "timings": [t.to_dict() for t in self.timings],
            "notes": list(self.notes),
            "config": json_safe(self.config),
            "criteria": self.criteria.to_dict(),
            "preference_curves": [c.to_dict() for c in self.preference_curves],
            "head_to_head": [h.to_dict() for h in self.head_to_head],
            "selection": [p.to_dict() for p in self.selection],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        reward_model = data.get("reward_model")
        return cls(
            title=data["title"],
            seed=int(data["seed"]),
            baseline=data.get("baseline", "SFT"),
            policies=[PolicyEval.from_dict(p) for p in data.get("policies", [])],
            curves=[OptimisationCurve.from_dict(c) for c in data.get("curves", [])],
            best_of_n=[BestOfNPoint.from_dict(p) for p in data.get("best_of_n", [])],
            reward_model=RewardModelEval.from_dict(reward_model) if reward_model else None,
            timings=[StageTiming.from_dict(t) for t in data.get("timings", [])],
            notes=list(data.get("notes", [])),
            config=dict(data.get("config", {})),
            criteria=Criteria.from_dict(data.get("criteria", {})),
            preference_curves=[
                OptimisationCurve.from_dict(c) for c in data.get("preference_curves", [])
            ],
            head_to_head=[HeadToHead.from_dict(h) for h in data.get("head_to_head", [])],
            selection=[SelectionPoint.from_dict(p) for p in data.get("selection", [])],
        )
