"""The embedded world: its language, gold reward, simulated annotators and builtins."""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict

import pytest
import torch

from rlhf.data.records import (
    BinaryRecord,
    CompletionRecord,
    Message,
    PreferenceRecord,
    PromptRecord,
    RankingRecord,
    RatingRecord,
    TextRecord,
)
from rlhf.eval.policies import gold_ceiling
from rlhf.rewards.world_gold import WorldGold
from rlhf.sim import world
from rlhf.sim.annotators import (
    AnnotatorPool,
    SimulatedAnnotator,
    default_pool,
    label_groups,
)
from rlhf.sim.builtin import load_builtin
from rlhf.sim.gold import GOLD_WEIGHTS, gold_components, gold_score

CAT = "Tell me about the cat.\n"
# seven distinct, well-formed sentences about cats sharing no word 4-gram
CAT_SENTENCES = [
    "The cat is very soft.",
    "Every day the kitten purrs.",
    "I like the lazy mouse.",
    "There is a little cat on the sofa.",
    "The kitten jumps with the mouse.",
    "The small mouse sleeps near the window.",
    "The mouse is very lazy.",
]
THANKS, HOPE = "Thank you for asking.", "I hope this helps."


def cat(n: int, *extra: str) -> str:
    return " ".join([*CAT_SENTENCES[:n], *extra])


# ---------------------------------------------------------------- the language


def test_generators_are_deterministic_per_seed():
    assert world.prompts(50, 3) == world.prompts(50, 3)
    assert world.demonstrations(50, 3) == world.demonstrations(50, 3)
    assert world.corpus_text(50, 3) == world.corpus_text(50, 3)
    assert world.demonstrations(50, 3) != world.demonstrations(50, 4)
    assert world.corpus_text(50, 3) != world.corpus_text(50, 4)


def test_every_prompt_names_its_topic():
    for topic in world.TOPICS:
        for template in world.PROMPT_TEMPLATES:
            for noun in topic.nouns[: world.PROMPT_NOUNS]:
                prompt = template.format(noun=noun)
                assert prompt.endswith("\n")
                assert world.topic_of(prompt) == topic.name
    rng = random.Random(0)
    for name in world.TOPIC_NAMES:
        assert world.topic_of(world.prompt(rng, name)) == name
    assert world.topic_of("Hello there.\n") is None
    assert world.topic_of("The cat and the dog.") is None  # two topics


def test_language_is_small_and_generated_sentences_are_well_formed():
    assert 150 <= len(world.VOCABULARY) <= 300
    all_words = [w for topic in world.TOPICS for w in topic.words]
    assert len(all_words) == len(set(all_words))  # no word in two topics
    rng = random.Random(1)
    for name in world.TOPIC_NAMES:
        for _ in range(20):
            sentence = world.sentence(name, rng)
            assert world.is_well_formed(sentence), sentence
            assert world.sentence_topics(sentence) == {name}
            assert set(world.words(sentence)) <= world.VOCABULARY
    for phrase in (*world.POLITE, *world.FILLER):
        assert world.is_well_formed(phrase)
    for bad in ("The cat is very.", "cat the is soft.", "The cat is very soft", "The cat is zany."):
        assert not world.is_well_formed(bad)


def test_behaviour_distribution_matches_its_description():
    pairs = world.demonstrations(3000, 0)
    counts = [len(world.content_sentences(r)) for _, r in pairs]
    assert 0.85 < sum(1 <= c <= 3 for c in counts) / len(counts) < 0.97  # mostly 1-3
    assert max(counts) <= 6  # five, plus now and then a repeated one
    on = total = 0
    polite = repeated = double_polite = 0
    for prompt, response in pairs:
        sentences = world.split_sentences(response)
        content = world.content_sentences(response)
        topic = world.topic_of(prompt)
        on += sum(world.sentence_topics(s) == {topic} for s in content)
        total += len(content)
        closings = len(sentences) - len(content)
        polite += closings > 0
        double_polite += closings > 1
        repeated += len(set(sentences)) < len(sentences)
    assert 0.5 < on / total < 0.7
    assert 0.25 < polite / len(pairs) < 0.35
    assert double_polite / len(pairs) < 0.03 and repeated / len(pairs) < 0.06


