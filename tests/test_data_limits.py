"""Data at its limits: rows of tens of MB cost what max_length tokens cost, `rlhf data check`
shows a bounded part of them, and empty sources and invalid Unicode are errors naming the file,
the line and the field."""

from __future__ import annotations

import json
import random
import tracemalloc

import pytest
from typer.testing import CliRunner

import rlhf.data.tokenize as tokenize_module
from rlhf.cli import app
from rlhf.data.check import SHOWN_CHARS, SHOWN_ITEMS, check_data
from rlhf.data.errors import DataError
from rlhf.data.pairs import tokenize_for_reward
from rlhf.data.preference import PairText, tokenize_pairs
from rlhf.data.readers import read_records
from rlhf.data.records import (
    CompletionRecord,
    ConversationRecord,
    Message,
    PreferenceRecord,
    RankingRecord,
    TextRecord,
)
from rlhf.data.tokenize import (
    CUT_MARGIN_TOKENS,
    TooLongError,
    longest_token_chars,
    tokenize_prompt_response,
    tokenize_record,
)

from .conftest import STORIES, sample_texts

HUGE = 30_000_000  # characters of the huge rows below


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})  # no wrapped lines


# ------------------------------------------------------------------ tokenizers of three kinds


def wordpiece_tokenizer():
    """A BERT-style tokenizer: it drops whitespace and accents, and one [UNK] stands for a whole
    long word, so text may give far fewer tokens than its longest vocabulary entry suggests."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(strip_accents=True, lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials)
    tokenizer.train_from_iterator(sample_texts(), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )


@pytest.fixture(scope="module", params=["bpe", "sentencepiece", "wordpiece"])
def tokenizer(request, tiny_tokenizer):
    if request.param == "bpe":
        return tiny_tokenizer  # byte-level BPE, no BOS, EOS after plain text
    if request.param == "sentencepiece":
        if not STORIES.exists():
            pytest.skip(f"{STORIES} is absent")
        from rlhf.models.load import load_tokenizer

        return load_tokenizer(str(STORIES))  # Llama 2 style: BOS, ▁ for spaces, byte fallback
    return wordpiece_tokenizer()


# ------------------------------------------------------- cutting keeps the tokens it must keep

WORDS = ["the", "cat", "sat", "on", "a", "mat", "12", "+", "30", "=", "42", ";", "déjà", "vu", "日本語", "🙂", "naïve\n"]  # fmt: skip


def words(rng: random.Random, chars: int) -> str:
    text = ""
    while len(text) < chars:
        text += rng.choice(WORDS) + rng.choice([" ", " ", "  ", "\n", ""])
    return text[:chars]


def uncut(monkeypatch):
    """Tokenisation as it was before cutting: the whole text, truncated in tokens."""
    monkeypatch.setattr(tokenize_module, "cut_text", lambda tokenizer, text, *_: text)


def budget(tokenizer, max_length: int) -> int:
    """Characters kept of a text when cut for ``max_length`` tokens."""
    return (max_length + CUT_MARGIN_TOKENS) * longest_token_chars(tokenizer)


def both_ways(monkeypatch, compute):
    cut = compute()
    with monkeypatch.context() as patch:
        uncut(patch)
        whole = compute()
    return cut, whole


MAX_LENGTH = 24


def near_budget_texts(tokenizer, seed: int) -> list[str]:
    """Texts a little shorter and a little longer than the cut, so some are cut and some not."""
    rng = random.Random(seed)
    chars = budget(tokenizer, MAX_LENGTH)
    return [words(rng, chars + extra) for extra in (-3, 1, 17, 200, 3 * chars)]


@pytest.mark.parametrize("seed", range(3))
def test_plain_rows_tokenise_as_if_whole(tokenizer, monkeypatch, seed):
    texts = near_budget_texts(tokenizer, seed)
    for long in texts:
        for prompt, response in ((long, "42"), ("What is 1 + 1?\n", long), (long, long[::-1])):
            cut, whole = both_ways(
                monkeypatch,
                lambda p=prompt, r=response: tokenize_prompt_response(tokenizer, p, r, MAX_LENGTH),
            )
            assert cut == whole
            record = TextRecord(long)
            cut, whole = both_ways(
                monkeypatch, lambda r=record: tokenize_record(tokenizer, r, MAX_LENGTH)
            )
            assert cut == whole


@pytest.mark.parametrize("seed", range(3))
def test_chat_rows_tokenise_as_if_whole(tokenizer, monkeypatch, seed):
    long = near_budget_texts(tokenizer, seed)
    rng = random.Random(seed)
    for text in long:
        system, question = Message("system", text), Message("user", text[::-1])
        answer = Message("assistant", words(rng, len(text)))
        short_q, short_a = Message("user", "What is 1 + 1?"), Message("assistant", "2")
        rows = [
            CompletionRecord((system, short_q), (short_a,)),
            CompletionRecord((short_q,), (answer,)),
            CompletionRecord((system, question), (answer,)),
            ConversationRecord((system, short_q, short_a, question, answer)),
            ConversationRecord((short_q, answer, question, short_a)),
            TextRecord((question, answer)),
        ]
        for record in rows:
            cut, whole = both_ways(
                monkeypatch, lambda r=record: tokenize_record(tokenizer, r, MAX_LENGTH)
            )
            assert cut == whole


def test_pairs_and_reward_sequences_tokenise_as_if_whole(tokenizer, monkeypatch):
    long = near_budget_texts(tokenizer, 7)
    pairs = [PairText(text, "12", text[: len(text) // 2]) for text in long]
    pairs += [
        PairText(
            (Message("user", text),), (Message("assistant", "1"),), (Message("assistant", text),)
        )
        for text in long
    ]
    cut, whole = both_ways(monkeypatch, lambda: tokenize_pairs(tokenizer, pairs, MAX_LENGTH))
    assert cut == whole
    for text in long:
        cut, whole = both_ways(
            monkeypatch, lambda t=text: tokenize_for_reward(tokenizer, t, t[::-1], MAX_LENGTH)
        )
        assert cut == whole


def test_text_that_gives_few_tokens_is_cut_wider(monkeypatch):
    """WordPiece drops whitespace and reads a word over 100 characters as one [UNK]: a cut at
    the usual budget would hold too few tokens, so it widens until it holds enough."""
    tokenizer = wordpiece_tokenizer()
    chars = budget(tokenizer, MAX_LENGTH)
    prompts = [
        "What is 1 + 1?" + " " * (5 * chars) + "the cat sat on a mat",
        "cat " * 10 + "x" * (3 * chars) + " then 12 + 30 = 42",
        "é" * 4 * chars + " 12 + 30",
    ]
    for prompt in prompts:
        for record in (CompletionRecord(prompt, "42"), CompletionRecord("Q", prompt)):
            cut, whole = both_ways(
                monkeypatch, lambda r=record: tokenize_record(tokenizer, r, MAX_LENGTH)
            )
            assert cut == whole


def test_drop_skips_cut_rows_without_tokenising_them_whole(tiny_tokenizer):
    long = "word " * budget(tiny_tokenizer, MAX_LENGTH)
    with pytest.raises(TooLongError):
        tokenize_prompt_response(tiny_tokenizer, long, "2", MAX_LENGTH, truncation="drop")
    with pytest.raises(TooLongError):
        tokenize_record(tiny_tokenizer, TextRecord(long), MAX_LENGTH, truncation="drop")


# ----------------------------------------------------- a huge row costs what max_length costs


@pytest.fixture
def tokenizer_inputs(tiny_tokenizer, monkeypatch):
    """The longest text handed to the tokenizer or its chat template, in characters."""
    seen = [0]
    cls = type(tiny_tokenizer)
    call, template = cls.__call__, cls.apply_chat_template

    def spy_call(self, text, *args, **kwargs):
        seen[0] = max(seen[0], len(text))
        return call(self, text, *args, **kwargs)

    def spy_template(self, messages, *args, **kwargs):
        seen[0] = max(seen[0], sum(len(m["content"]) for m in messages))
        return template(self, messages, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", spy_call)
    monkeypatch.setattr(cls, "apply_chat_template", spy_template)
    return seen


def peak_bytes(work) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_huge_row_is_cut_before_tokenisation(tiny_tokenizer, tokenizer_inputs):
    tok = tiny_tokenizer
    huge = "the cat sat on a mat. " * (HUGE // 22)
    question, two, three = (
        Message("user", "1 + 1?"),
        Message("assistant", "2"),
        Message("assistant", "3"),
    )
    chat = (Message("system", huge), question)
    sft = CompletionRecord(huge + "1 + 1?", "2")
    sft_long = CompletionRecord("1 + 1?", huge)
    text = TextRecord(huge)
    conversation = ConversationRecord((*chat, Message("assistant", huge)))
    pairs = [PairText(huge, "2", "3")]
    chat_pairs = [PairText(chat, (two,), (three,))]
    limit = 1_000_000  # bytes: the text is 30 MB; tokenised whole, its encoding takes GBs
    cases = {
        "sft": lambda: tokenize_record(tok, sft, 48),
        "sft long answer": lambda: tokenize_record(tok, sft_long, 48),
        "text": lambda: tokenize_record(tok, text, 48),
        "chat": lambda: tokenize_record(tok, conversation, 48),
        "dpo": lambda: tokenize_pairs(tok, pairs, 48),
        "dpo chat": lambda: tokenize_pairs(tok, chat_pairs, 48),
        "reward": lambda: tokenize_for_reward(tok, "1 + 1?", huge, 48),
    }
    for name, work in cases.items():
        tokenizer_inputs[0] = 0
        peak = peak_bytes(work)
        assert peak < limit, f"{name}: {peak:,} bytes"
        assert tokenizer_inputs[0] < 20 * budget(tok, 48), name
    example = tokenize_record(tok, CompletionRecord(huge + "What is 1 + 1?\n", "2"), 48)
    assert len(example) == 48 and tok.decode(example.input_ids).endswith("What is 1 + 1?\n2<|eos|>")


# --------------------------------------------------------------------- rlhf data check, bounded


def test_data_check_shows_a_bounded_part_of_huge_rows(tmp_path, tiny_tokenizer, tokenizer_inputs):
    path = tmp_path / "huge.jsonl"
    huge = "x" * HUGE
    rows = [
        {"prompt": huge, "chosen": "a" + huge, "rejected": "b"},
        {"messages": [{"role": "user", "content": str(i)} for i in range(SHOWN_ITEMS + 30)]},
        {"prompt": "Q", "responses": [str(i) for i in range(SHOWN_ITEMS + 5)]},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for tokenizer in (None, tiny_tokenizer):
        report = check_data(path, tokenizer=tokenizer)
        assert report.loaded == 3 and report.ok
        shown = [text for _, text in report.examples]
        assert all(len(text) < 20 * SHOWN_CHARS for text in shown)
        assert f"prompt: {HUGE - SHOWN_CHARS:,} more characters not shown" in shown[0]
        assert f"chosen: {HUGE + 1 - SHOWN_CHARS:,} more characters not shown" in shown[0]
        assert "messages: 30 more messages not shown" in shown[1]
        assert "responses: 5 more responses not shown" in shown[2]
    assert tokenizer_inputs[0] <= 2 * SHOWN_CHARS + 100
    result = invoke("data", "check", str(path))
    assert result.exit_code == 0, result.output[-2000:]
    assert len(result.output) < HUGE // 100  # the panels pad their lines to 400 columns


# ------------------------------------------------------------------- empty sources are errors


def empty_parquet(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)


EMPTY = {
    "empty.jsonl": "",
    "blank.jsonl": "  \n\n\t\n",
    "header.csv": "prompt,chosen,rejected\n",
    "header.tsv": "prompt\tcompletion\n",
    "empty.csv": "",
    "list.json": "[]",
    "data.json": '{"data": []}',
    "empty.parquet": empty_parquet,
}


@pytest.mark.parametrize("name", EMPTY)
def test_a_source_without_rows_is_an_error_naming_it(tmp_path, name):
    path = tmp_path / name
    content = EMPTY[name]
    if callable(content):
        content(path)
    else:
        path.write_text(content)
    for skip_bad in (False, True):
        with pytest.raises(DataError) as caught:
            read_records(path, skip_bad=skip_bad)
        assert str(caught.value) == f"{path}: no rows" and caught.value.reason == "no_rows"
    result = invoke("data", "check", str(path))
    assert result.exit_code == 1
    assert "error:" in result.output and f"{path}: no rows" in result.output.replace("\n", "")
    assert "Traceback" not in result.output


def test_a_folder_of_empty_files_is_an_error_but_a_limit_of_zero_is_not(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        read_records(tmp_path / "data")
    (tmp_path / "data" / "train.jsonl").write_text('{"text": "a"}\n')
    assert read_records(tmp_path / "data", limit=0).records == []


def test_training_on_an_empty_file_fails_naming_it(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n")
    result = invoke("sft", "--preset", "tiny", f"data.train={path}", f"out={tmp_path / 'run'}")
    assert result.exit_code == 1
    assert f"{path}: no rows" in result.output.replace("\n", "")
    assert "Traceback" not in result.output


# --------------------------------------------------------- text that is not Unicode is an error

LONE = "\ud800"


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"prompt": "What" + LONE, "completion": "ok"}, "prompt"),
        ({"prompt": "Q", "chosen": "a", "rejected": "b" + LONE}, "rejected"),
        ({"text": LONE}, "text"),
        ({"messages": [user("hi"), assistant("\udfff")]}, "messages[1].content"),
        ({"prompt": [user("x" + LONE)], "completion": [assistant("y")]}, "prompt[0].content"),
        ({"prompt": "Q", "responses": ["a", "b" + LONE]}, "responses[1]"),
    ],
)
def test_a_lone_surrogate_is_an_error_naming_file_line_and_field(tmp_path, row, field):
    path = tmp_path / "bad.jsonl"
    # json.dumps writes the lone surrogate as its \ud800 escape, as such files hold it
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as caught:
        read_records(path)
    assert str(caught.value).startswith(f"{path}:2: {field}: not valid Unicode")
    assert caught.value.reason == "not_unicode"
    result = read_records(path, skip_bad=True)
    assert len(result.records) == 1 and result.skipped == {"not_unicode": 1}


def test_data_check_reports_invalid_unicode_and_prints_it_escaped(tmp_path):
    path = tmp_path / "bad.jsonl"
    rows = [
        {"prompt": "Q", "chosen": "a" + LONE, "rejected": "b"},
        {"odd" + LONE: "a column name no reader knows"},
        {"prompt": "Q", "chosen": "a", "rejected": "b"},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = invoke("data", "check", str(path))
    assert result.exit_code == 1, result.output
    output = result.output.replace("\n", "")
    assert (
        f"{path}:1: chosen: not valid Unicode (a lone surrogate escape, \\ud800 at character 2)"
        in output
    )
    assert f"{path}:2:" in output and "odd\\ud800" in output
    assert "Traceback" not in output


def test_training_reports_invalid_unicode_or_skips_it(tmp_path):
    path = tmp_path / "train.jsonl"
    good = [{"prompt": f"What is {i} + 1?\n", "completion": f"{i + 1}"} for i in range(100)]
    rows = [*good[:5], {"prompt": "Q" + LONE, "completion": "x"}, *good[5:]]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = ("sft", "--preset", "tiny", f"data.train={path}", "train.max_steps=1")
    result = invoke(*common, f"out={tmp_path / 'a'}")
    assert result.exit_code == 1
    assert f"{path}:6: prompt: not valid Unicode" in result.output.replace("\n", "")
    result = invoke(*common, f"out={tmp_path / 'b'}", "data.skip_bad_rows=true")
    assert result.exit_code == 0, result.output[-2000:]


def test_records_round_trip_and_a_preference_of_valid_unicode_still_loads(tmp_path):
    path = tmp_path / "ok.jsonl"
    record = PreferenceRecord("日本語 🙂 déjà", "\U0001f600", "naïve")
    path.write_text(json.dumps(record.to_dict()) + "\n")  # ASCII escapes, surrogate pairs
    assert read_records(path).records == [record]
    ranking = RankingRecord("Q", ("a", "b"), (0, 1))
    path.write_text(json.dumps(ranking.to_dict(), ensure_ascii=False) + "\n")
    assert read_records(path).records == [ranking]
