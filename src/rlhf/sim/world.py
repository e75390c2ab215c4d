"""The embedded world's language: a small seeded English-like language and its generators.

Twelve topics (cat, dog, garden, rain, ship, bread, moon, river, school, music, forest,
snow), each with its own nouns, verbs, adjectives and places, share a handful of function
words, adjectives and six sentence templates::

    The little cat sleeps under the sofa.
    Every day the river flows.
    I like the fresh bread.

Add four polite closings ("Thank you for asking.") and four filler sentences ("Let me
think.") and the whole vocabulary is about 200 words (:data:`VOCABULARY`), so a model of two
layers becomes fluent in minutes. No word belongs to two topics, so a sentence's topic is the
topic of its topic words (:func:`sentence_topics`) and a prompt's topic is read off its text
(:func:`topic_of`).

Prompts are plain strings ending with a newline, like ``builtin:arithmetic``'s
(``"Tell me about the cat.\\n"``). Responses are sentences joined by single spaces. Two
*styles* of response are generated, both deterministic given a seed:

* :data:`BEHAVIOUR`: what the SFT demonstrations and the initial policy look like: mostly one
  to three sentences (four or five in 7 %), each on the prompt's topic with probability 0.6,
  a polite closing with probability 0.3, now and then a repeated sentence or a response cut
  off mid-sentence. The gold reward (:mod:`rlhf.sim.gold`) varies a lot over it, which is
  what the annotators' labels and the reward model learn from.
* :data:`BROAD`: the pretraining corpus's wider mix: zero to eight sentences, repeats and
  several polite closings more often, so the base model can write everything the RL later
  explores (including the over-long, repetitive responses the gold reward dislikes).
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class Topic:
    """One topic's own words; ``nouns[0]`` is the topic's name."""

    nouns: tuple[str, ...]
    verbs: tuple[str, ...]  # third person singular, intransitive: "the cat sleeps"
    adjectives: tuple[str, ...]
    places: tuple[str, ...]  # nouns after a preposition: "under the sofa"

    @property
    def name(self) -> str:
        return self.nouns[0]

    @property
    def words(self) -> frozenset[str]:
        return frozenset((*self.nouns, *self.verbs, *self.adjectives, *self.places))


def _topic(nouns: str, verbs: str, adjectives: str, places: str) -> Topic:
    return Topic(*(tuple(part.split()) for part in (nouns, verbs, adjectives, places)))


TOPICS: tuple[Topic, ...] = (
    _topic("cat kitten mouse", "sleeps purrs jumps", "soft lazy", "sofa window"),
    _topic("dog puppy bone", "barks runs digs", "loyal muddy", "yard park"),
    _topic("garden flower seed", "grows blooms opens", "green sunny", "path fence"),
    _topic("rain cloud puddle", "falls drips pours", "wet grey", "roof street"),
    _topic("ship sailor sail", "sails rocks drifts", "tall white", "sea harbor"),
    _topic("bread baker oven", "bakes rises cools", "warm fresh", "kitchen table"),
    _topic("moon star night", "shines glows fades", "bright pale", "sky hill"),
    _topic("river fish stone", "flows swims bends", "cold deep", "valley bridge"),
    _topic("school teacher pupil", "reads writes learns", "busy clever", "class library"),
    _topic("music song drum", "plays sings rings", "loud sweet", "hall stage"),
    _topic("forest tree owl", "rustles hoots hides", "wild dark", "cave clearing"),
    _topic("snow snowman sled", "melts sparkles slides", "frosty icy", "mountain pond"),
)
TOPIC_NAMES: tuple[str, ...] = tuple(topic.name for topic in TOPICS)
TOPIC_BY_NAME: dict[str, Topic] = {topic.name: topic for topic in TOPICS}
# every topic word -> its topic's name (no word is in two topics)
WORD_TOPIC: dict[str, str] = {word: topic.name for topic in TOPICS for word in topic.words}

SHARED_ADJECTIVES: tuple[str, ...] = ("little", "big", "small", "happy", "quiet", "pretty")
PREPOSITIONS: tuple[str, ...] = ("under", "near", "by", "in", "on")

# Sentence templates: {adj} any adjective of the topic or shared, {noun}/{noun2} two distinct
# nouns of the topic, {verb} a verb, {prep} a preposition, {place} a place of the topic.
SENTENCE_TEMPLATES: tuple[str, ...] = (
    "The {adj} {noun} {verb} {prep} the {place}.",
    "The {noun} is very {adj}.",
    "Every day the {noun} {verb}.",
    "I like the {adj} {noun}.",
    "The {noun} {verb} with the {noun2}.",
    "There is a {adj} {noun} {prep} the {place}.",
)
POLITE: tuple[str, ...] = (
    "Thank you for asking.",
    "I hope you like it.",
    "I hope this helps.",
    "Have a nice day.",
)
FILLER: tuple[str, ...] = (
    "Let me think.",
    "That is a good question.",
    "I am not sure.",
    "It is what it is.",
)
PROMPT_TEMPLATES: tuple[str, ...] = (
    "Tell me about the {noun}.\n",
    "Write a short story about the {noun}.\n",
    "What do you know about the {noun}?\n",
    "Describe the {noun}.\n",
    "Say something about the {noun}.\n",
)
PROMPT_NOUNS = 2  # a prompt names one of its topic's first two nouns ("cat" or "kitten")

_SLOT = re.compile(r"\{(\w+)\}")
_WORD = re.compile(r"[A-Za-z]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
ENDINGS = (".", "!", "?")


def words(text: str) -> list[str]:
    """The words of a text, lower case, punctuation dropped."""
    return [word.lower() for word in _WORD.findall(text)]


@cache
def _slot_words() -> dict[str, frozenset[str]]:
    """Each template slot's admissible words, over all topics."""
    union = {
        "noun": frozenset(w for t in TOPICS for w in t.nouns),
        "verb": frozenset(w for t in TOPICS for w in t.verbs),
        "adj": frozenset((*SHARED_ADJECTIVES, *(w for t in TOPICS for w in t.adjectives))),
        "prep": frozenset(PREPOSITIONS),
        "place": frozenset(w for t in TOPICS for w in t.places),
    }
    union["noun2"] = union["noun"]
    return union