# ---------------------------------------------------------------- gold


def test_gold_of_a_hand_computed_response():
    parts = gold_components(CAT, cat(1, THANKS))
    assert parts == {
        "on_topic": 1.0,
        "length": 0.4,
        "polite": 1.0,
        "form": 1.0,
        "complete": 1.0,
        "repetition": 0.0,
    }
    assert gold_score(CAT, cat(1, THANKS)) == pytest.approx(0.3 + 0.25 * 0.4 + 0.15 + 0.2 + 0.1)
    assert gold_score(CAT, cat(3, THANKS)) == pytest.approx(1.0)  # the best there is
    assert gold_components(CAT, cat(7))["repetition"] == 0


def test_gold_components_behave_as_documented():
    g = lambda response: gold_score(CAT, response)  # noqa: E731
    assert g("The cat is very soft.") > g("The dog is very loyal.")  # on topic beats off
    assert g("The cat is very soft.") > g("Let me think.")
    assert g(cat(3)) > g(cat(1)) and g(cat(3)) > g(cat(7))  # length peaks at three
    assert g(cat(2)) > g(cat(1)) and g(cat(4)) < g(cat(3)) and g(cat(6)) < g(cat(4))
    a, b, c = CAT_SENTENCES[:3]
    assert g(f"{a} {b} {b}") < g(f"{a} {b}")  # a repeated sentence lowers gold
    assert g(f"{a} {b} {a}") < g(f"{a} {b} {c}")
    near = "The little cat sleeps on the sofa. The lazy cat sleeps on the sofa."
    assert gold_components(CAT, near)["repetition"] > 0  # repeated 4-grams count too
    assert g(cat(2, THANKS)) > g(cat(2, THANKS, HOPE)) > g(cat(2))  # exactly one closing
    assert g(cat(2)) > g(cat(2, THANKS, HOPE, "Have a nice day."))  # ... not three
    assert g(cat(2, THANKS)) > g(f"{THANKS} {cat(2)}")  # ... at the end
    assert g(cat(2, THANKS, THANKS)) < g(cat(2, THANKS, HOPE))  # repeating it is worse still
    cut = f"{a} {b} The kitten jumps with the"
    assert g(cut) < g(f"{a} {b}") and g(cut) < g(f"{a} {b} {CAT_SENTENCES[4]}")
    assert gold_components(CAT, cut)["complete"] == 0
    assert g("") == 0.0


def test_world_gold_reward_reports_each_component():
    prompts = [CAT, (Message("user", "Describe the river."),), CAT]
    responses = [cat(3, THANKS), "Every day the fish swims.", "The moon glows."]
    output = WorldGold().score(prompts, responses)
    assert set(output.components) == set(GOLD_WEIGHTS)
    expected = [gold_score(p, r) for p, r in zip(prompts, responses, strict=True)]
    assert torch.allclose(output.scores, torch.tensor(expected))
    weighted = sum(GOLD_WEIGHTS[name] * values for name, values in output.components.items())
    assert torch.allclose(weighted, output.scores)
    assert output.components["on_topic"].tolist() == [1.0, 1.0, 0.0]


def test_world_gold_builds_from_a_reward_spec():
    from rlhf.rewards import call_reward
    from rlhf.rewards.spec import RewardSpec, build_reward, parse_reward_spec

    for spec in (RewardSpec(rule="world_gold"), parse_reward_spec("rule=world_gold")):
        reward = build_reward(spec)
        scores = call_reward(reward, [CAT, CAT], [cat(3, THANKS), "The dog barks."])
        assert scores.tolist() == pytest.approx([1.0, gold_score(CAT, "The dog barks.")])


