"""Pure functions of the feedback app: task labels (rlhf.feedback.tasks), campaign sources
(rlhf.feedback.campaigns) and the HTML of untrusted texts (rlhf.feedback.render)."""

from __future__ import annotations

import itertools
import json
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from rlhf.data.records import BinaryRecord, PreferenceRecord, RankingRecord, RatingRecord
from rlhf.feedback import render
from rlhf.feedback.campaigns import SourceError, items_from_row, parse_source
from rlhf.feedback.render import ALLOWED_TAGS, prompt_view, to_html
from rlhf.feedback.tasks import (
    EXPORT_FORMATS,
    TASK_TYPES,
    LabelError,
    agreement_units,
    check_gold,
    dense_ranks,
    export_records,
    matches_gold,
    normalise_label,
    shown_value,
)

# ------------------------------------------------------------------------ label normalising


@pytest.mark.parametrize(
    ("choice", "shown_better", "level"),
    [(1, 0, 3), (2, 0, 2), (3, 0, 1), (4, 0, 0), (5, 1, 0), (6, 1, 1), (7, 1, 2), (8, 1, 3)],
)
@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_pairwise_choice_in_original_order(
    order: list[int], choice: int, shown_better: int, level: int
) -> None:
    value = normalise_label("pairwise", {"choice": choice}, order)
    # "better" is the original index of the response shown on the chosen side
    assert value["better"] == order[shown_better]
    assert value["level"] == level
    # score: 1 = original response 0 much better ... 8 = original response 1 much better
    assert value["score"] == (choice if order == [0, 1] else 9 - choice)
    assert (value["score"] <= 4) == (value["better"] == 0)
    assert shown_value("pairwise", value, order) == {"choice": choice}


@pytest.mark.parametrize(
    ("ranks", "dense"),
    [
        ([1, 2], [0, 1]),
        ([2, 1, 3], [1, 0, 2]),
        ([1, 3, 3, 2], [0, 2, 2, 1]),
        ([5, 5, 1], [1, 1, 0]),
        ([9, 1, 4, 4, 1], [2, 0, 1, 1, 0]),
    ],
)
def test_dense_ranks(ranks: list[int], dense: list[int]) -> None:
    assert dense_ranks(ranks) == dense


def test_rank_in_original_order() -> None:
    # shown: responses 2, 0, 1 (in that order); ranked 3rd, 1st, 1st (a tie, then a gap)
    value = normalise_label("rank", {"ranks": [3, 1, 1]}, [2, 0, 1])
    assert value == {"ranks": [0, 0, 1]}  # responses 0 and 1 tie for best, 2 is next
    assert shown_value("rank", value, [2, 0, 1]) == {"ranks": [2, 1, 1]}  # dense, 1 = best


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_rank_normalising_is_a_relabelling(data: st.DataObject) -> None:
    size = data.draw(st.integers(2, 9))
    order = data.draw(st.permutations(range(size)))
    ranks = data.draw(
        st.lists(st.integers(1, size), min_size=size, max_size=size).filter(
            lambda r: len(set(r)) > 1
        )
    )
    stored = normalise_label("rank", {"ranks": ranks}, order)["ranks"]
    for position, index in enumerate(order):
        assert stored[index] == dense_ranks(ranks)[position]
    assert shown_value("rank", {"ranks": stored}, order) == {
        "ranks": [rank + 1 for rank in dense_ranks(ranks)]
    }


def test_other_tasks_store_the_value() -> None:
    assert normalise_label("rate", {"rating": 5, "client_id": "x"}, [0]) == {"rating": 5}
    assert normalise_label("thumbs", {"up": False}, [0]) == {"up": False}
    assert normalise_label("edit", {"text": " new "}, [0]) == {"text": " new "}