def _vocabulary() -> frozenset[str]:
    fixed = " ".join((*SENTENCE_TEMPLATES, *POLITE, *FILLER, *PROMPT_TEMPLATES))
    return frozenset(words(_SLOT.sub(" ", fixed))) | set().union(*_slot_words().values())


VOCABULARY: frozenset[str] = _vocabulary()
"""Every word of the language, lower case."""


# ---------------------------------------------------------------- reading text


def split_sentences(response: str) -> list[str]:
    """The sentences of a response, in order: split after ``.``, ``!`` or ``?`` followed by
    white space. A last piece that does not end with one of them is kept (cut off)."""
    return [piece for piece in _SENTENCE_END.split(response.strip()) if piece]


def is_cut_off(response: str) -> bool:
    """Whether a non-empty response stops mid-sentence (no final ``.``, ``!`` or ``?``)."""
    text = response.strip()
    return bool(text) and not text.endswith(ENDINGS)


def normalise(sentence: str) -> str:
    """A sentence as compared for repeats: lower case, single spaces."""
    return " ".join(sentence.lower().split())


_POLITE_KEYS = frozenset(normalise(phrase) for phrase in POLITE)
_FIXED_KEYS = _POLITE_KEYS | frozenset(normalise(phrase) for phrase in FILLER)


def is_polite(sentence: str) -> bool:
    """Whether a sentence is one of the polite closings (any case and spacing)."""
    return normalise(sentence) in _POLITE_KEYS


def content_sentences(response: str) -> list[str]:
    """The sentences of a response that are not polite closings."""
    return [sentence for sentence in split_sentences(response) if not is_polite(sentence)]


def sentence_topics(text: str) -> frozenset[str]:
    """The topics whose words a text uses (empty for polite, filler or foreign text)."""
    return frozenset(WORD_TOPIC[word] for word in words(text) if word in WORD_TOPIC)


def topic_of(text: str) -> str | None:
    """The topic of a prompt (or of any text about exactly one topic): the one topic whose
    words it uses, or None when it uses none or several."""
    topics = sentence_topics(text)
    return next(iter(topics)) if len(topics) == 1 else None