def test_longer_is_better_in_the_data_but_worse_beyond_it():
    """The exploitability property: within behaviour data mean gold rises from one to three
    sentences; responses of six or more (which the data hardly holds) score lower still than
    one sentence."""
    by_count: dict[int, list[float]] = defaultdict(list)
    for prompt, response in world.demonstrations(3000, 0):
        by_count[len(world.content_sentences(response))].append(gold_score(prompt, response))
    means = {n: statistics.mean(values) for n, values in by_count.items()}
    assert means[1] < means[2] < means[3]
    assert sum(len(by_count[n]) for n in by_count if n >= 6) / 3000 < 0.01
    rng = random.Random(2)
    long = [
        gold_score(p, world.sample_response(p, rng, sentences=rng.randint(6, 8)))
        for p in world.prompts(300, 2)
    ]
    assert statistics.mean(long) < means[1] - 0.05


WORD_INDEX = {word: i for i, word in enumerate(sorted(world.VOCABULARY))}


def word_features(prompt: str, response: str) -> list[float]:
    """A crude reward model's view: each word's count, and again when it is a topic word of
    the prompt's topic (no sentence counts, no repetition or length features)."""
    topic, size = world.topic_of(prompt), len(WORD_INDEX)
    features = [0.0] * (2 * size)
    for word in world.words(response):
        if word in WORD_INDEX:
            features[WORD_INDEX[word]] += 1
            if world.WORD_TOPIC.get(word) == topic:
                features[size + WORD_INDEX[word]] += 1
    return features


def test_best_of_n_against_a_learnt_proxy_over_optimises():
    """A linear Bradley-Terry reward model on word counts, fit to the default pool's labels
    of behaviour responses, then best-of-N over the broad mix (a policy pushed hard): the
    proxy reward of the pick keeps rising with N while its gold reward falls."""
    torch.manual_seed(0)
    prompts = world.prompts(600, 0)
    pairs = label_groups(prompts, world.behaviour_groups(prompts, 4, 0), seed=0)
    x = torch.tensor(
        [
            [
                c - r
                for c, r in zip(
                    word_features(p.prompt, p.chosen),
                    word_features(p.prompt, p.rejected),
                    strict=True,
                )
            ]
            for p in pairs
        ]
    )  # [pairs, features]: chosen minus rejected
    weights = torch.zeros(x.shape[1], requires_grad=True)
    optimiser = torch.optim.Adam([weights], lr=0.05)
    for _ in range(200):
        optimiser.zero_grad()
        loss = -torch.nn.functional.logsigmoid(x @ weights).mean() + 1e-3 * weights.square().sum()
        loss.backward()
        optimiser.step()
    rng, proxy, gold = random.Random(100), defaultdict(list), defaultdict(list)
    for prompt in world.prompts(60, 100):
        candidates = [world.sample_response(prompt, rng, world.BROAD) for _ in range(64)]
        scores = (torch.tensor([word_features(prompt, c) for c in candidates]) @ weights).tolist()
        for n in (1, 4, 16, 64):
            best = max(range(n), key=scores.__getitem__)
            proxy[n].append(scores[best])
            gold[n].append(gold_score(prompt, candidates[best]))
    proxy_means = [statistics.mean(proxy[n]) for n in (1, 4, 16, 64)]
    gold_means = [statistics.mean(gold[n]) for n in (1, 4, 16, 64)]
    assert proxy_means == sorted(proxy_means) and proxy_means[-1] > proxy_means[0] + 2
    assert gold_means[-1] < gold_means[0] - 0.05


# ---------------------------------------------------------------- annotators