@pytest.mark.parametrize(
    ("task", "payload", "order", "message"),
    [
        ("pairwise", {"choice": 0}, [0, 1], "choice: 0 is outside 1..8"),
        ("pairwise", {"choice": 9}, [0, 1], "choice: 9 is outside 1..8"),
        ("pairwise", {"choice": "2"}, [0, 1], "choice: expected a whole number from 1 to 8"),
        ("pairwise", {"choice": True}, [0, 1], "choice: expected a whole number"),
        ("pairwise", {}, [0, 1], "choice: expected a whole number"),
        ("rank", {"ranks": [1, 2]}, [0, 1, 2], "ranks: expected a list of 3 ranks"),
        ("rank", {"ranks": None}, [0, 1], "ranks: expected a list of 2 ranks"),
        ("rank", {"ranks": [1, 1, 1]}, [0, 1, 2], "ranks: all responses tied"),
        ("rank", {"ranks": [1, 4, 2]}, [0, 1, 2], "ranks[1]: expected 1..3, got 4"),
        ("rank", {"ranks": [1, True]}, [0, 1], "ranks[1]: expected 1..2"),
        ("rate", {"rating": 6}, [0], "rating: 6 is outside 1..5"),
        ("rate", {"rating": 4.5}, [0], "rating: expected a whole number from 1 to 5"),
        ("thumbs", {"up": "yes"}, [0], "up: expected true or false, got 'yes'"),
        ("thumbs", {}, [0], "up: expected true or false, got None"),
        ("edit", {"text": "  "}, [0], "text: the edited response is empty"),
        ("edit", {}, [0], "text: the edited response is empty"),
        ("chat", {"choice": 0}, [], "chat tasks are labelled turn by turn"),
    ],
)
def test_bad_labels_name_the_field(
    task: str, payload: dict, order: list[int], message: str
) -> None:
    with pytest.raises(LabelError) as caught:
        normalise_label(task, payload, order)
    assert message in str(caught.value)


# ------------------------------------------------------------------------------ gold answers


def test_gold_answers_checked_per_task() -> None:
    assert check_gold("pairwise", None, 2, "g") is None
    assert check_gold("pairwise", 1, 2, "g") == 1
    assert check_gold("rank", 3, 4, "g") == 3
    assert check_gold("rate", 5, 1, "g") == 5
    assert check_gold("thumbs", False, 1, "g") is False
    bad = [
        ("pairwise", 2, 2, "the index of the best response (0..1)"),
        ("pairwise", -1, 2, "the index of the best response"),
        ("pairwise", True, 2, "the index of the best response"),
        ("rank", 4, 4, "(0..3)"),
        ("rate", 0, 1, "a rating 1..5"),
        ("rate", 3.0, 1, "a rating 1..5"),
        ("thumbs", 1, 1, "true (thumbs up) or false"),
        ("edit", "text", 1, "edit tasks take no gold answer"),
        ("chat", 0, 0, "chat tasks take no gold answer"),
    ]
    for task, gold, n, message in bad:
        with pytest.raises(LabelError, match=r"^line 4: gold: ") as caught:
            check_gold(task, gold, n, "line 4: gold")
        assert message in str(caught.value), (task, gold)


def test_labels_matched_against_gold() -> None:
    assert matches_gold("pairwise", {"better": 1, "level": 2, "score": 7}, 1)
    assert not matches_gold("pairwise", {"better": 0, "level": 2, "score": 2}, 1)
    assert matches_gold("rank", {"ranks": [1, 0, 0]}, 2)  # tied for best counts
    assert not matches_gold("rank", {"ranks": [1, 0, 2]}, 0)
    assert matches_gold("rate", {"rating": 4}, 4) and not matches_gold("rate", {"rating": 3}, 4)
    assert matches_gold("thumbs", {"up": False}, False)
    assert not matches_gold("thumbs", {"up": True}, False)
    with pytest.raises(LabelError):
        matches_gold("edit", {"text": "x"}, "x")


# -------------------------------------------------------------------------------- agreement


def test_agreement_units_per_task() -> None:
    pairwise = agreement_units("pairwise", {1: [{"score": 2}, {"score": 3}]})
    assert (pairwise.level, pairwise.units) == ("interval", [[2, 3]])
    rank = agreement_units("rank", {1: [{"ranks": [0, 1, 1]}, {"ranks": [1, 0, 2]}]})
    # pairs (0,1), (0,2), (1,2): sign of rank difference per annotator
    assert (rank.level, rank.units) == ("ordinal", [[-1, 1], [-1, -1], [0, -1]])
    rate = agreement_units("rate", {1: [{"rating": 4}, {"rating": 5}], 2: [{"rating": 1}]})
    assert (rate.level, rate.units) == ("ordinal", [[4, 5], [1]])
    thumbs = agreement_units("thumbs", {1: [{"up": True}, {"up": False}]})
    assert (thumbs.level, thumbs.units) == ("nominal", [[True, False]])
    assert agreement_units("edit", {1: [{"text": "a"}, {"text": "b"}]}).units == []


# ----------------------------------------------------------------------------------- export


