"""Simulated annotators: noisy people whose labels follow the gold reward.

An annotator values a response by its *utility*, the gold reward plus an optional bias for
length::

    u(y) = gold(x, y) + length_bias × (content sentences of y)

and labels through the Bradley-Terry / Plackett-Luce model (Bradley & Terry 1952; Luce 1959;
Plackett 1975) with a temperature τ: every response's utility gets independent Gumbel noise of
scale τ and the noisy utilities are sorted, so

    P(a ≻ b) = σ((u(a) − u(b)) / τ)

and a ranking of K is a Plackett-Luce draw with weights exp(u / τ). τ = 0 labels by utility
exactly (ties by a coin flip). A ``careless`` share of labels ignores the responses: a coin
flip, a random order, a random rating, a random thumb. Ratings and thumbs put logistic noise of
scale τ (the difference of two Gumbels) on the utility, then quantise it.

``nontransitive`` λ ≥ 0 gives an annotator's *pairwise* comparisons the world's cyclic taste
(:mod:`rlhf.sim.preference`: scene beats portrait beats story beats scene)::

    P(a ≻ b) = σ((u(a) − u(b) + λ · C(a, b)) / τ)

so a careful annotator (no length bias, never careless) labels pairs by the gold preference
:func:`rlhf.sim.preference.gold_preference`. A ranking, a rating or a thumb is a function of
one utility per response and cannot carry a cycle: λ leaves them as they are.

``position_bias`` β leans a pairwise comparison towards the response shown first, ``a``
(people, and LLM judges, favour one side of a pair whatever it holds: Zheng et al. 2023,
"Judging LLM-as-a-Judge", §3.3)::

    P(a ≻ b) = σ((u(a) − u(b) + λ · C(a, b) + β) / τ)

β = 0 (the default) is no lean; the feedback app shows each annotator the two responses in a
random order, which turns the lean into noise that averages out over annotators.

:class:`AnnotatorPool` labels each item by one of several annotators drawn at random, and
:func:`label_groups` labels K responses per prompt as pairs, rankings, ratings or thumbs.
How often labelled pairs agree with gold (what a reward model that had learnt gold exactly
would score on them, the noise ceiling of reward-model accuracy on such labels) is
:func:`rlhf.eval.policies.gold_ceiling` with :class:`rlhf.rewards.world_gold.WorldGold`.

Everything is deterministic given the seeds (and the order of the calls).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from itertools import combinations
from typing import Literal

from rlhf.data.records import (
    BinaryRecord,
    PreferenceRecord,
    RankingRecord,
    RatingRecord,
    Record,
    Text,
)
from rlhf.sim.gold import gold_score
from rlhf.sim.preference import cyclic_term
from rlhf.sim.world import content_sentences

RATING_SCALE = (1.0, 5.0)
# gold → rating: utility RATING_RANGE[0] or less is a 1, RATING_RANGE[1] or more a 5, linear
# in between (the behaviour distribution's gold lies mostly in this range)
RATING_RANGE = (0.3, 1.0)
THUMBS_THRESHOLD = 0.68  # thumbs up above this noisy utility: about the behaviour median

LabelKind = Literal["pairs", "rankings", "ratings", "binary"]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class SimulatedAnnotator:
    """One simulated person (see the module docstring).

    ``temperature`` τ ≥ 0 is the label noise in gold units (0: always by utility);
    ``length_bias`` is added to the utility per content sentence (people who like long
    answers: > 0); ``careless`` is the share of labels given at random. ``seed`` fixes the
    annotator's own random stream. ``reward(prompt, response)`` replaces the world's gold as
    what the annotator values (a judge's or a reward model's scores, for data outside the
    world; τ is then in its units, and ratings and thumbs keep gold's calibration).
    ``nontransitive`` λ ≥ 0 adds the world's cyclic taste to pairwise comparisons (see the
    module docstring; 0: none). ``position_bias`` β leans pairwise comparisons towards the
    response shown first (see the module docstring; 0: none).
    """

    def __init__(
        self,
        temperature: float = 0.1,
        length_bias: float = 0.0,
        careless: float = 0.0,
        seed: int | str = 0,
        *,
        thumbs_threshold: float = THUMBS_THRESHOLD,
        reward: Callable[[Text, str], float] = gold_score,
        nontransitive: float = 0.0,
        position_bias: float = 0.0,
    ) -> None:
        if temperature < 0:
            raise ValueError(f"temperature must be ≥ 0, got {temperature}")
        if not 0 <= careless <= 1:
            raise ValueError(f"careless is a share, from 0 to 1; got {careless}")
        if not (nontransitive >= 0 and math.isfinite(nontransitive)):
            raise ValueError(f"nontransitive must be a finite number ≥ 0, got {nontransitive}")
        if not math.isfinite(position_bias):
            raise ValueError(f"position_bias must be a finite number, got {position_bias}")
        self.temperature, self.length_bias, self.careless = temperature, length_bias, careless
        self.nontransitive, self.position_bias = nontransitive, position_bias
        self.thumbs_threshold, self.reward = thumbs_threshold, reward
        self.seed = seed
        self.rng = random.Random(f"annotator-{seed}")

    def __repr__(self) -> str:
        cyclic = f", nontransitive={self.nontransitive:g}" if self.nontransitive else ""
        if self.position_bias:
            cyclic += f", position_bias={self.position_bias:g}"
        return (
            f"SimulatedAnnotator(temperature={self.temperature:g}, "
            f"length_bias={self.length_bias:g}, careless={self.careless:g}{cyclic}, "
            f"seed={self.seed!r})"
        )

    def utility(self, prompt: Text, response: str) -> float:
        """Gold (or ``reward``) plus the length bias: what this annotator's labels follow."""
        bias = self.length_bias * len(content_sentences(response)) if self.length_bias else 0.0
        return self.reward(prompt, response) + bias

    def utility_difference(self, prompt: Text, a: str, b: str) -> float:
        """u(a) − u(b) + λ · C(a, b) + β: what this annotator's comparison of a (shown first)
        and b follows."""
        delta = self.utility(prompt, a) - self.utility(prompt, b)
        if self.nontransitive:
            delta += self.nontransitive * cyclic_term(a, b)
        return delta + self.position_bias

    def preference_probability(self, prompt: Text, a: str, b: str) -> float:
        """P(a ≻ b) for this annotator, carelessness included."""
        delta = self.utility_difference(prompt, a, b)
        if self.temperature == 0:
            p = 0.5 if delta == 0 else float(delta > 0)
        else:
            p = _sigmoid(delta / self.temperature)
        return self.careless * 0.5 + (1 - self.careless) * p

    def _is_careless(self) -> bool:
        return self.careless > 0 and self.rng.random() < self.careless

    def _logistic(self) -> float:
        """Logistic noise of scale τ (0 when τ = 0)."""
        if self.temperature == 0:
            return 0.0
        u = min(max(self.rng.random(), 1e-12), 1 - 1e-12)
        return self.temperature * math.log(u / (1 - u))

    def compare(self, prompt: Text, a: str, b: str) -> PreferenceRecord:
        """Which of two different responses is better, as chosen / rejected."""
        if a == b:
            raise ValueError("compare needs two different responses")
        careless = self._is_careless()
        if careless:
            a_wins = self.rng.random() < 0.5
        else:
            delta = self.utility_difference(prompt, a, b)
            if self.temperature == 0 and delta != 0:
                a_wins = delta > 0
            else:
                p = 0.5 if self.temperature == 0 else _sigmoid(delta / self.temperature)
                a_wins = self.rng.random() < p
        return PreferenceRecord(prompt, a, b) if a_wins else PreferenceRecord(prompt, b, a)

    def rank(self, prompt: Text, responses: Sequence[str]) -> RankingRecord:
        """A Plackett-Luce ranking of K ≥ 2 responses (``ranks[i]`` of ``responses[i]``, 0 =
        best, no ties): utilities plus Gumbel noise of scale τ, sorted."""
        if len(responses) < 2:
            raise ValueError(f"a ranking needs two responses or more, got {len(responses)}")
        if self._is_careless():
            keys = [self.rng.random() for _ in responses]
        else:
            keys = []
            for response in responses:
                # Gumbel(0, τ) noise; at τ = 0 a uniform draw only breaks exact ties
                u = min(max(self.rng.random(), 1e-12), 1 - 1e-12)
                noise = -self.temperature * math.log(-math.log(u)) if self.temperature else 0.0
                keys.append((self.utility(prompt, response) + noise, u))
        order = sorted(range(len(responses)), key=lambda i: keys[i], reverse=True)
        ranks = [0] * len(responses)
        for rank, index in enumerate(order):
            ranks[index] = rank
        return RankingRecord(prompt, tuple(responses), tuple(ranks))

    def rate(self, prompt: Text, response: str) -> RatingRecord:
        """A 1–5 rating: the noisy utility mapped linearly from :data:`RATING_RANGE` onto
        1–5, rounded and clipped."""
        low, high = RATING_SCALE
        if self._is_careless():
            score = float(self.rng.randint(int(low), int(high)))
        else:
            latent = self.utility(prompt, response) + self._logistic()
            x = (latent - RATING_RANGE[0]) / (RATING_RANGE[1] - RATING_RANGE[0])
            score = float(min(max(round(low + (high - low) * x), low), high))
        return RatingRecord(prompt, response, score, RATING_SCALE)

    def thumbs(self, prompt: Text, response: str) -> BinaryRecord:
        """Thumbs up when the noisy utility exceeds ``thumbs_threshold``."""
        if self._is_careless():
            label = self.rng.random() < 0.5
        else:
            label = self.utility(prompt, response) + self._logistic() > self.thumbs_threshold
        return BinaryRecord(prompt, response, label)


