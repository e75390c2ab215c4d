"""The generation engine: left padding, KV-cached batched sampling, EOS cuts, log-probs, seeds."""

from __future__ import annotations

import json

import pytest
import torch

from rlhf.data.chat import render_chat
from rlhf.data.errors import DataError
from rlhf.data.records import Message
from rlhf.data.tokenize import tokenize_prompt_response
from rlhf.rollout import (
    CandidateRecord,
    HFGenerationEngine,
    SamplingParams,
    candidates_from_rollout,
    load_prompts,
    prompt_token_ids,
    read_candidates,
    write_candidates,
)
from rlhf.rollout.hf import generation_config

PROMPTS = [
    "What is 12 + 30?\n",
    "Once upon a time there was a little cat who liked to play. What is 99 - 1?\n",
    "Hi",
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return HFGenerationEngine.from_pretrained(tiny_model_dir, batch_size=4)


@pytest.fixture(scope="module")
def eos_engine(tiny_model_dir):
    """A tiny model whose output layer favours EOS, so responses end at varied lengths."""
    from rlhf.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir, tokenizer=tokenizer)
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = 4.0
    model.lm_head = head
    return HFGenerationEngine(model, tokenizer, batch_size=4)


def teacher_forced_logps(model, prompt_ids, response_ids, temperature):
    """log softmax(logits / T) of each response token, one unpadded sequence at a time."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    logps = torch.log_softmax(logits / temperature, -1)
    return logps.gather(-1, torch.tensor(response_ids)[:, None])[:, 0]


def real_tokens(ids, mask):
    return [int(t) for t, m in zip(ids, mask, strict=True) if m]


def test_logps_equal_a_teacher_forced_forward_at_the_sampling_temperature(eos_engine):
    params = SamplingParams(max_new_tokens=12, temperature=0.7, num_samples=3, seed=3)
    batch = eos_engine.generate(PROMPTS, params)
    lengths = batch.response_lengths
    assert lengths.min() < lengths.max(), "rows should end at different lengths"
    assert batch.prompt_mask[:, 0].min() == 0, "prompts should be left-padded"
    for row in range(len(batch)):
        prompt = real_tokens(batch.prompt_ids[row], batch.prompt_mask[row])
        response = real_tokens(batch.response_ids[row], batch.response_mask[row])
        expected = teacher_forced_logps(eos_engine.model, prompt, response, 0.7)
        torch.testing.assert_close(batch.logps[row, : len(response)], expected, atol=1e-4, rtol=0)
        assert (batch.logps[row, len(response) :] == 0).all()
    # at temperature 1 the numbers differ: the temperature is really applied
    row_prompt = real_tokens(batch.prompt_ids[0], batch.prompt_mask[0])
    row_response = real_tokens(batch.response_ids[0], batch.response_mask[0])
    at_one = teacher_forced_logps(eos_engine.model, row_prompt, row_response, 1.0)
    assert not torch.allclose(batch.logps[0, : len(row_response)], at_one, atol=1e-3)
    torch.testing.assert_close(batch.sequence_logps, batch.logps.sum(-1))


def test_responses_are_cut_after_the_first_eos_and_padded(eos_engine):
    tokenizer = eos_engine.tokenizer
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert pad != eos
    batch = eos_engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, num_samples=4))
    assert batch.ended_with_eos.any()
    for row in range(len(batch)):
        length = int(batch.response_lengths[row])
        ids = batch.response_ids[row].tolist()
        assert eos not in ids[: length - 1], "an EOS before the end of a response"
        assert (ids[length - 1] == eos) == bool(batch.ended_with_eos[row])
        if not batch.ended_with_eos[row]:
            assert length == 10, "a response without EOS must have run to max_new_tokens"
        assert all(token == pad for token in ids[length:])
        assert (
            batch.response_mask[row, :length].all() and not batch.response_mask[row, length:].any()
        )
        assert tokenizer.eos_token not in batch.response_texts[row]


def test_cut_logic_on_known_chunks(engine):
    eos, pad = engine.tokenizer.eos_token_id, engine.tokenizer.pad_token_id
    chunks = [
        torch.tensor([[5, eos, 7, eos], [6, 6, 6, 6]]),  # EOS at 1; no EOS at all
        torch.tensor([[eos, pad, pad]]),  # EOS first (an empty response)
    ]
    from rlhf.rollout.tokens import cut_at_first_stop

    ids, mask, ended = cut_at_first_stop(chunks, engine.stop_ids, pad)
    assert ids.tolist() == [[5, eos, pad, pad], [6, 6, 6, 6], [eos, pad, pad, pad]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]


def test_batched_left_padded_greedy_equals_one_prompt_at_a_time(engine):
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    together = engine.generate(PROMPTS, params)
    for index, prompt in enumerate(PROMPTS):
        alone = engine.generate([prompt], params)
        length = int(alone.response_lengths[0])
        assert (
            together.response_ids[index, :length].tolist()
            == alone.response_ids[0, :length].tolist()
        )
        torch.testing.assert_close(
            together.logps[index, :length], alone.logps[0, :length], atol=1e-4, rtol=0
        )


def test_k_samples_per_prompt_are_prompt_major(engine):
    batch = engine.generate(PROMPTS, SamplingParams(max_new_tokens=4, num_samples=3))
    assert len(batch) == 9 and len(batch.response_texts) == 9
    assert batch.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert batch.prompt_ids.shape[0] == batch.response_ids.shape[0] == batch.logps.shape[0]
    assert batch.input_ids.shape == batch.attention_mask.shape
    for row, index in enumerate(batch.prompt_index.tolist()):
        expected = prompt_token_ids(engine.tokenizer, PROMPTS[index])
        assert real_tokens(batch.prompt_ids[row], batch.prompt_mask[row]) == expected
    candidates = candidates_from_rollout(PROMPTS, batch)
    assert [c.prompt for c in candidates] == PROMPTS
    assert all(len(c.responses) == len(c.finished) == len(c.logps) == 3 for c in candidates)


def test_same_seed_same_samples_and_the_callers_rng_is_untouched(engine):
    params = SamplingParams(max_new_tokens=6, num_samples=2, seed=11)
    torch.manual_seed(0)
    first = engine.generate(PROMPTS, params)
    after_first = torch.rand(1)
    torch.manual_seed(0)
    second = engine.generate(PROMPTS, params)
    assert torch.equal(first.response_ids, second.response_ids)
    assert torch.equal(first.logps, second.logps)
    assert torch.equal(after_first, torch.rand(1)), "sampling consumed the caller's RNG"
    other = engine.generate(PROMPTS, SamplingParams(max_new_tokens=6, num_samples=2, seed=12))
    assert not torch.equal(first.response_ids, other.response_ids)


def test_the_models_own_generation_defaults_do_not_leak_in(engine):
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    plain = engine.generate(PROMPTS, params)
    config = engine.model.generation_config
    saved = (config.repetition_penalty, config.min_new_tokens)
    config.repetition_penalty, config.min_new_tokens = 100.0, 8
    try:
        again = engine.generate(PROMPTS, params)
    finally:
        config.repetition_penalty, config.min_new_tokens = saved
    assert torch.equal(plain.response_ids, again.response_ids)
    sampled = generation_config(SamplingParams(), [2], 0)
    assert sampled.top_k == 0 and sampled.do_sample, "transformers' default top_k=50 must be off"


def test_prompt_tokens_match_training_tokenisation(tiny_tokenizer):
    plain = "What is 12 + 30?\n"
    chat = (Message("system", "Be brief."), Message("user", "What is 2 + 2?"))
    for prompt, response in ((plain, "12 + 30 = 42"), (chat, (Message("assistant", "4"),))):
        ids, boundary = tokenize_prompt_response(tiny_tokenizer, prompt, response)
        assert prompt_token_ids(tiny_tokenizer, prompt) == ids[:boundary]


def test_message_prompts_generate_an_assistant_turn(engine):
    prompt = (Message("user", "What is 2 + 2?"),)
    batch = engine.generate([prompt], SamplingParams(max_new_tokens=4))
    rendered = engine.tokenizer.decode(real_tokens(batch.prompt_ids[0], batch.prompt_mask[0]))
    expected = render_chat(
        engine.tokenizer,
        [{"role": "user", "content": "What is 2 + 2?"}],
        add_generation_prompt=True,
    )
    assert rendered == expected and expected.rstrip().endswith("<|assistant|>")


def test_sampling_params_are_checked():
    with pytest.raises(ValueError, match="top_p") as error:
        SamplingParams(top_p=0.0, num_samples=0)
    assert "num_samples" in str(error.value)
    assert SamplingParams(temperature=0).logp_temperature == 1.0


def test_empty_prompt_is_refused(engine):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate(["Hi", ""], SamplingParams(max_new_tokens=2))


def test_candidates_round_trip_and_errors_name_file_and_line(tmp_path):
    rows = [
        CandidateRecord("Hi", ("Hello!", "Hey."), (True, False), (-1.5, -9.0)),
        CandidateRecord(
            (Message("user", "Hi"),), ("Hello!",), (True,), (-0.5,), {"rewards": [0.3]}
        ),
    ]
    path = write_candidates(tmp_path / "c.jsonl", rows)
    assert read_candidates(path) == rows
    bad = tmp_path / "bad.jsonl"
    good_row = json.dumps(rows[0].to_dict())
    bad.write_text(
        good_row + "\n" + json.dumps({"prompt": "x", "responses": ["a"], "finished": [True]}) + "\n"
    )
    with pytest.raises(DataError, match=r"bad.jsonl:2: logps: missing"):
        read_candidates(bad)
    bad.write_text(json.dumps({**rows[0].to_dict(), "finished": [True]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: finished: 1 values for 2 responses"):
        read_candidates(bad)


def test_prompts_come_from_any_rows_with_a_prompt(tmp_path):
    source = tmp_path / "mixed.jsonl"
    rows = [
        {"prompt": "A"},
        {"prompt": "B", "completion": "b"},
        {"prompt": "A", "chosen": "x", "rejected": "y"},
        {"prompt": "C", "responses": ["only one"], "finished": [True], "logps": [-1.0]},
    ]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert load_prompts(source) == ["A", "B", "C"]
    assert load_prompts(source, limit=2) == ["A", "B"]
    chats = tmp_path / "chats.jsonl"
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Ciao"},
    ]
    chats.write_text(json.dumps({"messages": messages}) + "\n")
    [prompt] = load_prompts(chats)
    assert [m.content for m in prompt] == ["Hi", "Hello", "Bye"]
    questions = tmp_path / "q.csv"
    questions.write_text("question\nWhat?\n")
    assert load_prompts(questions, columns={"prompt": "question"}) == ["What?"]
    assert len(load_prompts("builtin:arithmetic?n=10")) == 10
    with pytest.raises(DataError, match=r"nope\.jsonl"):
        load_prompts(tmp_path / "nope.jsonl")


def test_response_logprobs_same_on_the_full_logits_path_and_differentiable(eos_engine, monkeypatch):
    import rlhf.models.teacher_forcing as teacher_forcing

    batch = eos_engine.generate(PROMPTS, SamplingParams(max_new_tokens=6, num_samples=2))
    tensors = (batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask)
    monkeypatch.setattr(teacher_forcing, "has_plain_head", lambda model: False)
    full = teacher_forcing.response_logprobs(
        eos_engine.model, *tensors, temperature=1.0, batch_size=3
    )
    torch.testing.assert_close(full, batch.logps, atol=1e-4, rtol=0)
    monkeypatch.undo()
    logps = teacher_forcing.response_logprobs(eos_engine.model, *tensors, temperature=1.0)
    logps.sum().backward()
    grad = eos_engine.model.lm_head.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    eos_engine.model.zero_grad(set_to_none=True)


def test_response_text_keeps_the_space_a_sentencepiece_tokenizer_puts_on_its_first_word():
    """Decoding "▁loved" alone gives "loved"; as the prompt's continuation it is " loved"."""
    from rlhf.models.load import load_tokenizer
    from rlhf.rollout.tokens import decode_continuation

    from .conftest import STORIES, require_shared

    tokenizer = load_tokenizer(require_shared(STORIES))
    prompt = tokenizer("Once upon a time, Lily")["input_ids"]
    response = tokenizer("Once upon a time, Lily loved her dog.")["input_ids"][len(prompt) :]
    assert tokenizer.decode(response, skip_special_tokens=True).startswith("loved")
    assert decode_continuation(tokenizer, prompt, response) == " loved her dog."


