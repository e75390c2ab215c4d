"""Truncation is reported, never silent: exact counts of the tokens cut per row (SFT examples,
DPO pairs, reward-model pairs, sampled prompts), one log line per split, a ``data`` row in
``metrics.jsonl`` and ``rlhf data check --model``."""

from __future__ import annotations

import json
import logging
import random
import statistics
from collections import Counter

import pytest
from typer.testing import CliRunner

import rlhf.data.tokenize as tokenize_module
from rlhf.cli import app
from rlhf.data.pairs import group_pairs, tokenize_for_reward, tokenize_groups
from rlhf.data.preference import PairText, tokenize_pairs
from rlhf.data.records import CompletionRecord, PreferenceRecord, TextRecord
from rlhf.data.tokenize import (
    CUT_MARGIN_TOKENS,
    TruncationReport,
    longest_token_chars,
    tokenize_prompt,
    tokenize_prompt_response,
    tokenize_prompt_response_cut,
    tokenize_record,
)
from rlhf.recipes.common import DataConfig, tokenize_records

L = 24  # max_length of the unit tests
LONG_PROMPT = "Please think step by step, then answer. " * 4 + "What is 12 + 30?\n"


def invoke(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args], env={"COLUMNS": "400"})


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def whole_length(tokenizer, record) -> int:
    """Tokens of a record tokenised whole (no max_length): what truncation starts from."""
    return len(tokenize_record(tokenizer, record).input_ids)


def expected_line(split, rows, cuts, unit, where, setting="data.max_length", limit=L):
    median = statistics.median(cuts)
    return (
        f"{split}: {len(cuts)} of {rows} {unit} truncated to {setting}={limit} ({where}; "
        f"median {median:g} tokens, max {max(cuts)} cut); 0 dropped"
    )


# ------------------------------------------------------------------------------ the data layer


def test_sft_counts_are_exact(tiny_tokenizer):
    tok = tiny_tokenizer
    records = [
        CompletionRecord("What is 1 + 1?\n", "2"),  # fits
        CompletionRecord(LONG_PROMPT, "12 + 30 = 42"),  # the prompt's start goes
        CompletionRecord("Q: ", "the cat sat on a mat " * 10),  # the response's end goes
        TextRecord("Once upon a time there was a little cat. " * 5),  # the text's end goes
    ]
    lengths = [whole_length(tok, record) for record in records]
    assert lengths[0] <= L < min(lengths[1:])
    report = TruncationReport(L)
    examples = tokenize_records(
        tok, records, DataConfig(train="x", max_length=L), lambda r: [r], report
    )

    assert [len(example) for example in examples] == [lengths[0], L, L, L]
    cuts = [n - L for n in lengths[1:]]
    assert report.cuts == cuts and [example.cut.tokens for example in examples] == [0, *cuts]
    assert not any(example.cut.at_least for example in examples)
    assert report.sides == Counter({"prompt start": 1, "response end": 1, "text end": 1})
    assert report.summary() == {
        "rows": 4.0,
        "truncated": 3.0,
        "truncated_median_tokens": float(statistics.median(cuts)),
        "truncated_max_tokens": float(max(cuts)),
        "dropped": 0.0,
    }
    where = "prompt start cut in 1, response end in 1, text end in 1"
    assert report.log_line("train") == expected_line("train", 4, cuts, "examples", where)
    assert report.metrics("eval")["data_eval_truncated"] == 3.0