@cache
def _template_patterns() -> tuple[tuple[str, ...], ...]:
    """Each template as its words, slots written ``{slot}``, ending punctuation dropped."""
    return tuple(tuple(template[:-1].split()) for template in SENTENCE_TEMPLATES)


def is_well_formed(sentence: str) -> bool:
    """Whether a sentence is grammatical in the language: a polite or filler phrase, or one of
    :data:`SENTENCE_TEMPLATES` with admissible words in its slots (any topics), capitalised
    and ending with a full stop. A sentence cut off or with a foreign word is not."""
    text = " ".join(sentence.split())
    if normalise(text) in _FIXED_KEYS:
        return text[:1].isupper() and text.endswith(ENDINGS)
    return template_index(text) is not None


def template_index(sentence: str) -> int | None:
    """The index in :data:`SENTENCE_TEMPLATES` of the template a sentence follows (admissible
    words in its slots, any topics; capitalised, ending with a full stop), or None: a polite or
    filler phrase, a sentence cut off or with a foreign word. No sentence fits two templates."""
    text = " ".join(sentence.split())
    if not text.endswith(".") or not text[:1].isupper():
        return None
    tokens, slots = text[:-1].split(" "), _slot_words()
    # a template's fixed words match exactly, so only its first word is capitalised
    return next(
        (
            index
            for index, pattern in enumerate(_template_patterns())
            if len(pattern) == len(tokens)
            and all(
                token in slots[part[1:-1]] if part.startswith("{") else token == part
                for part, token in zip(pattern, tokens, strict=True)
            )
        ),
        None,
    )


# ---------------------------------------------------------------- generating text


def prompt(rng: random.Random, topic: str | None = None) -> str:
    """A prompt about ``topic`` (default: a random one), e.g. ``"Tell me about the cat.\\n"``
    or ``"Describe the lazy kitten on the sofa.\\n"``: the noun takes an adjective 60 % of the
    time and a place 40 % of the time (its topic's own), so there are thousands of distinct
    prompts and held-out ones exist (:func:`is_heldout_prompt`)."""
    chosen = TOPIC_BY_NAME[topic] if topic is not None else rng.choice(TOPICS)
    noun = rng.choice(chosen.nouns[:PROMPT_NOUNS])
    if rng.random() < 0.6:
        noun = f"{rng.choice(chosen.adjectives + SHARED_ADJECTIVES)} {noun}"
    if rng.random() < 0.4:
        noun = f"{noun} {rng.choice(PREPOSITIONS)} the {rng.choice(chosen.places)}"
    return rng.choice(PROMPT_TEMPLATES).format(noun=noun)


PROMPT_SPLITS = ("all", "train", "eval")
HELDOUT_SHARE = 5  # one prompt in 5 belongs to the "eval" split


def is_heldout_prompt(text: str) -> bool:
    """Whether a prompt belongs to the held-out ("eval") split: a fixed hash of its text, so
    the split is the same for every seed and run (no prompt is in both)."""
    return zlib.crc32(text.encode("utf-8")) % HELDOUT_SHARE == 0


def sentence(topic: str, rng: random.Random) -> str:
    """A random grammatical sentence about ``topic``, e.g. ``"The lazy cat sleeps on the
    sofa."`` (every one names one of the topic's nouns)."""
    chosen = TOPIC_BY_NAME[topic]
    noun, noun2 = rng.sample(chosen.nouns, 2)
    adjectives = chosen.adjectives + SHARED_ADJECTIVES
    # topic adjectives are as likely as shared ones, so sentences carry topic words
    adj = rng.choice(chosen.adjectives) if rng.random() < 0.5 else rng.choice(adjectives)
    return rng.choice(SENTENCE_TEMPLATES).format(
        adj=adj,
        noun=noun,
        noun2=noun2,
        verb=rng.choice(chosen.verbs),
        prep=rng.choice(PREPOSITIONS),
        place=rng.choice(chosen.places),
    )