def test_a_huge_prompt_keeps_its_end_within_the_model_positions(eos_engine, caplog):
    """A 5 MB prompt: before, tokenising it whole cost hundreds of MB and generation then ran
    past the model's 256 positions; now its text is cut first and its last tokens kept."""
    import tracemalloc

    tokenizer = eos_engine.tokenizer
    tail = "What is 12 + 30?\n"
    huge = "Once upon a time there was a cat. " * 150_000 + tail  # 5.1 MB
    params = SamplingParams(max_new_tokens=6, num_samples=1, temperature=0.0)
    tracemalloc.start()
    try:
        with caplog.at_level("WARNING", logger="rlhf.rollout"):
            batch = eos_engine.generate([huge, "Hi"], params)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 60e6, f"{peak / 1e6:.0f} MB allocated for a prompt cut to 250 tokens"
    room = 256 - 6
    kept = batch.prompt_ids[0][batch.prompt_mask[0].bool()].tolist()
    assert len(kept) == room
    whole = prompt_token_ids(tokenizer, huge[-20_000:])  # the same end, tokenised whole
    assert kept[-50:] == whole[-50:]
    assert "1 of 2 prompts are longer than the 250 tokens" in caplog.text
    assert batch.truncated_prompts == 1
    with pytest.raises(ValueError, match="max_new_tokens=300 leaves no room"):
        eos_engine.generate(["Hi"], SamplingParams(max_new_tokens=300))
