"""The embedded world's gold *preference* P_gold(y ≻ y′ | x): Bradley–Terry on the gold reward,
plus an optional taste that no reward can express.

**Bradley–Terry part.** The world's people prefer the response with the higher gold reward
(:mod:`rlhf.sim.gold`), noisily, as the Bradley–Terry model says (Bradley & Terry, 1952)::

    P_BT(y ≻ y′ | x) = σ((gold(x, y) − gold(x, y′)) / τ)

with a temperature τ in gold units (the simulated annotators of :mod:`rlhf.sim.annotators`
label with τ from 0.05 to 0.2). Any such preference is *transitive*: it is a function of one
scalar per response, so P(a ≻ b) > ½ and P(b ≻ c) > ½ imply gold(a) > gold(c) and P(a ≻ c) > ½.

**The non-transitive part (strength λ, default 0).** Each response has a *style*, read off its
first content sentence (the first sentence that is not a polite closing) by the template of the
world's language it follows (:func:`rlhf.sim.world.template_index`):

=========  =====================================================  ====================
style      templates                                              e.g.
=========  =====================================================  ====================
scene      ``The {adj} {noun} {verb} {prep} the {place}.``,       The lazy cat sleeps
           ``There is a {adj} {noun} {prep} the {place}.``        under the sofa.
portrait   ``The {noun} is very {adj}.``,                         The cat is very soft.
           ``I like the {adj} {noun}.``
story      ``Every day the {noun} {verb}.``,                      Every day the cat
           ``The {noun} {verb} with the {noun2}.``                purrs.
=========  =====================================================  ====================

A response that opens with a filler phrase ("Let me think."), a sentence cut off or foreign
words, or that has no content sentence, has no style. Between two styled responses the world's
people have a rock-paper-scissors taste: **scene beats portrait, portrait beats story, story
beats scene** (:data:`BEATS`). As a term of the log-odds::

    C(y, y′) = +1 if style(y) beats style(y′), −1 if style(y′) beats style(y), else 0
    ℓ(x, y, y′) = (gold(x, y) − gold(x, y′) + λ · C(y, y′)) / τ
    P_gold(y ≻ y′ | x) = σ(ℓ(x, y, y′))

λ is in gold units: a cyclic win is worth λ of gold. C is antisymmetric, so ℓ(x, y′, y) =
−ℓ(x, y, y′) and P_gold(y ≻ y′) + P_gold(y′ ≻ y) = 1, exactly in floating point too
(:func:`antisymmetric_sigmoid`). This is the general preference that Nash learning from human
feedback (Munos et al., 2023), self-play preference optimisation (Swamy et al., 2024; Wu et
al., 2024, SPPO) and general preference models (Jiang et al., 2023, PairRM; Ye et al., 2024;
Zhang et al., 2024) are built for, and that people show (Tversky, 1969).

**Why no scalar reward explains it.** Take three responses of equal gold whose styles are
scene, portrait and story, e.g. "The lazy cat sleeps under the sofa." (a), "The cat is very soft."
(b), "Every day the cat purrs." (c): then P(a ≻ b) = P(b ≻ c) = P(c ≻ a) = σ(λ / τ) > ½ for
every λ > 0. Under any Bradley–Terry model P(y ≻ y′) = σ(r(y) − r(y′)) the log-odds are
differences of one scalar, so around any cycle they sum to zero:
ℓ(a, b) + ℓ(b, c) + ℓ(c, a) = 0, and no three can each beat the next. Here that sum is 3λ / τ.
A reward model fitted to such labels can at best give a, b, c equal rewards (P = ½ each,
where the truth is σ(λ / τ)); a pairwise preference model, which reads both responses
(:mod:`rlhf.models.preference`), can learn the cycle.

Plain functions of text, like the rest of :mod:`rlhf.sim` (which imports only :mod:`rlhf.data`);
the preference configs name (``preference: {rule: world_gold, nontransitive: 0.3}``) is
:func:`rlhf.rewards.preference.build_preference`'s wrapper of :func:`gold_preference`, and the
simulated annotators take the same cyclic term (``builtin:world-preferences?nontransitive=λ``).
"""

