"""Conversions: implicit prompts, rankings and ratings to pairs, binary feedback, edits."""

from __future__ import annotations

import pytest

from rlhf.data.convert import (
    as_demonstrations,
    as_preferences,
    binary_to_pairs,
    edit_to_demonstration,
    edit_to_pair,
    extract_implicit_prompt,
    preference_to_binary,
    ranking_to_pairs,
    ratings_to_pairs,
)
from rlhf.data.errors import DataError
from rlhf.data.records import (
    BinaryRecord,
    CompletionRecord,
    ConversationRecord,
    EditRecord,
    Message,
    PreferenceRecord,
    PromptRecord,
    RankingRecord,
    RatingRecord,
    TextRecord,
)

U1, U2 = Message("user", "Hi"), Message("user", "Tell me more")
A1, A2, A3 = Message("assistant", "Hello"), Message("assistant", "Sure"), Message("assistant", "No")


# --- implicit prompts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chosen", "rejected", "prompt"),
    [
        # HH-RLHF: cut after the last "\n\nAssistant:" even when the replies share a first word
        (
            "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: More?\n\nAssistant: I can help.",
            "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: More?\n\nAssistant: I won't.",
            "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: More?\n\nAssistant:",
        ),
        # chat templates
        (
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello there",
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHey",
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        ),
        (
            "<|user|>\nHi\n<|assistant|>\nYes",
            "<|user|>\nHi\n<|assistant|>\nNo",
            "<|user|>\nHi\n<|assistant|>\n",
        ),
        ("[INST] Hi [/INST] Yes", "[INST] Hi [/INST] No", "[INST] Hi [/INST]"),
        # no header: the last newline, else the last whitespace
        ("Q: 2+2?\nA: 4", "Q: 2+2?\nA: 5", "Q: 2+2?\n"),
        ("The sky is blue.", "The sky is green.", "The sky is "),
        ("Yes", "No", ""),
    ],
)
def test_implicit_prompt_of_strings(chosen, rejected, prompt):
    found, chosen_rest, rejected_rest = extract_implicit_prompt(chosen, rejected)
    assert found == prompt
    assert found + chosen_rest == chosen and found + rejected_rest == rejected


def test_implicit_prompt_of_conversations():
    prompt, chosen, rejected = extract_implicit_prompt((U1, A1, U2, A2), (U1, A1, U2, A3))
    assert (prompt, chosen, rejected) == ((U1, A1, U2), (A2,), (A3,))


@pytest.mark.parametrize(
    ("chosen", "rejected", "reason"),
    [
        ("same", "same", "chosen_equals_rejected"),
        ("a b\n", "a b\nc", "empty_response"),  # nothing remains of chosen
        ((U1, A1), (U1, A1, U2, A2), "empty_response"),
        ("text", (U1,), "mixed_formats"),
    ],
)
def test_implicit_prompt_failures(chosen, rejected, reason):
    with pytest.raises(DataError) as caught:
        extract_implicit_prompt(chosen, rejected)
    assert caught.value.reason == reason


# --- rankings and ratings -------------------------------------------------------------------


def test_ranking_gives_all_ordered_pairs_with_rank_margins():
    ranking = RankingRecord("Q", ("c", "a", "b", "d"), (2, 0, 1, 3))
    pairs = ranking_to_pairs(ranking)
    assert len(pairs) == 4 * 3 // 2
    got = {(p.chosen, p.rejected): p.margin for p in pairs}
    assert got == {
        ("a", "c"): 2.0, ("b", "c"): 1.0, ("c", "d"): 1.0,
        ("a", "b"): 1.0, ("a", "d"): 3.0, ("b", "d"): 2.0,
    }  # fmt: skip
    assert all(p.prompt == "Q" for p in pairs)


def test_ranking_ties_give_no_pair():
    pairs = ranking_to_pairs(RankingRecord("Q", ("a", "b", "c"), (0, 0, 1)))
    assert {(p.chosen, p.rejected) for p in pairs} == {("a", "c"), ("b", "c")}


def test_ratings_pair_within_a_prompt_with_score_margins():
    scale = (1.0, 5.0)
    ratings = [
        RatingRecord("Q1", "ok", 3.0, scale),
        RatingRecord("Q2", "only", 5.0, scale),  # alone: no pair
        RatingRecord("Q1", "great", 5.0, scale),
        RatingRecord("Q1", "also ok", 3.0, scale),  # ties "ok"
    ]
    pairs = ratings_to_pairs(ratings)
    assert {(p.chosen, p.rejected, p.margin) for p in pairs} == {
        ("great", "ok", 2.0),
        ("great", "also ok", 2.0),
    }
    with_ties = ratings_to_pairs(ratings, keep_ties=True)
    assert len(with_ties) == 3
    tie = next(p for p in with_ties if p.margin == 0.0)
    assert {tie.chosen, tie.rejected} == {"ok", "also ok"}


def test_ratings_on_different_scales_are_not_compared():
    with pytest.raises(DataError, match="different scales"):
        ratings_to_pairs([RatingRecord("Q", "a", 1, (0, 1)), RatingRecord("Q", "b", 3, (1, 5))])


# --- binary, edits, and the catch-alls ------------------------------------------------------


def test_preference_to_binary_and_back():
    pair = PreferenceRecord("Q", "good", "bad")
    binaries = preference_to_binary(pair)
    assert binaries == [BinaryRecord("Q", "good", True), BinaryRecord("Q", "bad", False)]
    assert binary_to_pairs(binaries) == [pair]


def test_edit_is_a_pair_and_a_demonstration():
    edit = EditRecord((U1,), (A3,), (A1,))
    assert edit_to_pair(edit) == PreferenceRecord((U1,), (A1,), (A3,))
    assert edit_to_demonstration(edit) == CompletionRecord((U1,), (A1,))
    with pytest.raises(DataError, match="unchanged edit"):
        edit_to_pair(EditRecord("Q", "same", "same"))


def test_as_preferences_converts_everything_that_orders_responses():
    records = [
        PreferenceRecord("P", "a", "b"),
        RankingRecord("R", ("x", "y", "z"), (0, 1, 2)),
        RatingRecord("S", "lo", 1.0, (1.0, 5.0)),
        RatingRecord("S", "hi", 4.0, (1.0, 5.0)),
        BinaryRecord("B", "up", True),
        BinaryRecord("B", "down", False),
        EditRecord("E", "old", "new"),
        EditRecord("E", "kept", "kept"),  # unchanged: no preference
    ]
    pairs = as_preferences(records)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        ("P", "a", "b"),
        ("R", "x", "y"),
        ("R", "x", "z"),
        ("R", "y", "z"),
        ("E", "new", "old"),
        ("S", "hi", "lo"),
        ("B", "up", "down"),
    ]
    with pytest.raises(DataError, match="cannot make preference pairs from a completion record"):
        as_preferences([CompletionRecord("Q", "a")])


def test_as_demonstrations():
    conversation = ConversationRecord((U1, A1))
    records = [
        CompletionRecord("Q", "a"),
        conversation,
        EditRecord("E", "old", "new"),
        PreferenceRecord("P", "good", "bad"),
        BinaryRecord("B", "up", True),
        BinaryRecord("B", "down", False),
    ]
    assert as_demonstrations(records) == [
        CompletionRecord("Q", "a"),
        conversation,
        CompletionRecord("E", "new"),
        CompletionRecord("P", "good"),
        CompletionRecord("B", "up"),
    ]
    for record in (TextRecord("t"), PromptRecord("p")):
        with pytest.raises(DataError) as caught:
            as_demonstrations([record])
        assert caught.value.reason == "not_convertible"