def behaviour_pairs(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(prompt, a, b) with different gold, from the behaviour distribution."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        prompt = world.prompt(rng)
        a, b = world.sample_response(prompt, rng), world.sample_response(prompt, rng)
        if gold_score(prompt, a) != gold_score(prompt, b):
            out.append((prompt, a, b))
    return out


def agrees(record: PreferenceRecord) -> bool:
    return gold_score(record.prompt, record.chosen) > gold_score(record.prompt, record.rejected)


def test_noiseless_annotator_agrees_with_gold():
    annotator = SimulatedAnnotator(temperature=0, careless=0)
    pairs = behaviour_pairs(300)
    assert all(agrees(annotator.compare(p, a, b)) for p, a, b in pairs)
    assert all(annotator.preference_probability(p, a, b) in (0.0, 1.0) for p, a, b in pairs)
    for prompt, a, b in pairs[:50]:
        record = annotator.rank(prompt, [a, b, cat(3, THANKS)])
        golds = [gold_score(prompt, r) for r in record.responses]
        for i in range(3):
            for j in range(3):
                if golds[i] > golds[j]:
                    assert record.ranks[i] < record.ranks[j]


def test_careless_annotator_is_a_coin_flip():
    annotator = SimulatedAnnotator(temperature=0, careless=1.0, seed=3)
    share = statistics.mean(agrees(annotator.compare(p, a, b)) for p, a, b in behaviour_pairs(2000))
    assert abs(share - 0.5) < 0.05  # 4.5 standard deviations


def test_preferences_follow_bradley_terry():
    annotator = SimulatedAnnotator(temperature=0.1, seed=4)
    a, b = cat(3, THANKS), cat(1)
    p = annotator.preference_probability(CAT, a, b)
    assert p == pytest.approx(1 / (1 + math.exp(-(gold_score(CAT, a) - gold_score(CAT, b)) / 0.1)))
    share = statistics.mean(annotator.compare(CAT, a, b).chosen == a for _ in range(2000))
    assert abs(share - p) < 0.04
    biased = SimulatedAnnotator(temperature=0.1, length_bias=0.1)  # likes length
    assert annotator.preference_probability(CAT, cat(6), cat(3)) < 0.5
    assert biased.preference_probability(CAT, cat(6), cat(3)) > 0.5


def test_ratings_and_thumbs():
    exact = SimulatedAnnotator(temperature=0)
    best, poor = cat(3, THANKS), "The dog is very loyal. The dog is very loyal."
    assert exact.rate(CAT, best) == RatingRecord(CAT, best, 5.0, (1.0, 5.0))
    assert exact.rate(CAT, poor).score == 1.0
    assert exact.thumbs(CAT, best).label and not exact.thumbs(CAT, poor).label
    noisy = SimulatedAnnotator(temperature=0.2, careless=0.3, seed=5)
    scores = {noisy.rate(p, r).score for p, r in world.demonstrations(300, 5)}
    assert scores <= {1.0, 2.0, 3.0, 4.0, 5.0} and len(scores) == 5


def test_gold_ceiling_by_hand():
    right = PreferenceRecord(CAT, cat(3), cat(1))
    wrong = PreferenceRecord(CAT, cat(1), cat(3))
    tie = PreferenceRecord(CAT, "The cat is very soft.", "The cat is very lazy.")
    assert gold_score(CAT, tie.chosen) == gold_score(CAT, tie.rejected)
    assert gold_ceiling([right, wrong, tie], WorldGold()) == pytest.approx(0.5)
    assert gold_ceiling([right, right, tie, wrong], WorldGold()) == pytest.approx(2.5 / 4)


def test_label_groups_kinds_and_determinism():
    prompts = world.prompts(40, 6)
    groups = world.behaviour_groups(prompts, 4, 6)
    groups[0] = [cat(1)] * 3 + [cat(2)]  # duplicates are dropped from pairs and rankings
    pairs = label_groups(prompts, groups, "pairs", seed=6)
    expected = sum(math.comb(len(set(g)), 2) for g in groups)
    assert len(pairs) == expected and all(isinstance(r, PreferenceRecord) for r in pairs)
    assert all(r.chosen != r.rejected for r in pairs)
    assert pairs == label_groups(prompts, groups, "pairs", seed=6)
    expected = sum(min(2, math.comb(len(set(g)), 2)) for g in groups)
    assert len(label_groups(prompts, groups, "pairs", pairs_per_group=2, seed=6)) == expected
    rankings = label_groups(prompts, groups, "rankings", seed=6)
    assert len(rankings) == 40 and all(isinstance(r, RankingRecord) for r in rankings)
    assert len(rankings[0].responses) == 2
    assert len(label_groups(prompts, groups, "ratings")) == 160
    assert all(isinstance(r, BinaryRecord) for r in label_groups(prompts, groups, "binary"))
    with pytest.raises(ValueError, match="kind"):
        label_groups(prompts, groups, "scores")  # type: ignore[arg-type]


def test_pool_labels_are_noisy_but_informative():
    prompts = world.prompts(400, 7)
    pairs = label_groups(prompts, world.behaviour_groups(prompts, 4, 7), seed=7)
    accuracy = gold_ceiling(pairs, WorldGold())
    assert 0.65 < accuracy < 0.9
    one = AnnotatorPool([SimulatedAnnotator(temperature=0)], seed=1)
    assert (
        gold_ceiling(
            label_groups(prompts[:50], [[cat(1), cat(3)]] * 50, annotators=one), WorldGold()
        )
        == 1
    )
    assert default_pool(1).pick() is not None


def test_pool_built_from_settings():
    pool = AnnotatorPool.build(count=5, temperature=0.05, careless=0.1, bias=0.05, seed=3)
    assert len(pool.annotators) == 5
    assert {(a.temperature, a.careless) for a in pool.annotators} == {(0.05, 0.1)}
    assert len({a.length_bias for a in pool.annotators}) == 5  # personal biases
    plain = AnnotatorPool.build(count=2, temperature=0.1, seed=3)
    assert [a.length_bias for a in plain.annotators] == [0.0, 0.0]
    prompts = world.prompts(30, 3)
    groups = world.behaviour_groups(prompts, 4, 3)
    labels = pool.label_groups(prompts, groups, kind="rankings")
    assert labels == AnnotatorPool.build(5, 0.05, 0.1, 0.05, seed=3).label_groups(
        prompts, groups, kind="rankings"
    )
    assert all(isinstance(r, RankingRecord) for r in labels)


# ---------------------------------------------------------------- builtins


WORLD_BUILTINS = {
    "world-text": (TextRecord, 30),
    "world-sft": (CompletionRecord, 30),
    "world-prompts": (PromptRecord, 30),
    "world-preferences": (PreferenceRecord, 30),
    "world-rankings": (RankingRecord, 30),
    "world-ratings": (RatingRecord, 90),
    "world-binary": (BinaryRecord, 30),
}


@pytest.mark.parametrize("name", sorted(WORLD_BUILTINS))
def test_world_builtins_load_and_read_back(name, tmp_path):
    from rlhf.data.readers import read_records, write_records
    from rlhf.recipes.common import DataConfig, load_records

    kind, count = WORLD_BUILTINS[name]
    source = f"builtin:{name}?n=30&seed=2"
    records = load_builtin(source)
    assert len(records) == count and all(isinstance(r, kind) for r in records)
    assert records == load_builtin(source) != load_builtin(f"builtin:{name}?n=30&seed=3")
    assert load_records(source, DataConfig(train=source)) == records
    write_records(tmp_path / "rows.jsonl", records)  # the readers' checks pass every row
    assert read_records(tmp_path / "rows.jsonl").records == records


def test_world_prompts_feed_online_rl():
    from rlhf.rollout.candidates import load_prompts

    prompts = load_prompts("builtin:world-prompts?n=200")
    assert len(prompts) == len(set(prompts)) > 50  # distinct prompts, each naming a topic
    assert all(p.endswith("\n") and world.topic_of(p) for p in prompts)


def test_typical_response_fits_a_tiny_tokenizer_budget():
    from rlhf.models.tiny import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(world.corpus_text(2000), vocab_size=512)
    rng = random.Random(8)
    lengths = [
        len(tokenizer(world.sample_response(p, rng, sentences=3))["input_ids"])
        for p in world.prompts(200, 8)
    ]
    assert statistics.median(lengths) <= 40
    assert statistics.quantiles(lengths, n=10)[-1] <= 48  # nine in ten fit 48 tokens
