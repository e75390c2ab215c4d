"""The embedded world's gold reward: what its people really want from a response.

A cheap, documented function of (prompt, response) on the language of :mod:`rlhf.sim.world`.
A response is split into sentences; *content* sentences are all but the polite closings.
Six components, each on [0, 1] before weighting (polite: on [−1, 1]):

============  ======  =============================================================
component     weight  value
============  ======  =============================================================
on_topic      +0.30   share of the distinct content sentences about the prompt's topic
                      (its words and no other topic's); 0 without content
length        +0.25   by the number n of content sentences (repeats count):
                      n = 0, 1, 2, 3, 4, 5, 6+ → 0, .4, .75, 1, .7, .35, 0
polite        +0.15   polite closings: none → 0; exactly one, last → 1; one elsewhere
                      → .5; each one more −.75: two → .25, three → −.5, four+ → −1
form          +0.20   share of the sentences that are well formed (a template of the
                      language with admissible words, or a fixed phrase; see
                      :func:`rlhf.sim.world.is_well_formed`)
complete      +0.10   1 when the response ends with ``.``, ``!`` or ``?`` (not cut off)
repetition    −0.50   the larger of: the share of sentences repeating an earlier one,
                      and the share of word 4-grams (within sentences) seen earlier
============  ======  =============================================================

``gold = Σ weight × component``: 1.0 for three distinct on-topic sentences and one polite
closing; over the behaviour distribution its mean is 0.68, nine in ten responses between 0.4 and
0.9; heavy repetition and stacked closings take it below 0.

Built to be over-optimised. Within the behaviour distribution (:data:`rlhf.sim.world.BEHAVIOUR`)
more sentences, more topic words and a polite closing are each better, and responses rarely
go past three sentences, rarely repeat and rarely close politely twice. A reward model learns
those monotone trends from finitely many noisy labels of such responses, with little or no
evidence of what lies beyond; gold turns them around there: a fourth sentence is worse, a
sixth much worse, repeating an on-topic sentence is penalised, and so is a second polite
closing. A policy pushed hard against the reward model drifts exactly there (longer, repeated
topic sentences, more politeness): its proxy reward rises while gold peaks and falls.

Plain functions of text, like the rest of :mod:`rlhf.sim` (which imports only :mod:`rlhf.data`,
so rewards, rollouts and recipes can all read the world): the reward configs name,
``reward: {rule: world_gold}``, is :class:`rlhf.rewards.world_gold.WorldGold`, which wraps
:func:`gold_components` and :func:`combine`.
"""

from __future__ import annotations

from rlhf.data.records import Text
from rlhf.sim.world import (
    is_cut_off,
    is_polite,
    is_well_formed,
    normalise,
    sentence_topics,
    split_sentences,
    topic_of,
)

GOLD_WEIGHTS: dict[str, float] = {
    "on_topic": 0.30,
    "length": 0.25,
    "polite": 0.15,
    "form": 0.20,
    "complete": 0.10,
    "repetition": -0.50,
}
"""Each gold component's weight (see the module docstring)."""

LENGTH_SCORE: tuple[float, ...] = (0.0, 0.4, 0.75, 1.0, 0.7, 0.35, 0.0)
"""The length component by number of content sentences; the last entry holds for more."""

POLITE_NOT_LAST = 0.5  # the polite component for one polite closing that is not last
POLITE_EXTRA = -0.75  # ... and its change for each closing past the first, down to -1

NGRAM = 4  # repeated word n-grams of this size count as repetition


def prompt_text(prompt: Text) -> str:
    """A prompt as plain text: the string itself, or a message list's last user turn."""
    if isinstance(prompt, str):
        return prompt
    users = [message.content for message in prompt if message.role == "user"]
    return users[-1] if users else ""


def _repetition(sentences: list[str]) -> float:
    if not sentences:
        return 0.0
    keys = [normalise(sentence).rstrip(".!?") for sentence in sentences]
    repeated_sentences = sum(key in keys[:index] for index, key in enumerate(keys))
    seen: set[tuple[str, ...]] = set()
    grams = repeated_grams = 0
    for key in keys:
        words = key.split()
        own = [tuple(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)]
        grams += len(own)
        repeated_grams += sum(gram in seen for gram in own)
        seen.update(own)
    return max(repeated_sentences / len(sentences), repeated_grams / grams if grams else 0.0)


def gold_components(prompt: Text, response: str) -> dict[str, float]:
    """The six gold components of one response, each before weighting (see the module
    docstring); the prompt's topic is :func:`rlhf.sim.world.topic_of` its text."""
    topic = topic_of(prompt_text(prompt))
    sentences = split_sentences(response)
    polite_at = [index for index, sentence in enumerate(sentences) if is_polite(sentence)]
    content = [sentence for sentence in sentences if not is_polite(sentence)]
    distinct = list(dict.fromkeys(normalise(sentence) for sentence in content))
    on_topic = (
        sum(sentence_topics(sentence) == {topic} for sentence in distinct) / len(distinct)
        if distinct and topic is not None
        else 0.0
    )
    if len(polite_at) == 1:
        polite = 1.0 if polite_at[0] == len(sentences) - 1 else POLITE_NOT_LAST
    elif polite_at:
        polite = max(1.0 + POLITE_EXTRA * (len(polite_at) - 1), -1.0)
    else:
        polite = 0.0
    return {
        "on_topic": on_topic,
        "length": LENGTH_SCORE[min(len(content), len(LENGTH_SCORE) - 1)],
        "polite": polite,
        "form": sum(map(is_well_formed, sentences)) / len(sentences) if sentences else 0.0,
        "complete": float(bool(sentences) and not is_cut_off(response)),
        "repetition": _repetition(sentences),
    }


def combine(components: dict[str, float]) -> float:
    """Gold from its components: ``Σ GOLD_WEIGHTS[name] × components[name]``."""
    return sum(GOLD_WEIGHTS[name] * value for name, value in components.items())


def gold_score(prompt: Text, response: str) -> float:
    """The gold reward of one response to one prompt (about 0 to 1; see the module docstring)."""
    return combine(gold_components(prompt, response))