def test_export_records_per_task() -> None:
    (pair,) = export_records(
        "pairwise", "preference", "p", ["a", "b"], {"better": 1, "level": 2, "score": 7}
    )
    assert pair == PreferenceRecord("p", "b", "a", margin=2.0)
    (ranking,) = export_records("rank", "ranking", "p", ["a", "b", "c"], {"ranks": [1, 0, 1]})
    assert ranking == RankingRecord("p", ("a", "b", "c"), (1, 0, 1))
    pairs = list(export_records("rank", "preference", "p", ["a", "b", "c"], {"ranks": [1, 0, 1]}))
    assert {(r.chosen, r.rejected) for r in pairs} == {("b", "a"), ("b", "c")}  # no tie pair
    (rating,) = export_records("rate", "rating", "p", ["a"], {"rating": 2})
    assert rating == RatingRecord("p", "a", 2.0, (1, 5))
    (binary,) = export_records("thumbs", "binary", "p", ["a"], {"up": True})
    assert binary == BinaryRecord("p", "a", True)
    unchanged = {"text": " a "}
    assert [r.kind for r in export_records("edit", "completion", "p", ["a"], unchanged)] == [
        "completion"
    ]
    assert list(export_records("edit", "preference", "p", ["a"], unchanged)) == []
    assert list(export_records("edit", "edit", "p", ["a"], unchanged)) == []
    (edit,) = export_records("edit", "edit", "p", ["a"], {"text": "b"})
    assert (edit.original, edit.edited) == ("a", "b")
    with pytest.raises(LabelError, match="format: rate campaigns export as rating"):
        list(export_records("rate", "binary", "p", ["a"], {"rating": 2}))


def test_every_task_has_export_formats() -> None:
    assert set(EXPORT_FORMATS) == set(TASK_TYPES)
    assert all(EXPORT_FORMATS[task] for task in TASK_TYPES)


# ---------------------------------------------------------------------------- source parsing


def source_error(task: str, text: str) -> str:
    with pytest.raises(SourceError) as caught:
        parse_source(task, text)
    return str(caught.value)


GOOD = json.dumps({"prompt": "p", "responses": ["a", "b"]})


@pytest.mark.parametrize(
    ("task", "text", "message"),
    [
        ("pairwise", GOOD + "\n{oops", "line 2: not JSON"),
        ("pairwise", GOOD + "\n\n   \n[]", "line 4: expected a JSON object, got list"),
        ("rate", '{"response": "a"}', "line 1: prompt: missing"),
        ("rate", '{"prompt": 3, "response": "a"}', "line 1: prompt: expected text or a list of messages, got int"),
        ("rate", '{"prompt": [], "response": "a"}', "line 1: prompt: expected text or a list of messages, got list"),
        ("rate", '{"prompt": "", "response": "a"}', "line 1: prompt: empty"),
        ("rate", '{"prompt": [{"role": "user", "content": "x", "name": "n"}], "response": "a"}', "line 1: prompt[0]: expected a message"),
        ("rate", '{"prompt": [{"role": "user", "content": 1}], "response": "a"}', "line 1: prompt[0]: role must be one of"),
        ("rate", '{"prompt": "p"}', "line 1: responses: missing"),
        ("rate", '{"prompt": "p", "responses": "a"}', "line 1: responses: expected a non-empty list of strings"),
        ("rate", '{"prompt": "p", "responses": []}', "line 1: responses: expected a non-empty list of strings"),
        ("rate", '{"prompt": "p", "responses": ["a", null]}', "line 1: responses[1]: expected a string, got NoneType"),
        ("rank", '{"prompt": "p", "responses": ["a"]}', "line 1: responses: a rank task takes 2 to 9"),
        ("rank", json.dumps({"prompt": "p", "responses": list("abcdefghij")}), "line 1: responses: a rank task takes 2 to 9"),
        ("pairwise", '{"prompt": "p", "response": "a"}', "line 1: responses: a pairwise task needs at least 2"),
        ("pairwise", '{"prompt": "p", "responses": ["a", "b", "c"], "gold": 0}', "line 1: gold: give gold only for rows of exactly 2"),
        ("pairwise", '{"prompt": "p", "responses": ["a", "b"], "gold": 2}', "line 1: gold: the index of the best response (0..1)"),
        ("rank", '{"prompt": "p", "responses": ["a", "b", "c"], "gold": -1}', "line 1: gold: the index of the best response (0..2)"),
        ("rate", '{"prompt": "p", "responses": ["a", "b"], "gold": [5]}', "line 1: gold: one answer per response (2)"),
        ("chat", '{"prompt": "hi", "gold": 1}', "line 1: gold: chat tasks take no gold answer"),
        ("chat", '{"opening": "hi"}', "line 1: prompt: missing"),
        ("thumbs", "", "the source has no rows"),
    ],
)  # fmt: skip
def test_source_errors_name_line_and_field(task: str, text: str, message: str) -> None:
    error = source_error(task, text)
    assert message in error, error
    if "line" in message:
        assert error.startswith(message.split(":")[0] + ":")