from __future__ import annotations

import math

from rlhf.data.records import Text
from rlhf.sim.gold import gold_score
from rlhf.sim.world import SENTENCE_TEMPLATES, content_sentences, template_index

STYLES: tuple[str, ...] = ("scene", "portrait", "story")
"""The three styles of a response (see the module docstring)."""

TEMPLATE_STYLES: tuple[str, ...] = ("scene", "portrait", "story", "portrait", "story", "scene")
"""The style of each of :data:`rlhf.sim.world.SENTENCE_TEMPLATES`, in its order."""

BEATS: dict[str, str] = {"scene": "portrait", "portrait": "story", "story": "scene"}
"""The cyclic taste: each style beats the one it maps to (and loses to the one mapping to it)."""

assert len(TEMPLATE_STYLES) == len(SENTENCE_TEMPLATES) and set(TEMPLATE_STYLES) == set(STYLES)


def response_style(response: str) -> str | None:
    """The style of a response: that of the template its first content sentence follows
    (:data:`TEMPLATE_STYLES`), or None when that sentence follows none (a filler phrase, a
    sentence cut off, foreign words) or the response has no content sentence."""
    sentences = content_sentences(response)
    if not sentences:
        return None
    index = template_index(sentences[0])
    return None if index is None else TEMPLATE_STYLES[index]


def cyclic_term(first: str, second: str) -> int:
    """C(first, second): +1 when ``first``'s style beats ``second``'s (:data:`BEATS`), −1 when
    it loses to it, 0 for the same style or when either has none. C(b, a) = −C(a, b)."""
    a, b = response_style(first), response_style(second)
    if a is None or b is None or a == b:
        return 0
    return 1 if BEATS[a] == b else -1


def _check(temperature: float, nontransitive: float) -> None:
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if not (nontransitive >= 0 and math.isfinite(nontransitive)):
        raise ValueError(f"nontransitive must be a finite number ≥ 0, got {nontransitive}")


def preference_logit(
    prompt: Text,
    first: str,
    second: str,
    *,
    temperature: float = 1.0,
    nontransitive: float = 0.0,
) -> float:
    """ℓ(x, first, second) = (gold(x, first) − gold(x, second) + λ · C(first, second)) / τ,
    the log-odds that ``first`` is preferred (τ = ``temperature`` > 0 and λ = ``nontransitive``
    ≥ 0, both in gold units). Antisymmetric exactly: swapping the responses negates it."""
    _check(temperature, nontransitive)
    difference = gold_score(prompt, first) - gold_score(prompt, second)
    if nontransitive:
        difference += nontransitive * cyclic_term(first, second)
    return difference / temperature


def antisymmetric_sigmoid(logit: float) -> float:
    """σ(logit), computed so that ``antisymmetric_sigmoid(−x) == 1 − antisymmetric_sigmoid(x)``
    exactly in floating point: σ(|x|) lies in [½, 1], where ``1 − s`` is exact (Sterbenz), and
    a negative logit gets ``1 − σ(|x|)``."""
    if math.isnan(logit):
        raise ValueError("the preference logit is NaN")
    upper = 1.0 / (1.0 + math.exp(-abs(logit)))  # σ(|x|) ∈ [½, 1]; exp(−|x|) never overflows
    return upper if logit >= 0 else 1.0 - upper


def gold_preference(
    prompt: Text,
    first: str,
    second: str,
    *,
    temperature: float = 1.0,
    nontransitive: float = 0.0,
) -> float:
    """P_gold(first ≻ second | prompt) = σ(ℓ) of :func:`preference_logit`, in [0, 1], with
    ``gold_preference(x, a, b) + gold_preference(x, b, a) == 1`` exactly; ½ for a = b.
    ``nontransitive`` = 0 is pure Bradley–Terry on the gold reward."""
    return antisymmetric_sigmoid(
        preference_logit(
            prompt, first, second, temperature=temperature, nontransitive=nontransitive
        )
    )