def test_a_row_cut_before_tokenisation_reports_a_lower_bound(tiny_tokenizer, monkeypatch):
    """cut_text drops the start of a huge prompt before tokenising it: the tokens of that part
    are never counted, so the report says "at least"; tokenised whole, the count is exact."""
    tok = tiny_tokenizer
    chars = (L + CUT_MARGIN_TOKENS) * longest_token_chars(tok)
    huge = "the cat sat on a mat. " * (3 * chars // 22) + "What is 12 + 30?\n"
    true_cut = len(tokenize_prompt_response(tok, huge, "42")[0]) - L  # the uncut text, whole

    ids, _, cut = tokenize_prompt_response_cut(tok, huge, "42", L)
    assert len(ids) == L and cut.sides == {"prompt start"}
    assert cut.at_least and 0 < cut.tokens <= true_cut
    report = TruncationReport(L)
    report.add(cut)
    assert "1 too long to tokenise in full, their counts are lower bounds" in report.describe()

    with monkeypatch.context() as patch:  # no cut before tokenisation: exact
        patch.setattr(tokenize_module, "cut_text", lambda tokenizer, text, *_: text)
        _, _, exact = tokenize_prompt_response_cut(tok, huge, "42", L)
    assert exact.tokens == true_cut and not exact.at_least
    # a prompt over max_length but under the cut's budget is counted exactly, uncut
    _, _, cut = tokenize_prompt_response_cut(tok, LONG_PROMPT, "42", L)
    assert cut.tokens == len(tokenize_prompt_response(tok, LONG_PROMPT, "42")[0]) - L
    assert not cut.at_least


def test_dpo_pairs_count_the_larger_cut_of_each_pair(tiny_tokenizer):
    tok = tiny_tokenizer
    long_answer = "12 + 30 = 42, since 10 + 30 = 40 and 2 more is 42."
    pairs = [
        PairText("What is 1 + 2?\n", "3", "4"),  # fits
        PairText(LONG_PROMPT, "42", long_answer),  # both sequences lose the prompt's start
        PairText("Q: ", "x " * 40 + "a", "x " * 40 + "b"),  # identical once cut: dropped
    ]
    report = TruncationReport(L, "pairs")
    examples = tokenize_pairs(tok, pairs, L, report=report)
    assert len(examples) == 2
    lengths = [
        len(tokenize_prompt_response(tok, LONG_PROMPT, completion)[0])
        for completion in ("42", long_answer)
    ]
    assert min(lengths) > L
    assert report.cuts == [max(lengths) - L]
    assert report.rows == 3 and report.dropped == Counter({"identical after truncation": 1})
    assert report.describe().endswith("; 1 dropped (identical after truncation: 1)")
    assert report.metrics("train")["data_train_dropped"] == 1.0


def test_reward_model_pairs_are_counted_per_pair(tiny_tokenizer):
    tok = tiny_tokenizer
    long_answer = "3 " * 30
    records = [
        PreferenceRecord(LONG_PROMPT, "42", "41"),
        PreferenceRecord(LONG_PROMPT, "42", long_answer),  # same prompt: one group, 3 responses
        PreferenceRecord("What is 1 + 2?\n", "3", "4"),  # fits
    ]
    report = TruncationReport(L, "pairs")
    groups = tokenize_groups(tok, group_pairs(records), L, report=report)
    assert [group.num_pairs for group in groups] == [2, 1]

    def cut(response):
        return max(len(tokenize_for_reward(tok, LONG_PROMPT, response)) - L, 0)

    assert report.rows == 3
    assert report.cuts == [max(cut("42"), cut("41")), max(cut("42"), cut(long_answer))]
    assert report.sides["prompt start"] == 2


def test_a_sampled_prompt_cut_to_the_room_left_is_counted(eos_engine, caplog):
    from rlhf.rollout.types import SamplingParams

    tok = eos_engine.tokenizer
    room = 6
    whole = tokenize_prompt(tok, LONG_PROMPT)[0]
    ids, cut = tokenize_prompt(tok, LONG_PROMPT, room)
    assert ids == whole[-room:] and cut.tokens == len(whole) - room
    assert cut.sides == {"prompt start"}
    assert not tokenize_prompt(tok, "Hi", room)[1]

    params = SamplingParams(max_new_tokens=256 - room, num_samples=2, temperature=0.0)
    with caplog.at_level(logging.WARNING, logger="rlhf.rollout"):
        batches = [eos_engine.generate([LONG_PROMPT, "Hi"], params) for _ in range(2)]
    assert [batch.truncated_prompts for batch in batches] == [1, 1]
    # the first time a warning, then the count only
    assert caplog.text.count("prompts are longer than the 6 tokens") == 1
    assert f"up to {len(whole) - room} tokens" in caplog.text


# ------------------------------------------------------------------------------ through the CLI


def long_prompt_rows(path, n=200, seed=0, pairs=False):
    """SFT rows (``pairs``: preference pairs) whose prompts run from a few tokens to a few
    dozen: a question after a background of random length (the user's case: the background's
    start is what goes)."""
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "slept", "all", "day"]
    rows = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        background = " ".join(rng.choice(words) for _ in range(rng.randint(0, 30)))
        prompt = f"Background: {background}\nQuestion: what is {a} + {b}?\n"
        answer = {"chosen": f"{a + b}", "rejected": f"{a + b + 1}"} if pairs else {}
        rows.append({"prompt": prompt, **(answer or {"completion": f"{a + b}"})})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return [CompletionRecord(**row) for row in rows] if not pairs else rows