def test_per_response_gold_errors_name_the_response() -> None:
    error = source_error("rate", '{"prompt": "p", "responses": ["a", "b"], "gold": [5, 9]}')
    assert error.startswith("line 1: gold[1]") and "a rating 1..5" in error
    error = source_error("thumbs", '{"prompt": "p", "response": "a", "gold": "yes"}')
    assert error.startswith("line 1: gold[0]") and "true (thumbs up) or false" in error


def test_per_response_gold_error_names_the_field_once() -> None:
    error = source_error("rate", '{"prompt": "p", "responses": ["a", "b"], "gold": [5, 9]}')
    assert error == "line 1: gold[1]: a rating 1..5"


def test_too_many_items() -> None:
    text = "\n".join([json.dumps({"prompt": "p", "responses": list("abc")})] * 3)
    assert len(parse_source("rate", text, max_items=9)) == 9
    assert source_error_with_limit("rate", text, 8) == "line 3: more than 8 items in one campaign"


def source_error_with_limit(task: str, text: str, limit: int) -> str:
    with pytest.raises(SourceError) as caught:
        parse_source(task, text, max_items=limit)
    return str(caught.value)


def test_pairwise_expands_to_all_pairs() -> None:
    row = {"prompt": "p", "responses": ["a", "b", "c", "d"], "model": "ignored"}
    items = list(items_from_row("pairwise", row, 7))
    assert [item.responses for item in items] == [
        [row["responses"][i], row["responses"][j]] for i, j in itertools.combinations(range(4), 2)
    ]
    assert [item.source for item in items] == [
        {"line": 7, "responses": [i, j]} for i, j in itertools.combinations(range(4), 2)
    ]
    assert all(item.prompt == "p" and item.gold is None for item in items)
    (gold_pair,) = items_from_row(
        "pairwise", {"prompt": "p", "responses": ["x", "y"], "gold": 1}, 1
    )
    assert gold_pair.gold == 1


def test_items_per_row_of_each_task() -> None:
    text = "\n".join(
        json.dumps(row)
        for row in [
            {"prompt": "p1", "responses": ["a", "b", "c"]},
            {"prompt": [{"role": "user", "content": "p2"}], "response": "d"},
        ]
    )
    with pytest.raises(SourceError):  # the second row has one response
        parse_source("rank", text)
    assert len(parse_source("pairwise", text.splitlines()[0])) == 3
    for task in ("rate", "thumbs", "edit"):
        items = parse_source(task, text)
        assert [item.responses for item in items] == [["a"], ["b"], ["c"], ["d"]]
        assert [item.source for item in items] == [
            {"line": 1, "responses": [0]}, {"line": 1, "responses": [1]},
            {"line": 1, "responses": [2]}, {"line": 2, "responses": [0]},
        ]  # fmt: skip
        assert items[3].prompt == [{"role": "user", "content": "p2"}]
    golds = parse_source(
        "thumbs", '{"prompt": "p", "responses": ["a", "b"], "gold": [true, false]}'
    )
    assert [item.gold for item in golds] == [True, False]
    same = parse_source("rate", '{"prompt": "p", "responses": ["a", "b"], "gold": 4}')
    assert [item.gold for item in same] == [4, 4]
    (completion,) = parse_source("edit", '{"prompt": "p", "completion": "c"}')
    assert completion.responses == ["c"]


REPEAT = "an annotator cannot prefer a response to itself (remove the repeat)"


@pytest.mark.parametrize(
    ("task", "responses", "message"),
    [
        ("pairwise", ["a", "a"], "line 2: responses[1]: the same text as responses[0]"),
        ("pairwise", ["a", "b", "c", "b"], "line 2: responses[3]: the same text as responses[1]"),
        ("pairwise", ["a", " a\n"], "line 2: responses[1]: the same text as responses[0]"),
        ("rank", ["x", "y", "x"], "line 2: responses[2]: the same text as responses[0]"),
    ],
)
def test_identical_responses_to_compare_are_refused_naming_the_line(
    task: str, responses: list[str], message: str
) -> None:
    """Issue 14: a pairwise item of two identical responses was accepted, and its export
    (chosen = rejected) was refused by rm and dpo."""
    text = GOOD + "\n" + json.dumps({"prompt": "p", "responses": responses})
    assert source_error(task, text) == f"{message}; {REPEAT}"


def test_repeated_responses_rated_one_at_a_time_are_fine() -> None:
    for task in ("rate", "thumbs", "edit"):
        assert len(parse_source(task, '{"prompt": "p", "responses": ["a", "a"]}')) == 2