@dataclass(frozen=True)
class Style:
    """A distribution of responses (see the module docstring)."""

    # weights of 0, 1, 2, ... content sentences (not counting polite closings)
    sentence_weights: tuple[float, ...]
    on_topic: float  # chance that a content sentence is about the prompt's topic
    filler: float  # chance that an off-topic content sentence is filler, not another topic
    repeat: float  # chance that a content sentence (after the first) repeats an earlier one
    polite: float  # chance of a polite closing at the end
    extra_polite: float  # chance of each further polite closing after it (geometric)
    cut_off: float  # chance that the response is cut off inside its last sentence


BEHAVIOUR = Style(
    sentence_weights=(0.0, 0.32, 0.36, 0.25, 0.05, 0.02),
    on_topic=0.6,
    filler=0.25,
    repeat=0.03,
    polite=0.3,
    extra_polite=0.03,
    cut_off=0.04,
)
"""The SFT demonstrations' and the initial policy's responses: mostly 1–3 sentences."""

BROAD = Style(
    sentence_weights=(0.02, 0.16, 0.18, 0.18, 0.14, 0.11, 0.09, 0.07, 0.05),
    on_topic=0.6,
    filler=0.25,
    repeat=0.15,
    polite=0.4,
    extra_polite=0.25,
    cut_off=0.05,
)
"""The pretraining corpus's wider mix: 0–8 sentences, more repeats and polite closings."""


def sample_response(
    prompt: str,
    rng: random.Random,
    style: Style = BEHAVIOUR,
    *,
    sentences: int | None = None,
) -> str:
    """A response to ``prompt`` drawn from ``style`` (with exactly ``sentences`` content
    sentences when given). Deterministic given the state of ``rng``."""
    topic = topic_of(prompt) or rng.choice(TOPIC_NAMES)
    weights = style.sentence_weights
    count = sentences if sentences is not None else rng.choices(range(len(weights)), weights)[0]
    parts: list[str] = []
    for index in range(count):
        if index > 0 and rng.random() < style.repeat:
            parts.append(rng.choice(parts))
        elif rng.random() < style.on_topic:
            parts.append(sentence(topic, rng))
        elif rng.random() < style.filler:
            parts.append(rng.choice(FILLER))
        else:
            parts.append(sentence(rng.choice([t for t in TOPIC_NAMES if t != topic]), rng))
    if rng.random() < style.polite:
        parts.append(rng.choice(POLITE))
        while rng.random() < style.extra_polite:
            parts.append(rng.choice(POLITE))
    if not parts:
        parts.append(rng.choice(POLITE))  # never an empty response
    text = " ".join(parts)
    if rng.random() < style.cut_off:
        # stop a word or more before the end of the last sentence
        words = text.split(" ")
        last = len(parts[-1].split(" "))
        text = " ".join(words[: len(words) - rng.randint(1, max(1, last - 1))])
    return text


def prompts(n: int, seed: int = 0, split: str = "all") -> list[str]:
    """``n`` prompts (topics drawn uniformly; some repeat), of one split: ``"train"`` (never
    held out), ``"eval"`` (held out: :func:`is_heldout_prompt`) or ``"all"``."""
    if split not in PROMPT_SPLITS:
        raise ValueError(f"split {split!r}: use one of {', '.join(PROMPT_SPLITS)}")
    rng = random.Random(f"world-prompts-{seed}")
    out: list[str] = []
    while len(out) < n:
        text = prompt(rng)
        if split == "all" or is_heldout_prompt(text) == (split == "eval"):
            out.append(text)
    return out


def demonstrations(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (prompt, response) pairs of the behaviour distribution: the SFT data."""
    rng = random.Random(f"world-demonstrations-{seed}")
    pairs = []
    for _ in range(n):
        text = prompt(rng)
        pairs.append((text, sample_response(text, rng)))
    return pairs


def corpus_text(n: int, seed: int = 0) -> list[str]:
    """``n`` pretraining texts, each a prompt followed by a :data:`BROAD` response."""
    rng = random.Random(f"world-corpus-{seed}")
    texts = []
    for _ in range(n):
        text = prompt(rng)
        texts.append(text + sample_response(text, rng, BROAD))
    return texts


def behaviour_groups(prompt_list: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """``k`` behaviour responses to each prompt (the stand-in for K samples of the SFT policy)."""
    rng = random.Random(f"world-groups-{seed}")
    return [[sample_response(text, rng) for _ in range(k)] for text in prompt_list]
