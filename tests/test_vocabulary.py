"""The pad token comes from the vocabulary when it can: EOS ≠ PAD without a new token.

A SmolLM2-like tiny model (tests/smol_like.py) pads with its EOS ``<|im_end|>`` and has an
unused ``<|endoftext|>``: that one pads, the embedding table and the exported model keep the
base's 400 rows. A token is added only when no special token may pad, and never under LoRA.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from rlhf.models.load import (
    PAD_TOKEN,
    LoraSpec,
    ModelLoadError,
    choose_pad_token,
    load_model,
    load_tokenizer,
    save_model,
)
from tests.conftest import TINY_SIZES, sample_texts
from tests.smol_like import ENDOFTEXT, IM_END, IM_START, make_smol_like

VOCAB = 400


@pytest.fixture(scope="module")
def smol(tmp_path_factory) -> Path:
    return make_smol_like(tmp_path_factory.mktemp("smol") / "base", sample_texts(), **TINY_SIZES)


def variant(smol: Path, folder: Path, *, eos_ids: list[int] | None = None, **tokens) -> Path:
    """A copy of ``smol`` with other special tokens (``eos_token=...``, ``pad_token=None``)
    and, with ``eos_ids``, a generation config that stops at those ids."""
    from transformers import AutoTokenizer

    shutil.copytree(smol, folder)
    tokenizer = AutoTokenizer.from_pretrained(smol)
    for name, value in tokens.items():
        setattr(tokenizer, name, value)
    tokenizer.save_pretrained(folder)
    if eos_ids is not None:
        path = folder / "generation_config.json"
        config = json.loads(path.read_text())
        path.write_text(json.dumps({**config, "eos_token_id": eos_ids}))
    return folder


def rows(model: torch.nn.Module) -> int:
    return model.get_input_embeddings().weight.shape[0]


def test_a_special_token_of_the_vocabulary_pads_without_a_resize(smol, tmp_path, caplog):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with caplog.at_level("INFO", logger="rlhf.models"):
        tokenizer = load_tokenizer(smol)
        load_tokenizer(smol)  # loaded again: said once
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == (ENDOFTEXT, 0)
    assert tokenizer.eos_token == IM_END and tokenizer.bos_token == IM_START
    assert len(tokenizer) == VOCAB
    said = [r.getMessage() for r in caplog.records if "pad token" in r.getMessage()]
    assert len(said) == 1 and "<|endoftext|> (id 0): the unknown token" in said[0]

    model = load_model(smol, tokenizer=tokenizer)
    assert rows(model) == VOCAB
    assert model.config.pad_token_id == 0 and model.generation_config.pad_token_id == 0
    exported = save_model(model, tokenizer, tmp_path / "export")
    base = AutoModelForCausalLM.from_pretrained(smol)
    plain = AutoModelForCausalLM.from_pretrained(exported)
    assert plain.config.vocab_size == base.config.vocab_size == VOCAB
    assert rows(plain) == VOCAB
    assert AutoTokenizer.from_pretrained(exported).get_vocab() == tokenizer.get_vocab()


def test_choice_skips_eos_bos_stop_tokens_and_template_tokens(smol, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol)
    assert choose_pad_token(tokenizer)[0] == ENDOFTEXT
    # <|endoftext|> a generation stop token: sampling would end there, it may not pad
    assert choose_pad_token(tokenizer, stop_ids=[2, 0])[0] is None
    # a token named for padding comes before the unknown token
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|fim_pad|>"]})
    assert choose_pad_token(tokenizer)[0] == "<|fim_pad|>"
    # a token the chat template writes never pads
    tokenizer.chat_template = "{{ '<|fim_pad|>' }}" + tokenizer.chat_template
    assert choose_pad_token(tokenizer)[0] == ENDOFTEXT
    # the tokenizer's own pad token, when it may pad, is kept
    tokenizer.pad_token = "<|fim_pad|>"
    tokenizer.chat_template = None
    assert choose_pad_token(tokenizer) == ("<|fim_pad|>", "the tokenizer's own pad token")


def test_a_token_is_added_only_when_none_may_pad(smol, tmp_path):
    # <|endoftext|> is a stop token of the generation config: nothing else may pad
    folder = variant(smol, tmp_path / "stops", eos_ids=[2, 0])
    tokenizer = load_tokenizer(folder)
    assert tokenizer.pad_token == PAD_TOKEN and len(tokenizer) == VOCAB + 1
    model = load_model(folder, tokenizer=tokenizer)
    assert rows(model) == VOCAB + 1 and model.config.pad_token_id == VOCAB
    # no pad token at all, but a usable one: chosen, nothing added
    folder = variant(smol, tmp_path / "nopad", pad_token=None)
    tokenizer = load_tokenizer(folder)
    assert tokenizer.pad_token == ENDOFTEXT and len(tokenizer) == VOCAB


def test_lora_never_resizes(smol, tmp_path):
    from rlhf.models.reward import init_reward_model

    lora = LoraSpec(r=2, target_modules=["q_proj", "v_proj"])
    tokenizer = load_tokenizer(smol)
    model = load_model(smol, tokenizer=tokenizer, lora=lora)
    assert rows(model) == VOCAB
    folder = variant(smol, tmp_path / "stops", eos_ids=[2, 0])
    added = load_tokenizer(folder)
    assert len(added) == VOCAB + 1
    with pytest.raises(ModelLoadError, match="LoRA cannot grow the table"):
        load_model(folder, tokenizer=added, lora=lora)
    with pytest.raises(ModelLoadError, match="LoRA cannot grow the table"):
        init_reward_model(folder, added, lora=lora)
    assert rows(init_reward_model(folder, added)) == VOCAB + 1  # without LoRA it grows


def test_generation_pads_with_the_chosen_token(smol):
    from rlhf.rollout import HFGenerationEngine
    from rlhf.rollout.types import SamplingParams

    tokenizer = load_tokenizer(smol)
    engine = HFGenerationEngine(load_model(smol, tokenizer=tokenizer), tokenizer, batch_size=8)
    assert tokenizer.pad_token_id not in engine.stop_ids
    prompts = ["What is 12 + 7?", "Once upon a time there was a little cat who", "Hi"]
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    together = engine.generate(prompts, params)  # left-padded with <|endoftext|>
    assert (
        not together.prompt_mask.all()
        and (together.prompt_ids[~together.prompt_mask.bool()] == 0).all()
    )
    for index, prompt in enumerate(prompts):
        alone = engine.generate([prompt], params)
        length = int(alone.response_lengths[0])
        assert (
            together.response_ids[index, :length].tolist()
            == alone.response_ids[0, :length].tolist()
        )


def test_scoring_with_the_chosen_pad_reads_the_last_real_token(smol):
    from rlhf.models.forward import decoder_hidden_states
    from rlhf.models.reward import RewardModel, init_reward_model, reward_logits

    tokenizer = load_tokenizer(smol)
    model = init_reward_model(smol, tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id == 0 and rows(model) == VOCAB
    scorer = RewardModel(model, tokenizer)
    prompts = ["What is 12 + 7?", "Hi", "Once upon a time"]
    responses = [" 19", " hello there, how are you today?", f" a cat{ENDOFTEXT} sat"]
    batched = scorer.score(prompts, responses, batch_size=3, normalized=False)
    alone = torch.cat(
        [
            scorer.score([p], [r], batch_size=1, normalized=False)
            for p, r in zip(prompts, responses, strict=True)
        ]
    )
    torch.testing.assert_close(batched, alone)
    # a row whose last real token is the pad token itself is read there, not one token early
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    with torch.no_grad():
        got = reward_logits(model, ids, mask)
        hidden = decoder_hidden_states(model, input_ids=ids, attention_mask=mask)  # [2, 5, H]
        expected = model.score(hidden[:, 3])[:, 0]
    torch.testing.assert_close(got, expected)