def test_identical_pairs_already_stored_export_no_preference() -> None:
    """Campaigns made before identical pairs were refused, and chat turns where the model
    said the same twice, give no chosen = rejected row."""
    value = {"better": 0, "level": 1, "score": 3}
    assert list(export_records("pairwise", "preference", "p", ["a", "a "], value)) == []
    turn = {"messages": [{"role": "user", "content": "hi"}], "candidates": ["yo", "yo"]}
    assert list(export_records("chat", "preference", "", [], {"chosen": 0}, turn)) == []
    (conversation,) = export_records("chat", "conversation", "", [], {"chosen": 0}, turn)
    assert conversation.kind == "conversation"


def test_chat_rows() -> None:
    items = parse_source(
        "chat", '{"prompt": "Hello"}\n{"prompt": ""}\n{"prompt": "x", "responses": [1]}'
    )
    assert [(item.prompt, item.responses) for item in items] == [("Hello", []), ("", []), ("x", [])]
    assert [item.source for item in items] == [{"line": 1}, {"line": 2}, {"line": 3}]


# ---------------------------------------------------------------------------------- render


class Tags(HTMLParser):
    """Every start tag with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags_of(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(html)
    return parser.tags


def assert_safe(html: str) -> None:
    for tag, attrs in tags_of(html):
        assert tag in ALLOWED_TAGS, (tag, html)
        for name, value in attrs.items():
            assert (tag, name) in (("a", "href"), ("a", "rel")), (tag, name, html)
            assert not (value or "").strip().lower().startswith(("javascript:", "data:")), html


ATTACKS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '<a href="javascript:alert(1)" onclick="alert(2)">x</a>',
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click]( javascript:alert(1) )",
    "<javascript:alert(1)>",
    "[d](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    '<p style="color:red" onmouseover="alert(1)">hi</p>',
    "<iframe src=https://evil.example></iframe>",
    "![x](https://evil.example/track.png)",
    '<svg onload="alert(1)"></svg>',
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_markdown_drops_scripts_handlers_and_javascript_links(attack: str) -> None:
    html = to_html(attack, "markdown")
    assert_safe(html)
    assert "<script" not in html and "<img" not in html and "<iframe" not in html


@pytest.mark.parametrize("attack", ATTACKS)
def test_sanitiser_catches_raw_html_even_if_markdown_passed_it(
    attack: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the second layer: were raw HTML switched on, nh3 would still clean it
    monkeypatch.setattr(render, "_markdown", lambda: MarkdownIt("commonmark", {"html": True}))
    html = to_html(attack, "markdown")
    assert_safe(html)
    assert "<script" not in html and "<img" not in html and "<iframe" not in html
    if attack.startswith(("<script", "<img", "<a ", "<p ", "<iframe", "<svg")):
        # raw HTML: cleaned, not shown as text, and a script's content goes with it
        assert "alert" not in html and "&lt;" not in html, html


def test_markdown_keeps_formatting_and_safe_links() -> None:
    html = to_html("**bold** _em_ `code`\n\n- item\n\n[site](https://example.com)", "markdown")
    assert [tag for tag, _ in tags_of(html)] == ["p", "strong", "em", "code", "ul", "li", "p", "a"]
    assert tags_of(html)[-1][1] == {
        "href": "https://example.com", "rel": "noopener noreferrer nofollow",
    }  # fmt: skip
    assert "<table>" in to_html("| a | b |\n|---|---|\n| 1 | 2 |", "markdown")
    assert 'href="mailto:a@b.c"' in to_html("[m](mailto:a@b.c)", "markdown")


def test_text_mode_escapes_everything() -> None:
    text = "<script>alert('x')</script> & \"<b>bold</b>\" **not markdown**"
    html = to_html(text)
    assert html == (
        "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; "
        "&quot;&lt;b&gt;bold&lt;/b&gt;&quot; **not markdown**"
    )
    assert tags_of(html) == [] and to_html(text, "text") == html
    assert to_html("line 1\nline 2") == "line 1\nline 2"  # the page keeps breaks with CSS


def test_prompt_view() -> None:
    assert prompt_view("<hi>", "text") == [{"role": "user", "text": "<hi>", "html": "&lt;hi&gt;"}]
    messages = [{"role": "system", "content": "*be* brief"}, {"role": "user", "content": "q"}]
    view = prompt_view(messages, "markdown")
    assert [(m["role"], m["text"]) for m in view] == [("system", "*be* brief"), ("user", "q")]
    assert view[0]["html"] == "<p><em>be</em> brief</p>\n"