class AnnotatorPool:
    """Several annotators; each item is labelled by one of them drawn at random (seeded).
    Same methods as :class:`SimulatedAnnotator`."""

    def __init__(self, annotators: Sequence[SimulatedAnnotator], seed: int = 0) -> None:
        if not annotators:
            raise ValueError("an annotator pool needs at least one annotator")
        self.annotators = list(annotators)
        self.seed = seed
        self.rng = random.Random(f"pool-{seed}")

    @classmethod
    def build(
        cls,
        count: int = 5,
        temperature: float = 0.1,
        careless: float = 0.0,
        bias: float = 0.0,
        seed: int = 0,
        nontransitive: float = 0.0,
    ) -> AnnotatorPool:
        """``count`` annotators sharing ``temperature``, ``careless`` and ``nontransitive``,
        each with a personal length bias drawn from N(0, ``bias``²) (seeded; ``bias`` = 0:
        none)."""
        if count < 1:
            raise ValueError(f"an annotator pool needs at least one annotator, got {count}")
        draw = random.Random(f"pool-biases-{seed}")
        return cls(
            [
                SimulatedAnnotator(
                    temperature,
                    length_bias=draw.gauss(0.0, bias) if bias else 0.0,
                    careless=careless,
                    seed=f"{seed}-{index}",
                    nontransitive=nontransitive,
                )
                for index in range(count)
            ],
            seed=seed,
        )

    def __repr__(self) -> str:
        return f"AnnotatorPool({self.annotators!r})"

    def pick(self) -> SimulatedAnnotator:
        return self.rng.choice(self.annotators)

    def compare(self, prompt: Text, a: str, b: str) -> PreferenceRecord:
        return self.pick().compare(prompt, a, b)

    def rank(self, prompt: Text, responses: Sequence[str]) -> RankingRecord:
        return self.pick().rank(prompt, responses)

    def rate(self, prompt: Text, response: str) -> RatingRecord:
        return self.pick().rate(prompt, response)

    def thumbs(self, prompt: Text, response: str) -> BinaryRecord:
        return self.pick().thumbs(prompt, response)

    def label_groups(
        self,
        prompts: Sequence[Text],
        groups: Sequence[Sequence[str]],
        kind: LabelKind = "pairs",
        *,
        pairs_per_group: int | None = None,
    ) -> list[Record]:
        """:func:`label_groups` by this pool (its seed also draws the pairs)."""
        return label_groups(
            prompts, groups, kind, annotators=self, pairs_per_group=pairs_per_group, seed=self.seed
        )


