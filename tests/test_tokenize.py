from __future__ import annotations

import pytest

from rlhf.data.collate import IGNORE_INDEX, collate_padded, collate_prompts_left
from rlhf.data.records import CompletionRecord, ConversationRecord, Message, TextRecord
from rlhf.data.tokenize import (
    MIN_PROMPT_TOKENS,
    TooLongError,
    adds_bos,
    render_example,
    tokenize_prompt_response,
    tokenize_record,
)

from .conftest import STORIES, require_shared


def masked_text(tokenizer, example):
    return tokenizer.decode(
        [t for t, keep in zip(example.input_ids, example.loss_mask, strict=True) if keep]
    )


def test_completion_mask_covers_completion_and_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    example = tokenize_record(tok, CompletionRecord("What is 12 + 30?\n", "12 + 30 = 42"))
    assert tok.eos_token_id != tok.pad_token_id
    assert example.input_ids[-1] == tok.eos_token_id
    assert masked_text(tok, example).replace(" ", "") == ("12 + 30 = 42" + tok.eos_token).replace(
        " ", ""
    )
    # prompt tokens come first and carry no loss
    assert not example.loss_mask[0] and example.loss_mask[-1]
    assert tok.decode(example.input_ids).replace(" ", "").startswith("Whatis12+30?")


def test_multi_turn_masks_only_assistant_turns(tiny_tokenizer):
    tok = tiny_tokenizer
    record = ConversationRecord(
        (
            Message("system", "Be brief."),
            Message("user", "What is 10 + 10?"),
            Message("assistant", "20"),
            Message("user", "And 20 + 20?"),
            Message("assistant", "40"),
        )
    )
    example = tokenize_record(tok, record)
    trained = masked_text(tok, example)
    assert "20" in trained and "40" in trained
    assert "What" not in trained and "Be brief" not in trained
    assert trained.count(tok.eos_token) == 2  # each assistant turn ends with EOS
    shown = render_example(tok, record)
    assert "[[" in shown and "What is 10 + 10?" in shown


def test_prompt_truncated_from_its_start(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt = "What is " + "1 + " * 60 + "1?\n"
    ids, boundary = tokenize_prompt_response(tok, prompt, "61", max_length=20)
    full_ids, full_boundary = tokenize_prompt_response(tok, prompt, "61")
    assert len(ids) == 20
    # the response survives whole; the kept prompt is the *end* of the prompt
    assert ids[boundary:] == full_ids[full_boundary:]
    assert ids[:boundary] == full_ids[full_boundary - boundary : full_boundary]


def test_long_response_cut_at_its_end_keeping_some_prompt(tiny_tokenizer):
    tok = tiny_tokenizer
    ids, boundary = tokenize_prompt_response(tok, "What is 1 + 1?\n", "2 " * 100, max_length=30)
    assert len(ids) == 30
    assert boundary >= min(MIN_PROMPT_TOKENS, 5)
    with pytest.raises(TooLongError):
        tokenize_prompt_response(tok, "What is 1 + 1?\n", "2 " * 100, 30, truncation="drop")


def test_text_record_trains_every_token(tiny_tokenizer):
    example = tokenize_record(tiny_tokenizer, TextRecord("12 + 30 = 42"))
    assert all(example.loss_mask)
    assert example.input_ids[-1] == tiny_tokenizer.eos_token_id


def test_right_padding_for_training_and_left_for_generation(tiny_tokenizer):
    tok = tiny_tokenizer
    short = tokenize_record(tok, CompletionRecord("What is 1 + 1?\n", "2"))
    long = tokenize_record(tok, CompletionRecord("What is 11 + 11?\n", "11 + 11 = 22"))
    batch = collate_padded([short, long], tok.pad_token_id)
    assert batch.input_ids[0, len(short) :].eq(tok.pad_token_id).all()
    assert batch.attention_mask[0].sum() == len(short)
    # labels are shifted: position t predicts token t+1, and padding predicts nothing
    assert batch.labels[1, -1] == IGNORE_INDEX
    assert batch.labels[1, -2] == long.input_ids[-1]
    assert batch.num_loss_tokens == short.num_loss_tokens + long.num_loss_tokens - (
        int(short.loss_mask[0]) + int(long.loss_mask[0])
    )
    ids, mask = collate_prompts_left([[5, 6], [7, 8, 9]], pad_token_id=0)
    assert ids.tolist() == [[0, 5, 6], [7, 8, 9]] and mask.tolist() == [[0, 1, 1], [1, 1, 1]]


def test_bos_added_once_for_tokenizers_that_use_it():
    from rlhf.models.load import load_tokenizer

    tok = load_tokenizer(str(require_shared(STORIES)))
    ids, _ = tokenize_prompt_response(tok, "Once upon a time", " there was a cat.")
    if adds_bos(tok):
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    else:
        assert tok.bos_token_id not in ids
    assert ids[-1] == tok.eos_token_id
