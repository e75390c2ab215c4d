from __future__ import annotations

import torch

from rlhf.data.collate import collate_packed, collate_padded, pack_examples
from rlhf.data.records import CompletionRecord
from rlhf.data.tokenize import tokenize_record
from rlhf.recipes.lm import lm_loss
from rlhf.sim.builtin import arithmetic


def test_packing_respects_capacity_and_keeps_every_example(tiny_tokenizer):
    examples = [tokenize_record(tiny_tokenizer, r) for r in arithmetic(50, seed=2)]
    packs = pack_examples(examples, max_length=64)
    assert sorted(id(e) for pack in packs for e in pack) == sorted(id(e) for e in examples)
    assert all(sum(len(e) for e in pack) <= 64 for pack in packs)
    assert len(packs) < len(examples) / 2


def test_packed_loss_equals_unpacked_loss(tiny_model_dir, tiny_tokenizer):
    from rlhf.models.load import load_model

    model = load_model(str(tiny_model_dir)).eval()
    records = [
        CompletionRecord(r.prompt, r.completion + " and more" * (i % 3))
        for i, r in enumerate(arithmetic(12, seed=5))
    ]
    examples = [tokenize_record(tiny_tokenizer, r) for r in records]
    packed = collate_packed(pack_examples(examples, max_length=96), tiny_tokenizer.pad_token_id)
    padded = collate_padded(examples, tiny_tokenizer.pad_token_id)
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0]
    assert packed.num_loss_tokens == padded.num_loss_tokens
    with torch.no_grad():
        packed_sum, _ = lm_loss(model, packed)
        padded_sum, _ = lm_loss(model, padded)
    torch.testing.assert_close(packed_sum, padded_sum, rtol=1e-5, atol=1e-5)
