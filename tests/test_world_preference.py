"""The embedded world's gold preference (rlhf.sim.preference): the styles it reads, exact
antisymmetry, a cycle when λ > 0 and transitivity at λ = 0; the annotators' and the builtin
dataset's cyclic taste; the preference function of `rule: world_gold`."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from rlhf.data.records import Message, PreferenceRecord
from rlhf.rewards.preference import PreferenceSpec, WorldGoldPreference, build_preference
from rlhf.sim import world
from rlhf.sim.annotators import SimulatedAnnotator, default_pool
from rlhf.sim.builtin import load_builtin
from rlhf.sim.gold import gold_score
from rlhf.sim.preference import (
    BEATS,
    TEMPLATE_STYLES,
    antisymmetric_sigmoid,
    cyclic_term,
    gold_preference,
    preference_logit,
    response_style,
)

CAT = "Tell me about the cat.\n"
# one sentence each, on topic, well formed: equal gold, three different styles
SCENE = "The lazy cat sleeps under the sofa."
PORTRAIT = "The cat is very soft."
STORY = "Every day the cat purrs."


def behaviour_pairs(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    rows = []
    for prompt in world.prompts(n, seed):
        rows.append(
            (prompt, world.sample_response(prompt, rng), world.sample_response(prompt, rng))
        )
    return rows


# ---------------------------------------------------------------- styles


def test_every_template_has_a_style_read_off_its_sentences():
    rng = random.Random(0)
    for _ in range(300):
        sentence = world.sentence(rng.choice(world.TOPIC_NAMES), rng)
        index = world.template_index(sentence)
        assert index is not None and world.is_well_formed(sentence)
        assert response_style(sentence) == TEMPLATE_STYLES[index]
    assert [response_style(s) for s in (SCENE, PORTRAIT, STORY)] == ["scene", "portrait", "story"]
    assert response_style("There is a little cat on the sofa.") == "scene"
    assert response_style("I like the lazy mouse.") == "portrait"
    assert response_style("The kitten jumps with the mouse.") == "story"


def test_the_first_content_sentence_decides_and_some_responses_have_no_style():
    assert response_style(f"Thank you for asking. {STORY} {SCENE}") == "story"  # polite skipped
    assert response_style("Let me think. " + SCENE) is None  # a filler opening
    assert response_style("The lazy cat sleeps under") is None  # cut off
    assert response_style("The zebra is very soft.") is None  # a foreign word
    assert response_style("I hope this helps.") is None  # no content sentence
    assert response_style("") is None
    assert world.template_index("Let me think.") is None
    assert world.template_index("the cat is very soft.") is None  # not capitalised


def test_the_cyclic_term_is_rock_paper_scissors():
    assert BEATS == {"scene": "portrait", "portrait": "story", "story": "scene"}
    assert cyclic_term(SCENE, PORTRAIT) == cyclic_term(PORTRAIT, STORY) == 1
    assert cyclic_term(STORY, SCENE) == 1
    assert cyclic_term(PORTRAIT, SCENE) == cyclic_term(STORY, PORTRAIT) == -1
    assert cyclic_term(SCENE, "There is a big cat on the sofa.") == 0  # same style
    assert cyclic_term(SCENE, "Let me think.") == 0  # no style
    for _, a, b in behaviour_pairs(200):
        assert cyclic_term(a, b) == -cyclic_term(b, a)


# ---------------------------------------------------------------- the gold preference


@pytest.mark.parametrize(("temperature", "nontransitive"), [(1.0, 0.0), (0.1, 0.3), (0.05, 2.0)])
def test_gold_preference_is_antisymmetric_exactly(temperature, nontransitive):
    options = dict(temperature=temperature, nontransitive=nontransitive)
    for prompt, a, b in behaviour_pairs(300):
        p, q = gold_preference(prompt, a, b, **options), gold_preference(prompt, b, a, **options)
        assert 0.0 <= p <= 1.0
        assert p + q == 1.0 and q == 1.0 - p  # exactly, not approximately
        assert preference_logit(prompt, a, b, **options) == -preference_logit(
            prompt, b, a, **options
        )
        assert gold_preference(prompt, a, a, **options) == 0.5


def test_the_logit_by_hand():
    # gold 1.0 (three distinct on-topic sentences and a closing) against gold 0.7 (one sentence)
    best = " ".join(
        [PORTRAIT, "Every day the kitten purrs.", "I like the lazy mouse.", "Thank you for asking."]
    )
    assert gold_score(CAT, best) == pytest.approx(1.0)
    assert gold_score(CAT, SCENE) == pytest.approx(0.7)
    # best opens with a portrait, which loses to a scene: (1.0 − 0.7 − 0.2) / 0.1 = 1
    assert cyclic_term(best, SCENE) == -1
    logit = preference_logit(CAT, best, SCENE, temperature=0.1, nontransitive=0.2)
    assert logit == pytest.approx(1.0)
    assert gold_preference(CAT, best, SCENE, temperature=0.1, nontransitive=0.2) == pytest.approx(
        1 / (1 + math.exp(-1.0))
    )
    # pure Bradley–Terry: σ(0.3 / 0.1) = σ(3)
    assert gold_preference(CAT, best, SCENE, temperature=0.1) == pytest.approx(0.9525741268224334)


def test_a_cycle_with_nontransitive_and_none_without():
    golds = {gold_score(CAT, r) for r in (SCENE, PORTRAIT, STORY)}
    assert len(golds) == 1  # equal gold: Bradley–Terry says ½ for each
    cycle = [(SCENE, PORTRAIT), (PORTRAIT, STORY), (STORY, SCENE)]
    options = dict(temperature=0.1, nontransitive=0.3)
    probabilities = [gold_preference(CAT, a, b, **options) for a, b in cycle]
    # each beats the next with σ(λ / τ) = σ(3): a ≻ b ≻ c ≻ a
    assert probabilities == pytest.approx([0.9525741268224334] * 3)
    assert all(p > 0.5 for p in probabilities)
    # log-odds around the cycle: 3λ/τ here, 0 under any Bradley–Terry model
    assert sum(preference_logit(CAT, a, b, **options) for a, b in cycle) == pytest.approx(9.0)
    assert [gold_preference(CAT, a, b, temperature=0.1) for a, b in cycle] == [0.5] * 3


def test_without_the_cyclic_term_preferences_are_transitive():
    rng = random.Random(1)
    prompt = CAT
    responses = list({world.sample_response(prompt, rng) for _ in range(40)})
    checked = 0
    for a, b, c in itertools.permutations(responses[:25], 3):
        ab, bc, ac = (
            gold_preference(prompt, x, y, temperature=0.1) for x, y in ((a, b), (b, c), (a, c))
        )
        if ab > 0.5 and bc > 0.5:
            assert ac > 0.5
            checked += 1
        cycle = sum(
            preference_logit(prompt, x, y, temperature=0.1) for x, y in ((a, b), (b, c), (c, a))
        )
        assert cycle == pytest.approx(0.0, abs=1e-9)
    assert checked > 100


def test_with_the_cyclic_term_random_responses_form_cycles():
    rng = random.Random(2)
    responses = list({world.sample_response(CAT, rng) for _ in range(40)})[:25]
    options = dict(temperature=0.1, nontransitive=0.5)
    cycles = sum(
        all(gold_preference(CAT, x, y, **options) > 0.5 for x, y in ((a, b), (b, c), (c, a)))
        for a, b, c in itertools.combinations(responses, 3)
    )
    assert cycles > 0


def test_antisymmetric_sigmoid_is_exact_at_extremes():
    for x in (0.0, 1e-12, 0.3, 7.5, 40.0, 800.0):
        assert antisymmetric_sigmoid(x) + antisymmetric_sigmoid(-x) == 1.0
    assert antisymmetric_sigmoid(800.0) == 1.0 and antisymmetric_sigmoid(-800.0) == 0.0
    with pytest.raises(ValueError, match="NaN"):
        antisymmetric_sigmoid(float("nan"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(temperature=0.0), "temperature must be a finite number > 0"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(nontransitive=-0.1), "nontransitive must be a finite number ≥ 0"),
    ],
)
def test_bad_settings_say_which(options, message):
    with pytest.raises(ValueError, match=message):
        gold_preference(CAT, SCENE, PORTRAIT, **options)


def test_message_list_prompts_read_their_last_user_turn():
    messages = (Message("user", "Tell me about the cat."),)
    assert gold_preference(messages, SCENE, "The dog barks.") == gold_preference(
        CAT, SCENE, "The dog barks."
    )


# ---------------------------------------------------------------- annotators and the dataset


def test_a_careful_annotator_labels_by_the_gold_preference():
    annotator = SimulatedAnnotator(temperature=0.05, nontransitive=0.3)
    for prompt, a, b in behaviour_pairs(100):
        assert annotator.preference_probability(prompt, a, b) == pytest.approx(
            gold_preference(prompt, a, b, temperature=0.05, nontransitive=0.3)
        )
    assert "nontransitive=0.3" in repr(annotator)
    with pytest.raises(ValueError, match="nontransitive"):
        SimulatedAnnotator(nontransitive=-1)


def test_annotators_with_the_cyclic_taste_vote_round_the_cycle():
    pool = default_pool(0, nontransitive=0.5)
    wins = {pair: 0 for pair in ((SCENE, PORTRAIT), (PORTRAIT, STORY), (STORY, SCENE))}
    for (a, b), _ in itertools.product(list(wins), range(60)):
        wins[(a, b)] += pool.compare(CAT, a, b).chosen == a
    assert all(count > 45 for count in wins.values()), wins


def test_builtin_world_preferences_take_nontransitive():
    plain = load_builtin("builtin:world-preferences?n=300")
    assert load_builtin("builtin:world-preferences?n=300&nontransitive=0") == plain
    cyclic = load_builtin("builtin:world-preferences?n=300&nontransitive=0.5")
    assert all(isinstance(r, PreferenceRecord) for r in cyclic)
    # the same pairs, labelled again: where the styles cycle, the labels follow the cycle
    assert [{r.chosen, r.rejected} for r in cyclic] == [{r.chosen, r.rejected} for r in plain]

    def with_cycle(records):
        terms = [cyclic_term(r.chosen, r.rejected) for r in records]
        return sum(t > 0 for t in terms) / sum(t != 0 for t in terms)

    assert with_cycle(cyclic) > with_cycle(plain) + 0.15
    with pytest.raises(ValueError, match=r"world-preferences\?nontransitive=-1.*≥ 0"):
        load_builtin("builtin:world-preferences?nontransitive=-1")
    with pytest.raises(ValueError, match="bad value"):
        load_builtin("builtin:world-preferences?nontransitive=lots")
    with pytest.raises(ValueError, match="unknown option"):
        load_builtin("builtin:world-rankings?nontransitive=0.5")


# ---------------------------------------------------------------- rule: world_gold


def test_the_world_gold_preference_function():
    preference = build_preference(
        PreferenceSpec(rule="world_gold", temperature=0.1, nontransitive=0.3)
    )
    assert isinstance(preference, WorldGoldPreference)
    prompts = [CAT] * 3
    first, second = [SCENE, PORTRAIT, STORY], [PORTRAIT, STORY, SCENE]
    forward = preference(prompts, first, second)
    assert forward.dtype == torch.float32 and forward.device.type == "cpu"
    assert forward.tolist() == pytest.approx([0.9525741268224334] * 3)
    assert torch.equal(preference(prompts, second, first), 1 - forward)  # exactly
    rows = behaviour_pairs(200)
    p = preference([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
    q = preference([r[0] for r in rows], [r[2] for r in rows], [r[1] for r in rows])
    assert torch.equal(p + q, torch.ones(len(rows)))
    expected = [gold_preference(*row, temperature=0.1, nontransitive=0.3) for row in rows]
    assert p.tolist() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="3 prompts, 2 first and 3 second"):
        preference(prompts, first[:2], second)