Labeller = SimulatedAnnotator | AnnotatorPool


def default_pool(seed: int = 0, nontransitive: float = 0.0) -> AnnotatorPool:
    """The world's default annotators, one drawn per item: a careful one (τ = 0.05), a typical
    one who likes length a little (τ = 0.1, +0.03 per sentence) and a hurried one
    (τ = 0.2, +0.05 per sentence, 15 % careless); all with the cyclic taste of strength
    ``nontransitive`` in their pairwise comparisons (0: none)."""
    cyclic = {"nontransitive": nontransitive}
    return AnnotatorPool(
        [
            SimulatedAnnotator(temperature=0.05, seed=f"{seed}-careful", **cyclic),
            SimulatedAnnotator(temperature=0.1, length_bias=0.03, seed=f"{seed}-typical", **cyclic),
            SimulatedAnnotator(
                temperature=0.2, length_bias=0.05, careless=0.15, seed=f"{seed}-hurried", **cyclic
            ),
        ],
        seed=seed,
    )


def label_groups(
    prompts: Sequence[Text],
    groups: Sequence[Sequence[str]],
    kind: LabelKind = "pairs",
    *,
    annotators: Labeller | None = None,
    pairs_per_group: int | None = None,
    seed: int = 0,
) -> list[Record]:
    """Label ``groups[i]``, the K responses sampled for ``prompts[i]``.

    * ``pairs``: :class:`PreferenceRecord` s of the group's distinct responses (duplicates
      dropped): all K(K−1)/2 pairs, in order (0, 1), (0, 2), ..., or with
      ``pairs_per_group`` that many drawn at random without replacement (all, when fewer).
    * ``rankings``: one :class:`RankingRecord` of the group's distinct responses per group
      (groups with fewer than two are skipped).
    * ``ratings`` / ``binary``: one :class:`RatingRecord` / :class:`BinaryRecord` per
      response, duplicates included.

    ``annotators`` default to :func:`default_pool` (``seed``); ``seed`` also draws the pairs.
    """
    if len(prompts) != len(groups):
        raise ValueError(f"{len(prompts)} prompts but {len(groups)} groups of responses")
    if kind not in ("pairs", "rankings", "ratings", "binary"):
        raise ValueError(f"kind must be pairs, rankings, ratings or binary; got {kind!r}")
    labeller = annotators if annotators is not None else default_pool(seed)
    rng = random.Random(f"label-groups-{seed}")
    records: list[Record] = []
    for prompt, group in zip(prompts, groups, strict=True):
        if kind == "ratings":
            records += [labeller.rate(prompt, response) for response in group]
            continue
        if kind == "binary":
            records += [labeller.thumbs(prompt, response) for response in group]
            continue
        distinct = list(dict.fromkeys(group))
        if len(distinct) < 2:
            continue
        if kind == "rankings":
            records.append(labeller.rank(prompt, distinct))
            continue
        pairs = list(combinations(distinct, 2))
        if pairs_per_group is not None and pairs_per_group < len(pairs):
            pairs = [pairs[i] for i in sorted(rng.sample(range(len(pairs)), pairs_per_group))]
        records += [labeller.compare(prompt, a, b) for a, b in pairs]
    return records