def test_sft_run_logs_and_records_truncation_once_across_resume(tmp_path, caplog):
    from rlhf.engine.trainer import TrainConfig
    from rlhf.models.load import load_tokenizer
    from rlhf.recipes.common import split_train_eval

    out, source = tmp_path / "sft", tmp_path / "sft.jsonl"
    records = long_prompt_rows(source)
    args = ["sft", "--preset", "tiny", f"out={out}", f"data.train={source}", "data.max_length=16"]
    args += ["data.eval_fraction=0.1", "train.schedule=constant", "train.warmup_steps=0"]
    args += ["progress=false", "tensorboard=false"]
    with caplog.at_level(logging.INFO, logger="rlhf"):
        result = invoke(*args, "train.max_steps=2")
    assert result.exit_code == 0, result.output

    # the counts, recomputed from the records tokenised whole
    data = DataConfig(train=str(source), max_length=16, eval_fraction=0.1)
    train, held_out = split_train_eval(records, data, TrainConfig().seed)
    tokenizer = load_tokenizer(out / "model")
    rows = read_jsonl(out / "metrics.jsonl")
    assert rows[0]["split"] == "data" and rows[0]["step"] == 0
    for split, part in (("train", train), ("eval", held_out)):
        cuts = [n - 16 for n in (whole_length(tokenizer, r) for r in part) if n > 16]
        assert 0 < len(cuts) < len(part), "the test needs truncated rows and whole ones"
        assert rows[0][f"data_{split}_truncated"] == len(cuts)
        assert rows[0][f"data_{split}_rows"] == len(part)
        assert rows[0][f"data_{split}_truncated_median_tokens"] == statistics.median(cuts)
        assert rows[0][f"data_{split}_truncated_max_tokens"] == max(cuts)
        assert rows[0][f"data_{split}_dropped"] == 0
        line = next(m for m in caplog.messages if m.startswith(f"{split}: "))
        assert line == expected_line(
            split, len(part), cuts, "examples", "prompt start cut", limit=16
        )

    # --resume keeps the one data row (the data did not change)
    result = invoke(*args, "train.max_steps=3", "--resume")
    assert result.exit_code == 0, result.output
    rows = read_jsonl(out / "metrics.jsonl")
    assert [row["step"] for row in rows if row["split"] == "data"] == [0]
    assert [row["step"] for row in rows if row["split"] == "train"] == [1, 2, 3]


@pytest.mark.parametrize("recipe", ["dpo", "rm"])
def test_preference_runs_report_truncated_pairs(recipe, tmp_path, caplog):
    out, source = tmp_path / recipe, tmp_path / "pairs.jsonl"
    long_prompt_rows(source, pairs=True)
    with caplog.at_level(logging.INFO, logger="rlhf"):
        result = invoke(
            recipe, "--preset", "tiny", f"out={out}", f"data.train={source}",
            "data.max_length=40", "train.max_steps=2", "progress=false", "tensorboard=false",
            "train.eval_every=0",
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = read_jsonl(out / "metrics.jsonl")[0]
    assert data["split"] == "data" and 0 < data["data_train_truncated"] < data["data_train_rows"]
    assert data["data_train_dropped"] == 0 and data["data_eval_rows"] > 0
    line = next(m for m in caplog.messages if m.startswith("train: "))
    count, rows = int(data["data_train_truncated"]), int(data["data_train_rows"])
    assert line.startswith(f"train: {count} of {rows} pairs truncated to data.max_length=40 (")
    assert f"max {data['data_train_truncated_max_tokens']:g} cut); 0 dropped" in line


def test_online_run_counts_cut_prompts_per_rollout(tmp_path, caplog):
    """128 positions, 124 of them for the response: every prompt keeps its last 4 tokens."""
    out = tmp_path / "grpo"
    with caplog.at_level(logging.WARNING):
        result = invoke(
            "grpo", "--preset", "tiny", f"out={out}", "init_sft.train.max_steps=2",
            "data.prompts=builtin:arithmetic?n=16", "rollout.iterations=2",
            "rollout.prompts_per_iteration=4", "rollout.samples_per_prompt=2",
            "rollout.minibatch_size=8", "train.batch_size=8", "eval.prompts=4",
            "sampling.max_new_tokens=124", "progress=false", "tensorboard=false",
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    rollouts = [
        row for row in read_jsonl(out / "metrics.jsonl") if "rollout_truncated_prompts" in row
    ]
    assert [row["rollout_truncated_prompts"] for row in rollouts] == [4.0, 4.0]
    assert caplog.text.count("prompts are longer than the 4 tokens") == 1


# ------------------------------------------------------------------------------ rlhf data check


def test_data_check_shows_truncation_before_training(tmp_path, tiny_model_dir, tiny_tokenizer):
    rows = [
        {"prompt": LONG_PROMPT, "completion": "42"},
        {"prompt": "Tell me, " * 10 + "what is 1 + 1?\n", "completion": "2"},
        {"prompt": "What is 1 + 1?\n", "completion": "2"},
    ]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    lengths = [whole_length(tiny_tokenizer, CompletionRecord(**row)) for row in rows]
    cuts = [n - 16 for n in lengths if n > 16]
    assert len(cuts) == 2

    result = invoke("data", "check", path, "--model", tiny_model_dir, "--max-length", "16")
    assert result.exit_code == 0, result.output
    line = expected_line("x", 3, cuts, "rows", "prompt start cut", "max_length", 16)
    assert "truncation: " + line.removeprefix("x: ") in result.output

    # no tokenizer, nothing to count with
    result = invoke("data", "check", path, "--max-length", "16")
    assert result.exit_code == 1 and "--max-length needs --model" in result.output
